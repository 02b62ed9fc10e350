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
