"""Shared test helpers. Tests read the real LLaSO-Eval records copied into tests/fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
EVAL_SAMPLE = FIXTURES / "llaso_eval_sample"


@pytest.fixture(scope="session")
def eval_sample() -> Path:
    return EVAL_SAMPLE


def convert_in_process(source: Path, out: Path, **options):
    """Convert ``source`` into ``out`` on a private local Ray (2 CPUs) started and shut
    down around the call; returns the conversion report."""
    import ray

    from llaso_data.convert.pipeline import ConvertOptions, convert
    from llaso_data.convert.ray_local import init_ray

    init_ray(None, num_cpus=2)
    try:
        return convert(ConvertOptions(source, out, **options))
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 behind a counting proxy (``tests/loopback_s3.py``),
    with ``AWS_*`` pointing at the proxy for the whole session (so Ray workers, DataLoader
    workers and torchrun ranks started by tests reach it too); stopped at the end. Yields
    the :class:`~loopback_s3.CountingProxy` (``.url``, ``.traffic``, settable ``.fault``)."""
    from loopback_s3 import CountingProxy, aws_environment, moto_server

    with moto_server() as upstream, CountingProxy(upstream) as proxy, aws_environment(proxy.url):
        proxy.upstream_url = upstream
        yield proxy


@pytest.fixture
def s3_bucket(s3_endpoint, request) -> str:
    """A fresh, empty bucket on the loopback endpoint; yields ``s3://<name>``. Injected
    faults are cleared at the end."""
    import re
    import secrets

    from loopback_s3 import create_bucket

    name = (re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-"
            + secrets.token_hex(3))
    create_bucket(s3_endpoint.upstream_url, name)
    yield f"s3://{name}"
    s3_endpoint.fault = None
