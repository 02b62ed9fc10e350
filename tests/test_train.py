"""Training under torchrun with DeepSpeed ZeRO-3 on CPU, tiny random models, real shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from llaso_data.stream.chat import ChatFormat, special_token_ids, tiny_tokenizer
from llaso_synth.corpus import write_corpus
from llaso_train.config import load_config
from llaso_train.model import PROJECTOR_FILE, build_model
from llaso_train.recipe import _seed_everything

from conftest import convert_in_process

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2"]
ENV = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, seed=11, samples_per_task=4)
    out = tmp_path_factory.mktemp("shards")
    assert convert_in_process(root, out, samples_per_shard=16).identity_holds
    return out


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


def test_align_trains_only_the_projector(shards, tmp_path):
    out = tmp_path / "align"
    _train("tiny_align.yaml", out, shards, "max_steps=6", "save_every=0", "optim.lr=1e-2")
    rows = _metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all({"step", "loss", "samples", "data_wait_fraction"} <= set(r) for r in rows)
    assert rows[-1]["samples"] == 6 * 4 * 2  # batch 4 on each of 2 ranks

    config = load_config(REPO / "llaso_train" / "configs" / "tiny_align.yaml")
    fmt = ChatFormat()
    tokenizer = tiny_tokenizer(fmt=fmt)
    _seed_everything(config.seed)
    initial = build_model(config.model, len(tokenizer), special_token_ids(tokenizer, fmt)[fmt.audio_pad])
    exported = out / "export"
    lm = AutoModelForCausalLM.from_pretrained(exported / "lm")
    for name, value in initial.lm.state_dict().items():
        assert torch.equal(lm.state_dict()[name], value), f"frozen LM parameter {name} changed"
    encoder = WhisperEncoder.from_pretrained(exported / "encoder")
    for name, value in initial.encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[name], value), f"frozen encoder parameter {name} changed"
    projector = load_file(str(exported / PROJECTOR_FILE))
    for name, value in initial.projector.state_dict().items():
        assert not torch.equal(projector[name], value), f"projector parameter {name} did not train"


def _by_step(out: Path) -> dict[int, tuple]:
    """Last record per step of both ranks' consumed keys and losses."""
    steps: dict[int, tuple] = {}
    for rank in (0, 1):
        for line in (out / f"keys-rank{rank}.jsonl").read_text().splitlines():
            row = json.loads(line)
            steps.setdefault(row["step"], {})[rank] = (tuple(row["keys"]), row["loss"])
    return steps


def test_killed_run_resumes_with_the_same_samples_and_losses(shards, tmp_path):
    settings = ("max_steps=9", "save_every=3", "log_keys=true", "optim.lr=3e-3")
    reference = tmp_path / "reference"
    _train("tiny_instruct.yaml", reference, shards, *settings, "init_projector=null")
    losses = [row["loss"] for row in _metrics(reference)]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3  # instruct trains the LM: the loss falls

    killed = tmp_path / "killed"
    process = _train("tiny_instruct.yaml", killed, shards, *settings, "init_projector=null",
                     start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest"
    deadline = time.monotonic() + 400
    while not (latest.exists() and latest.read_text().strip() in ("step3", "step6")):
        assert process.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "export").exists()
    resumed = _train("tiny_instruct.yaml", killed, shards, *settings, "init_projector=null")
    assert "resumed at step" in resumed.stdout

    expected, got = _by_step(reference), _by_step(killed)
    assert sorted(got) == sorted(expected) == list(range(1, 10))
    for step in expected:
        for rank in (0, 1):
            assert got[step][rank][0] == expected[step][rank][0], f"step {step} rank {rank} keys differ"
            assert got[step][rank][1] == pytest.approx(expected[step][rank][1], rel=1e-5, abs=1e-6)


def test_a_stopped_rank_makes_the_other_exit_within_the_timeout(tmp_path):
    """Rank 1 stops itself; rank 0 gives up after 5 s naming rank 1 and exits non-zero;
    killing the launcher then leaves no rank process behind (the stopped one included)."""
    script = Path(__file__).parent / "scripts" / "stopped_rank.py"
    launcher = subprocess.Popen([*TORCHRUN, str(script), "5"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "DS_ACCELERATOR": "cpu"})
    lines, deadline = [], time.monotonic() + 240
    while time.monotonic() < deadline:
        line = launcher.stdout.readline()
        lines.append(line)
        if "gave up waiting" in line or not line:
            break
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                               text=True).stdout.split()]
    launcher.kill()
    launcher.wait()
    output = "".join(lines)
    assert "stopped_rank: rank 0 of 2: gave up waiting for rank 1" in output, output[-3000:]
    time.sleep(1)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower() \
            or " Z " in Path(f"/proc/{pid}/stat").read_text(), f"rank process {pid} outlived its launcher"
