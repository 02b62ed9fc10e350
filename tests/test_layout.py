"""The package layout follows the data flow, and the import rules that keep it one-way hold.

Rules (read from every module's AST, so a violation fails with its module and line):

* ``llaso_data`` never imports ``llaso_train`` or ``llaso_eval``, and only its CLI imports
  ``llaso_synth`` (lazily, for ``llaso-shard synth``);
* the contract (``llaso_data``'s top-level modules) imports no sub-package; a sub-package
  imports the contract and the sub-packages before it in the flow
  (ingest -> convert -> stream), never one after it; ``llaso_data.cli`` is the entry point
  and may import any of them;
* ``llaso_data.stream`` never imports ``ray``; ``ingest`` and ``convert`` never import
  ``torch``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOW = ("ingest", "convert", "stream")
ENTRY_POINTS = {"llaso_data.cli"}
FORBIDDEN_THIRD_PARTY = {"stream": {"ray"}, "ingest": {"torch"}, "convert": {"torch"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``source`` (at any depth,
    lazy imports inside functions included); relative imports resolved against
    ``module``."""
    package = module.split(".")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.append((node.lineno, name))
    return found


def violations(module: str, source: str) -> list[str]:
    """Every import rule ``module`` (a dotted name under ``llaso_data``) breaks."""
    parts = module.split(".")
    own = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FLOW) else None
    problems = []
    for line, target in imported_modules(source, module):
        top = target.split(".")[0]
        where = f"{module} line {line} imports {target}"
        if top in ("llaso_train", "llaso_eval") or (top == "llaso_synth" and module not in ENTRY_POINTS):
            problems.append(f"{where}: llaso_data never imports {top}")
        if own and top in FORBIDDEN_THIRD_PARTY.get(own, ()):
            problems.append(f"{where}: llaso_data.{own} never imports {top}")
        if top != "llaso_data" or module in ENTRY_POINTS:
            continue
        target_parts = target.split(".")
        target_stage = target_parts[1] if len(target_parts) > 1 and target_parts[1] in FLOW else None
        if target_stage is None:
            continue
        if own is None:
            problems.append(f"{where}: the contract imports no sub-package")
        elif FLOW.index(target_stage) > FLOW.index(own):
            problems.append(f"{where}: {own} comes before {target_stage} in the flow")
    return problems


def library_modules():
    for path in sorted((ROOT / "llaso_data").rglob("*.py")):
        yield module_name(path), path.read_text()


def test_the_tree_shows_the_pipeline():
    assert sorted(p.name for p in (ROOT / "llaso_data").iterdir() if p.is_dir() and p.name != "__pycache__") \
        == sorted(FLOW)
    top = {p.stem for p in (ROOT / "llaso_data").glob("*.py")} - {"__init__"}
    assert top == {"records", "tasks", "manifest", "frontend", "storage", "cli"}
    assert not (ROOT / "llaso_data" / "synth.py").exists()


def test_every_library_module_keeps_the_import_rules():
    problems = [problem for module, source in library_modules() for problem in violations(module, source)]
    assert problems == []


def test_llaso_train_and_eval_import_no_synthetic_corpus():
    for package in ("llaso_train", "llaso_eval"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = module_name(path)
            bad = [t for _, t in imported_modules(path.read_text(), module) if t.startswith("llaso_synth")]
            assert bad == [], f"{module} imports {bad}"


@pytest.mark.parametrize("module, source, expected", [
    ("llaso_data.stream.loader", "import ray\n", "llaso_data.stream never imports ray"),
    ("llaso_data.stream.plan", "def f():\n    from ray import data\n", "llaso_data.stream never imports ray"),
    ("llaso_data.ingest.readers", "import torch.nn\n", "llaso_data.ingest never imports torch"),
    ("llaso_data.convert.pipeline", "from torch.utils.data import DataLoader\n",
     "llaso_data.convert never imports torch"),
    ("llaso_data.ingest.corpus", "from llaso_data.convert.transcode import encode_clip\n",
     "ingest comes before convert in the flow"),
    ("llaso_data.convert.verify", "from ..stream.plan import plan_rank\n", "convert comes before stream in the flow"),
    ("llaso_data.records", "from llaso_data.ingest import paths\n", "the contract imports no sub-package"),
    ("llaso_data.stream.chat", "import llaso_train.model\n", "llaso_data never imports llaso_train"),
    ("llaso_data.convert.stats", "from llaso_eval.report import write_report\n", "llaso_data never imports llaso_eval"),
    ("llaso_data.ingest.corpus", "from llaso_synth.corpus import write_corpus\n", "llaso_data never imports llaso_synth"),
])
def test_a_forbidden_import_is_named(module, source, expected):
    problems = violations(module, source)
    assert len(problems) == 1 and expected in problems[0] and module in problems[0], problems


@pytest.mark.parametrize("module, source", [
    ("llaso_data.stream.loader", "import torch\nfrom llaso_data.convert.transcode import AUDIO_MODES\n"),
    ("llaso_data.convert.pipeline", "import ray\nfrom llaso_data.ingest.corpus import scan\n"),
    ("llaso_data.cli", "from llaso_synth.corpus import write_corpus\nfrom llaso_data.stream import plan\n"),
    ("llaso_data.ingest.validate", "from ..records import Sample\nfrom .paths import AudioRoot\n"),
])
def test_allowed_imports_pass(module, source):
    assert violations(module, source) == []
