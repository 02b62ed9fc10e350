"""An S3 endpoint on 127.0.0.1 for tests and benchmarks: moto's standalone server, and an
HTTP proxy in front of it that counts requests and response bytes and can answer chosen
requests with an error (to exercise retries over real HTTP); and the bytes each sample
occupies in its shard, what a reader must fetch at least (:func:`sample_extents`).

Nothing here is imported by the library: the code under test reaches the endpoint only
through ``AWS_ENDPOINT_URL`` with the same client stack (pyarrow's S3 filesystem) a user's
bucket gets.
"""

from __future__ import annotations

import http.client
import logging
import os
import tarfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_MAX_ATTEMPTS": "3"}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a free port) for the duration of the block; yields its
    ``http://127.0.0.1:PORT`` URL. Its request log is silenced."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextmanager
def aws_environment(endpoint: str) -> Iterator[None]:
    """``AWS_*`` set for ``endpoint`` in ``os.environ`` (inherited by Ray workers, DataLoader
    workers and torchrun ranks started inside the block), restored afterwards."""
    wanted = {**AWS_ENV, "AWS_ENDPOINT_URL": endpoint}
    saved = {name: os.environ.get(name) for name in [*wanted, "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"]}
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def create_bucket(endpoint: str, name: str) -> None:
    """Create bucket ``name`` with a plain HTTP PUT (moto accepts unsigned bucket creation)."""
    connection = http.client.HTTPConnection(endpoint.split("://", 1)[1], timeout=30)
    connection.request("PUT", f"/{name}")
    response = connection.getresponse()
    response.read()
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"creating bucket {name}: HTTP {response.status}")


@dataclass
class Traffic:
    """What went through a :class:`CountingProxy`: requests by method, response body bytes
    of GETs (what a reader downloads) and the requests answered with an injected error."""

    requests: dict[str, int] = field(default_factory=dict)
    get_bytes: int = 0
    injected: int = 0
    paths: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.requests.values())


Fault = Callable[[str, str], "int | None"]
"""``fault(method, path) -> HTTP status to answer instead of forwarding, or None``."""


class CountingProxy:
    """A forwarding HTTP proxy on 127.0.0.1 in front of ``upstream`` (an ``http://`` URL).

    ``url`` is what to put in ``AWS_ENDPOINT_URL``; ``traffic`` counts what passed;
    ``fault`` (settable) injects error responses (an S3 XML error body: ``SlowDown`` for
    503, ``InternalError`` otherwise)."""

    def __init__(self, upstream: str, fault: Fault | None = None):
        self.upstream = upstream.split("://", 1)[1]
        self.fault = fault
        self.traffic = Traffic()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def log_message(self, *args):  # silent
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if not size:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self):
                body = self._body()
                status = proxy.fault(self.command, self.path) if proxy.fault else None
                with proxy._lock:
                    traffic = proxy.traffic
                    traffic.requests[self.command] = traffic.requests.get(self.command, 0) + 1
                    traffic.paths.append(f"{self.command} {self.path}")
                    traffic.injected += status is not None
                if status is not None:
                    code = "SlowDown" if status == 503 else "InternalError"
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                               f"<Message>injected</Message></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in _HOP_BY_HOP and k.lower() not in ("content-length", "expect")}
                chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
                if chunked:  # forwarded in the framing it came in (moto decodes aws-chunked bodies by it)
                    headers["Transfer-Encoding"] = "chunked"
                else:
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=[body] if chunked else body, headers=headers,
                                     encode_chunked=chunked)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                if self.command == "GET":
                    with proxy._lock:
                        proxy.traffic.get_bytes += len(data)
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in _HOP_BY_HOP and (name.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def reset(self) -> Traffic:
        """Start counting afresh; returns what was counted so far."""
        with self._lock:
            counted, self.traffic = self.traffic, Traffic()
        return counted

    def __enter__(self) -> "CountingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def sample_extents(out: Path) -> dict[tuple[str, int], int]:
    """``{(shard, offset): bytes}`` for every sample of the converted corpus ``out``: its
    extent in its tar (headers, data, padding), read from the tars themselves."""
    extents = {}
    for path in out.rglob("*.tar"):
        with tarfile.open(path) as tar:
            starts, end = [], 0
            for member in tar:
                if member.name.endswith(".json"):
                    starts.append(member.offset)
                end = member.offset_data + -(-member.size // 512) * 512
        for start, stop in zip(starts, [*starts[1:], end]):
            extents[(path.relative_to(out).as_posix(), start)] = stop - start
    return extents
