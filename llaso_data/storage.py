"""One storage layer for corpus roots and OUT: local folders and object-store URLs through
the same code (pyarrow's filesystems).

:func:`open_store` turns ``"s3://bucket/prefix"``, ``"/local/folder"`` (or a ``Path``) into a
:class:`Store`: a root plus the :class:`pyarrow.fs.FileSystem` that reaches it. Every name a
store takes is relative to its root, with ``/`` separators (``train/text_audio/ASR/ASR-000000.tar``).

S3 (and S3-compatible stores) are configured from the standard AWS environment only:

* credentials: the AWS SDK's default chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
  ``AWS_SESSION_TOKEN``, ``~/.aws``, instance or pod roles);
* region: ``AWS_REGION`` or ``AWS_DEFAULT_REGION``;
* endpoint: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (``http://host:port`` for MinIO,
  Ceph, a loopback test server; its scheme picks HTTP or HTTPS);
* retries: ``AWS_MAX_ATTEMPTS`` (default 6) attempts per request under the SDK's standard
  retry strategy (timeouts, 5xx and throttling, exponential backoff with jitter; this also
  covers each part of a multipart upload), and as many again around each idempotent call
  (:func:`retrying`: reads, listings, stats, deletes, copies), which catches what the SDK
  does not retry. What still fails is raised as :class:`StorageError` naming the URL.

Writes are atomic everywhere: :meth:`Store.writer` writes ``NAME.<random>.tmp`` next to the
final name and renames it into place when complete (local: ``os.replace``; S3: the upload,
a multipart upload streamed as it is written, becomes the temporary object only when
complete, then a server-side copy publishes it under its final key, so a reader never sees a partial
object under a final name; S3 copies one object of at most 5 GB). A crash leaves at most
``*.tmp`` names, which :meth:`Store.remove_temporaries` clears.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

TEMPORARY_SUFFIX = ".tmp"
"""Ends every temporary name a :meth:`Store.writer` uses."""
_DEFAULT_ATTEMPTS = 6
_CONNECT_TIMEOUT_S = 10.0
_REQUEST_TIMEOUT_S = 60.0


class StorageError(OSError):
    """A storage operation failed (after the retries of transient errors); the message names
    the URL and what was done."""


def is_url(location: str | os.PathLike) -> bool:
    """Whether ``location`` names an object store (``scheme://...``) rather than a local path."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def open_store(location: str | os.PathLike) -> "Store":
    """The store rooted at ``location``: ``s3://bucket[/prefix]``, ``file:///abs/path`` or a
    local path (made absolute; nothing is created)."""
    if isinstance(location, Store):
        return location
    text = os.fspath(location)
    if text.startswith("file://"):
        text = urlsplit(text).path
    if not is_url(text):
        root = str(Path(text).resolve())
        return Store(root, pafs.LocalFileSystem(), root)
    scheme, _, rest = text.partition("://")
    if scheme not in ("s3", "s3a"):
        raise ValueError(f"unsupported storage URL {text!r}: use s3://bucket/prefix or a local path")
    root = rest.strip("/")
    if not root:
        raise ValueError(f"storage URL {text!r} names no bucket")
    return Store(f"s3://{root}", _s3_filesystem(os.getpid(), *_s3_settings()), root)


def _s3_settings() -> tuple:
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ""
    attempts = int(env.get("AWS_MAX_ATTEMPTS") or _DEFAULT_ATTEMPTS)
    return endpoint, region, attempts


def open_file(location: str | os.PathLike) -> "RangeFile":
    """A ranged reader of the file at ``location`` (a local path or an object URL)."""
    return open_store(location).open_file("")


def join(root: str | os.PathLike, name: str) -> str | Path:
    """``name`` (relative, ``/``-separated) under ``root``: a URL for a URL root, else a Path."""
    return f"{os.fspath(root).rstrip('/')}/{name}" if is_url(root) else Path(root) / name


@functools.lru_cache(maxsize=8)
def _s3_filesystem(pid: int, endpoint: str, region: str, attempts: int) -> pafs.S3FileSystem:
    """One client per configuration and process (its connection pool is reused). ``pid``
    keys the cache: a forked process (a DataLoader worker) must not reuse its parent's
    client, whose connections it shares (reads came back truncated when it did)."""
    options = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
               "connect_timeout": _CONNECT_TIMEOUT_S, "request_timeout": _REQUEST_TIMEOUT_S}
    if endpoint:
        parts = urlsplit(endpoint)
        options.update(endpoint_override=parts.netloc + parts.path.rstrip("/"), scheme=parts.scheme or "https")
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options)


@dataclass(frozen=True)
class Store:
    """A root folder or bucket prefix (``url``), the filesystem that reaches it (``fs``) and
    the root's path on that filesystem (``root``). Ray tasks and loader workers are given
    the ``url`` and open their own store, so each process has its own S3 client."""

    url: str
    fs: pafs.FileSystem
    root: str

    # -- names -------------------------------------------------------------------------
    def path(self, name: str = "") -> str:
        """Filesystem path of ``name`` (relative to the root)."""
        return f"{self.root}/{name}" if name else self.root

    def url_of(self, name: str = "") -> str:
        """``name`` as a user reads it: ``s3://bucket/prefix/name`` or ``/abs/path/name``."""
        return f"{self.url}/{name}" if name else self.url

    @property
    def local_path(self) -> Path | None:
        """The root as a local ``Path``, or None for an object store."""
        return Path(self.root) if isinstance(self.fs, pafs.LocalFileSystem) else None

    # -- reading -----------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        """Whether ``name`` is a file (an object)."""
        return self._call("stat", name, lambda: self.fs.get_file_info(self.path(name))).type == pafs.FileType.File

    def size(self, name: str) -> int:
        """Bytes of file ``name``; ``FileNotFoundError`` if absent."""
        info = self._call("stat", name, lambda: self.fs.get_file_info(self.path(name)))
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"{self.url_of(name)}: no such file")
        return info.size

    def read_bytes(self, name: str) -> bytes:
        """The whole of file ``name`` (on S3: a HEAD, then one GET)."""
        with self.open_file(name) as file:
            return file.read_at(0, file.size)

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    def open_file(self, name: str) -> "RangeFile":
        """A random-access reader of ``name`` for ranged reads (on S3: one HEAD to open, then
        one ranged GET per read)."""
        return RangeFile(self.url_of(name), self._call("open", name, lambda: self.fs.open_input_file(self.path(name))))

    def list(self, prefix: str = "", suffix: str = "") -> list[str]:
        """Names of the files under ``prefix`` (recursively) that end with ``suffix``,
        sorted; empty when ``prefix`` does not exist."""
        selector = pafs.FileSelector(self.path(prefix.rstrip("/")), recursive=True, allow_not_found=True)
        infos = self._call("list", prefix, lambda: self.fs.get_file_info(selector))
        start = len(self.root) + 1
        return sorted(i.path[start:] for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))

    # -- writing -----------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[pa.NativeFile]:
        """Write ``name`` atomically: yields a writable stream; when the block ends without an
        exception the file appears under ``name``, complete; otherwise nothing does."""
        temporary = f"{name}.{secrets.token_hex(6)}{TEMPORARY_SUFFIX}"
        if self.local_path is not None:
            self.fs.create_dir(self.path(name.rpartition("/")[0]), recursive=True)
        stream = self._call("write", temporary, lambda: self.fs.open_output_stream(self.path(temporary)))
        published = False
        try:
            try:
                yield stream
            finally:
                self._call("write", temporary, stream.close, retry=False)  # completes the upload
            self._call("publish", name, lambda: self.fs.move(self.path(temporary), self.path(name)))
            published = True
        finally:
            if not published:
                with contextlib.suppress(OSError):
                    self.fs.delete_file(self.path(temporary))

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``data`` to ``name`` atomically."""
        with self.writer(name) as stream:
            stream.write(data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def delete(self, name: str) -> None:
        """Remove file ``name`` if it exists."""
        with contextlib.suppress(FileNotFoundError):
            self._call("delete", name, lambda: self.fs.delete_file(self.path(name)))

    def remove_temporaries(self) -> list[str]:
        """Delete what interrupted writers left (``*.tmp``); returns their names."""
        left = self.list(suffix=TEMPORARY_SUFFIX)
        for name in left:
            self.delete(name)
        return left

    # -- errors ------------------------------------------------------------------------
    def _call(self, what: str, name: str, action, retry: bool = True):
        """Run ``action`` (under :func:`retrying` unless ``retry`` is false: an action that is
        not idempotent); a failure that is not a plain absence (``FileNotFoundError``)
        becomes a :class:`StorageError` naming the URL."""
        try:
            return retrying(action) if retry else action()
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{self.url_of(name)}: {what}: no such file ({error})") from None
        except StorageError:
            raise
        except OSError as error:
            raise StorageError(f"{self.url_of(name)}: {what} failed: {error}") from error


_TRANSIENT = re.compile(r"HTTP status (5\d\d|429)|SlowDown|Throttl|RequestTimeout|NETWORK_CONNECTION|"
                        r"Failed to flush response stream|timed? ?out|Connection reset", re.IGNORECASE)
"""Errors worth another attempt. The SDK retries most of them itself; one it does not: a
ranged GET answered with an error whose body is longer than the range ("Failed to flush
response stream"), which is how a 503 SlowDown on a small read surfaces through pyarrow."""


def retrying(action, attempts: int | None = None, base_delay_s: float = 0.05, max_delay_s: float = 5.0):
    """Run ``action()``; on a transient ``OSError`` (:data:`_TRANSIENT`) try again, up to
    ``attempts`` in all (default ``AWS_MAX_ATTEMPTS``), sleeping ``base_delay_s * 2**k``
    (capped at ``max_delay_s``, full jitter) before attempt ``k + 1``; re-raise the last error.
    Only for idempotent actions (reads, listings, stats, deletes, server-side copies)."""
    attempts = attempts or int(os.environ.get("AWS_MAX_ATTEMPTS") or _DEFAULT_ATTEMPTS)
    for attempt in range(attempts):
        try:
            return action()
        except FileNotFoundError:
            raise
        except OSError as error:
            if attempt + 1 == attempts or not _TRANSIENT.search(str(error)):
                raise
            time.sleep(random.uniform(0, min(max_delay_s, base_delay_s * 2 ** attempt)))


class RangeFile:
    """Ranged reads of one file: ``read_at(offset, length)`` -> bytes (fewer at the end of
    the file). Each call is one request on an object store."""

    def __init__(self, url: str, file: pa.NativeFile):
        self.url, self._file = url, file

    @property
    def size(self) -> int:
        """Bytes in the file."""
        return self._file.size()

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer at the end of the file), with transient
        errors retried (:func:`retrying`)."""
        try:
            return retrying(lambda: self._file.read_at(length, offset))
        except OSError as error:
            raise StorageError(f"{self.url}: read of bytes {offset}..{offset + length} failed: {error}") from error

    @property
    def native(self) -> pa.NativeFile:
        """The pyarrow file (for ``pyarrow.parquet.ParquetFile``: its reads are ranged)."""
        return self._file

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "RangeFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
