"""Shared test helpers. Tests read the real LLaSO-Eval records copied into tests/fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
EVAL_SAMPLE = FIXTURES / "llaso_eval_sample"


@pytest.fixture(scope="session")
def eval_sample() -> Path:
    return EVAL_SAMPLE
