"""Training under torchrun with DeepSpeed ZeRO-3 on CPU, on real shards.

The main tests use tiny checkpoints of the real LLaSO-Base layouts written by
``save_pretrained`` (``llaso_synth.checkpoints``: an fp16 Whisper with 128 mel bins, a bf16
Llama-3.2-style LM, a Llama-3-style tokenizer with its chat template) through the
``llaso_base_*.yaml`` presets: align -> instruct (killed and resumed) -> export ->
``load_exported`` -> generate, 2 ranks, dynamic batches and gradient accumulation.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llaso_data.stream.chat import IGNORE_INDEX
from llaso_synth.checkpoints import write_checkpoints
from llaso_synth.corpus import write_corpus
from llaso_train.model import PROJECTOR_FILE, load_exported
from llaso_train.recipe import RUN_STATE_FILE, check_resumable, keep_rows_through

from conftest import convert_in_process

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2"]
ENV = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
# dynamic batches (a token budget, no fixed size) and 2 micro-batches per optimizer step
DYNAMIC = ("data.batch_size=null", "data.max_tokens=1200", "data.chars_per_token=2", "gradient_accumulation=2",
           "zero_stage=3", "data.num_workers=1")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, seed=11, samples_per_task=4)
    out = tmp_path_factory.mktemp("shards")
    assert convert_in_process(root, out, samples_per_shard=16).identity_holds
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return write_checkpoints(tmp_path_factory.mktemp("checkpoints"))


def _model_overrides(checkpoints: dict[str, Path]) -> tuple[str, ...]:
    return tuple(f"model.{part}={path}" for part, path in checkpoints.items())


def _train(config: str, out: Path, shards: Path, *overrides: str, timeout: int = 420,
           **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    command = [*TORCHRUN, "-m", "llaso_train", "--config", str(REPO / "llaso_train" / "configs" / config),
               f"output_dir={out}", f"data.shards={shards}", *overrides]
    if popen:
        return subprocess.Popen(command, cwd=REPO, env=ENV, **popen)
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_rank_without_audio_does_not_hang():
    result = subprocess.run([*TORCHRUN, str(REPO / "tests" / "scripts" / "zero3_uneven_audio.py"), "3"],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} step 2 loss" in result.stdout


@pytest.fixture(scope="module")
def aligned(shards, checkpoints, tmp_path_factory) -> Path:
    """Stage 1 on the real layouts in fp32 (``bf16=false``) from fp16/bf16 checkpoints."""
    out = tmp_path_factory.mktemp("align")
    _train("llaso_base_align.yaml", out, shards, *_model_overrides(checkpoints), *DYNAMIC,
           "max_steps=3", "epochs=20", "save_every=0", "bf16=false", "optim.lr=1e-2")
    return out


def test_align_on_real_checkpoints_trains_only_the_projector(aligned, checkpoints):
    rows = _metrics(aligned)
    assert [r["step"] for r in rows] == [1, 2, 3]            # optimizer steps, 2 micro-batches each
    assert rows[-1]["loss"] < rows[0]["loss"]
    exported = aligned / "export"
    # frozen parts: exactly the checkpoint's values (fp16 encoder, bf16 LM), now in fp32
    saved_lm = load_file(str(checkpoints["lm"] / "model.safetensors"))
    saved_encoder = {k.removeprefix("model.encoder."): v for k, v in
                     load_file(str(checkpoints["encoder"] / "model.safetensors")).items() if k.startswith("model.encoder.")}
    lm = load_file(str(exported / "lm" / "model.safetensors"))
    encoder = load_file(str(exported / "encoder" / "model.safetensors"))
    assert {v.dtype for v in saved_lm.values()} == {torch.bfloat16}
    assert {v.dtype for v in saved_encoder.values()} == {torch.float16}
    assert set(lm) == set(saved_lm) and set(encoder) == set(saved_encoder)
    for saved, got in ((saved_lm, lm), (saved_encoder, encoder)):
        for name, value in saved.items():
            assert got[name].dtype == torch.float32 and torch.equal(got[name], value.float()), name
    projector = load_file(str(exported / PROJECTOR_FILE))
    assert {v.dtype for v in projector.values()} == {torch.float32}


def _by_step(out: Path) -> dict[int, tuple]:
    """Last record per step of both ranks' consumed keys and losses."""
    steps: dict[int, tuple] = {}
    for rank in (0, 1):
        for line in (out / f"keys-rank{rank}.jsonl").read_text().splitlines():
            row = json.loads(line)
            steps.setdefault(row["step"], {})[rank] = (tuple(row["keys"]), row["loss"])
    return steps


def _logged_after(out: Path, step: int) -> bool:
    """Whether rank 0's metrics already hold a step after ``step`` (complete lines only)."""
    try:
        text = (out / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return False
    return any(json.loads(line)["step"] > step for line in text.splitlines(keepends=True) if line.endswith("\n"))


def test_a_restarted_run_cuts_its_logs_to_the_step_it_starts_from(tmp_path):
    log = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": s / 10}) + "\n" for s in (1, 2, 3, 4)]
    log.write_text("".join(rows) + '{"step": 5, "lo')  # killed mid-write
    keep_rows_through(log, 2)
    assert log.read_text() == "".join(rows[:2])
    keep_rows_through(log, 0)                            # restarted before its first checkpoint
    assert log.read_text() == ""
    keep_rows_through(tmp_path / "absent.jsonl", 3)
    assert not (tmp_path / "absent.jsonl").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_real_layout_instruct_resumes_exports_and_generates(aligned, shards, checkpoints, tmp_path):
    """bf16 instruct from the align projector with gradient checkpointing (as the Base preset),
    killed after a checkpoint and resumed: the same keys and losses as an uninterrupted run;
    then the bf16 export loads in fp32 and bf16 and answers the eval split on 2 ZeRO-3 ranks."""
    settings = (*_model_overrides(checkpoints), *DYNAMIC, "max_steps=6", "epochs=20", "save_every=2",
                "log_keys=true", "bf16=true", "optim.lr=1e-3",
                f"init_projector={aligned / 'export' / PROJECTOR_FILE}")
    reference = tmp_path / "reference"
    _train("llaso_base_instruct.yaml", reference, shards, *settings)

    killed = tmp_path / "killed"
    process = _train("llaso_base_instruct.yaml", killed, shards, *settings,
                     start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest"
    deadline = time.monotonic() + 400
    while not (latest.exists() and latest.read_text().strip() in ("step2", "step4")
               and _logged_after(killed, int(latest.read_text().strip().removeprefix("step")))):
        assert process.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "export").exists()
    tag = killed / "checkpoints" / latest.read_text().strip()
    assert json.loads((tag / RUN_STATE_FILE).read_text())["world_size"] == 2
    with pytest.raises(ValueError, match="saved by 2 ranks, resumed on 1"):
        check_resumable(tag, world=1, gradient_accumulation=2)
    resumed = _train("llaso_base_instruct.yaml", killed, shards, *settings)
    assert "resumed at step" in resumed.stdout
    assert re.search(r"data: the chat template adds \d+ tokens per sample and 2 per clip", resumed.stdout)
    assert "dropped at planning" in resumed.stdout

    # the steps logged after the checkpoint and trained again are logged once, as uninterrupted
    for rank in (0, 1):
        rows = [json.loads(line) for line in (killed / f"keys-rank{rank}.jsonl").read_text().splitlines()]
        reference_rows = [json.loads(line) for line in (reference / f"keys-rank{rank}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [r["step"] for r in reference_rows] == list(range(1, 7))
        assert [r["keys"] for r in rows] == [r["keys"] for r in reference_rows], f"rank {rank} keys differ"
        assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in reference_rows], rel=1e-5, abs=1e-6)
    rows, reference_rows = _metrics(killed), _metrics(reference)
    assert [r["step"] for r in rows] == [r["step"] for r in reference_rows] == list(range(1, 7))
    assert [r["samples"] for r in rows] == [r["samples"] for r in reference_rows]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in reference_rows], rel=1e-5, abs=1e-6)
    expected, got = _by_step(reference), _by_step(killed)
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    for step in expected:
        for rank in (0, 1):
            assert got[step][rank][0] == expected[step][rank][0], f"step {step} rank {rank} keys differ"
            assert got[step][rank][1] == pytest.approx(expected[step][rank][1], rel=1e-5, abs=1e-6)

    export = killed / "export"
    assert {v.dtype for v in load_file(str(export / "lm" / "model.safetensors")).values()} == {torch.bfloat16}
    for dtype in (torch.float32, torch.bfloat16):
        model, tokenizer, _ = load_exported(export, dtype=dtype)
        assert {p.dtype for p in model.parameters()} == {dtype}
        ids = torch.tensor([tokenizer.encode("hello there", add_special_tokens=False)])
        loss = model(ids, torch.ones_like(ids), ids, torch.zeros((0, 0)), *[torch.zeros(0, dtype=torch.int64)] * 4)
        assert torch.isfinite(loss)

    predictions = tmp_path / "predictions"
    result = subprocess.run([*TORCHRUN, "-m", "llaso_eval", "generate", "--model", str(export), "--shards", str(shards),
                             "--out", str(predictions), "--max-new-tokens", "4", "--batch-size", "4"],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    summary = json.loads((predictions / "generation.json").read_text())
    assert summary["missing"] == [] and summary["predicted"] == summary["samples"] > 20


def test_loss_weighs_every_supervised_token_the_same(checkpoints):
    """Micro-batches of 3 and 12 supervised tokens, each normalised by the step's 15 tokens,
    sum to the token mean over both, not to the mean of the two micro-batch means."""
    from llaso_data.stream.chat import ChatFormat, special_token_ids
    from llaso_train.config import ModelConfig
    from llaso_train.model import build_model
    from llaso_train.recipe import build_tokenizer

    tokenizer = build_tokenizer(str(checkpoints["tokenizer"]), ChatFormat())
    model = build_model(ModelConfig(encoder=str(checkpoints["encoder"]), lm=str(checkpoints["lm"]), stack=1),
                        len(tokenizer), special_token_ids(tokenizer)[ChatFormat().audio_pad])
    torch.manual_seed(0)
    no_audio = (torch.zeros((0, 0)), *[torch.zeros(0, dtype=torch.int64)] * 4)
    batches = []
    for supervised in (3, 12):
        ids = torch.randint(0, 600, (1, 16))
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[0, 16 - supervised:] = ids[0, 16 - supervised:]
        batches.append((ids, labels))
    with torch.no_grad():
        means = [model(ids, torch.ones_like(ids), labels, *no_audio) for ids, labels in batches]
        step = sum(model(ids, torch.ones_like(ids), labels, *no_audio, normalizer=15) for ids, labels in batches)
    assert step == pytest.approx(float(means[0] * 3 + means[1] * 12) / 15, rel=1e-5)
    assert step != pytest.approx(float(means[0] + means[1]) / 2, rel=1e-3)


def test_a_stopped_rank_is_named_by_the_others_within_the_timeout(tmp_path):
    """Of 3 ranks, rank 1 stops itself; ranks 0 and 2 give up after 5 s, each naming rank 1
    (the one that never checked in), and exit non-zero; killing the launcher then leaves
    no rank process behind (the stopped one included)."""
    script = Path(__file__).parent / "scripts" / "stopped_rank.py"
    launcher = subprocess.Popen([*TORCHRUN[:-1], "3", str(script), "5", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "DS_ACCELERATOR": "cpu"})
    lines, deadline = [], time.monotonic() + 240
    while time.monotonic() < deadline and sum("gave up waiting" in line for line in lines) < 2:
        line = launcher.stdout.readline()
        lines.append(line)
        if not line:
            break
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                               text=True).stdout.split()]
    launcher.kill()
    launcher.wait()
    output = "".join(lines)
    for rank in (0, 2):
        assert f"stopped_rank: rank {rank} of 3: gave up waiting for rank 1 in a collective (timeout 5 s)" in output, \
            output[-3000:]
    time.sleep(1)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower() \
            or " Z " in Path(f"/proc/{pid}/stat").read_text(), f"rank process {pid} outlived its launcher"
