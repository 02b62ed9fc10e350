"""The trainer's typed configuration (YAML + ``key=value`` overrides), its validation, the
learning-rate schedule and the per-step telemetry figures."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from llaso_data.frontend import FRAMES_PER_SECOND, SAMPLE_RATE
from llaso_train.config import load_config
from llaso_train.recipe import Telemetry, lr_schedule

CONFIGS = Path(__file__).resolve().parents[1] / "llaso_train" / "configs"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


MINIMAL = """
stage: align
model: {encoder: {d_model: 8}, lm: {model_type: llama}, stack: 5}
data: {shards: some/where, batch_size: 2}
"""


def test_every_shipped_recipe_loads():
    for path in sorted(CONFIGS.glob("*.yaml")):
        config = load_config(path)
        assert config.stage in ("align", "instruct"), path
        assert config.data.batching(config.model.stack).audio_tokens_per_second == FRAMES_PER_SECOND / config.model.stack


def test_overrides_reach_nested_sections_with_yaml_types(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL), [
        "max_steps=7", "optim.lr=1e-4", "data.splits=[train, test]", "data.weights={ASR: 2}",
        "data.mixing=explicit", "bf16=false", "model.stack=3", "output_dir=runs/x", "data.max_tokens=null",
    ])
    assert config.max_steps == 7 and isinstance(config.max_steps, int)
    assert config.optim.lr == 1e-4 and isinstance(config.optim.lr, float)   # "1e-4" is a str in YAML 1.1
    assert config.data.splits == ["train", "test"] and config.data.weights == {"ASR": 2}
    assert config.bf16 is False and config.model.stack == 3 and config.output_dir == "runs/x"
    assert config.data.selection().splits == ("train", "test")
    assert config.data.mixing_rule().weights == {"ASR": 2}


def test_an_override_creates_a_missing_section(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL), ["optim.warmup_ratio=0.5"])
    assert config.optim.warmup_ratio == 0.5 and config.optim.lr == 1e-3


@pytest.mark.parametrize("overrides, message", [
    (["max_step=3"], r"unknown config keys: \['max_step'\]"),
    (["data.batchsize=3"], r"unknown keys in data: \['batchsize'\]"),
    (["stage=pretrain"], "stage must be one of"),
    (["zero_stage=4"], "zero_stage must be 0, 1, 2 or 3"),
    (["bf16=maybe"], "bf16 must be auto, true or false"),
    (["train_encoder=true"], "the align stage trains the projector only"),
    (["gradient_accumulation=0"], "must be >= 1"),
    (["model.stack=7"], "model.stack must divide Whisper's 1500 encoder frames"),
    (["model.projector=linear"], "unknown projector"),
    (["model.attn_implementation=flash"], "unknown attn_implementation"),
    (["data.max_tokens=4000"], "data: set exactly one of batch_size and max_tokens"),
    (["data.batch_size=null"], "data: set exactly one of batch_size and max_tokens"),
    (["data.batch_size=0"], "data: batch_size, max_tokens and max_length must be >= 1"),
    (["data.sources=[{shards: a}]"], "data: set exactly one of data.shards and data.sources"),
    (["data.shards=null", "data.sources=[{shards: a, weight: 0}]"], "data: source a: weight must be positive"),
    (["data.shards=null", "data.sources=[{shards: a}, {shards: b/a}]"], "data: source names must be unique"),
    (["data.shards=null", "data.sources=[{path: a}]"], r"data: data.sources\[0\] must be a mapping with shards"),
    (["data.chars_per_token=0"], "data: audio_tokens_per_second and chars_per_token must be positive"),
    (["data.mixing=zipf"], "data: unknown mixing mode 'zipf'"),
    (["data.mixing=explicit"], "data: explicit mixing needs weights"),
    (["data.mixing=temperature", "data.temperature=0"], "data: temperature must be positive"),
    (["data.num_workers=-1"], "data.num_workers must be >= 0"),
    (["optim.lr=0"], "optim.lr must be > 0"),
    (["optim.warmup_ratio=1"], r"optim.warmup_ratio in \[0, 1\)"),
    (["max_steps"], "override 'max_steps' is not key=value"),
])
def test_invalid_settings_are_refused_with_the_field_named(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(_write(tmp_path, MINIMAL), overrides)


def test_sources_build_the_planner_sources_with_the_section_defaults(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL), [
        "data.shards=null", "data.splits=[train, dev]",
        "data.sources=[{shards: /d/align, weight: 3}, {shards: /d/instruct, name: inst, tasks: [ASR, SGC]}]"])
    align, instruct = config.data.plan_sources()
    assert (str(align.root), align.name, align.weight, align.selection.splits) == ("/d/align", "align", 3.0,
                                                                                  ("train", "dev"))
    assert (instruct.name, instruct.weight, instruct.selection.tasks) == ("inst", 1.0, ("ASR", "SGC"))
    one = load_config(_write(tmp_path, MINIMAL)).data.plan(stack=5, seed=3)
    assert [(str(s.root), s.weight) for s in one.sources] == [("some/where", 1.0)] and one.seed == 3


def test_a_recipe_without_a_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="model.encoder and model.lm are required"):
        load_config(_write(tmp_path, "stage: align\nmodel: {lm: {model_type: llama}}\n"))
    with pytest.raises(ValueError, match="a model section is required"):
        load_config(_write(tmp_path, "stage: align\n"))


def test_learning_rate_warms_up_linearly_then_decays_on_a_cosine(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL), ["optim.warmup_ratio=0.1"])
    factor = lr_schedule(config, total_steps=100)      # warm-up: 10 optimizer steps
    assert [factor(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5)             # half-way through the 90 decay steps
    assert factor(100) == pytest.approx(0.0, abs=1e-12)
    assert factor(250) == pytest.approx(0.0, abs=1e-12)  # stays at the floor past the end
    decay = [factor(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert factor(32) == pytest.approx(0.5 * (1 + math.cos(math.pi * 22 / 90)))


def test_a_schedule_shorter_than_its_warm_up_still_reaches_full_rate(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL), ["optim.warmup_ratio=0"])
    factor = lr_schedule(config, total_steps=3)          # warm-up of at least one step
    assert factor(0) == 1.0 and factor(3) == pytest.approx(0.0, abs=1e-12)


def _batch(samples: int, attended: int, chunk_seconds: list[float]) -> dict:
    mask = torch.zeros((samples, 50), dtype=torch.int64)
    mask.view(-1)[:attended] = 1
    return {"keys": [f"k{i}" for i in range(samples)], "attention_mask": mask,
            "chunk_lengths": torch.tensor([int(s * SAMPLE_RATE) for s in chunk_seconds])}


def test_telemetry_figures_count_every_rank(tmp_path):
    telemetry = Telemetry(tmp_path / "metrics.jsonl")
    first = telemetry.record(1, 2.5, [_batch(4, 120, [3.0, 1.5])], wait=0.5, busy=1.5, lr=1e-3, world=2)
    assert first == {"step": 1, "loss": 2.5, "samples": 8, "lr": 1e-3,
                     "tokens_per_s": 120.0,             # 120 tokens x 2 ranks / 2 s
                     "samples_per_s": 4.0,              # 4 x 2 / 2 s
                     "audio_hours_per_s": round(9.0 / 3600 / 2.0, 6),
                     "data_wait_fraction": 0.25}
    second = telemetry.record(2, 2.0, [_batch(2, 30, [])], wait=1.5, busy=0.5, lr=5e-4, world=2)
    assert second["samples"] == 12 and second["tokens_per_s"] == 30.0 and second["audio_hours_per_s"] == 0.0
    assert second["data_wait_fraction"] == 0.5           # cumulative: 2 s waited of 4 s
    assert telemetry.tokens == 300 and telemetry.audio_seconds == pytest.approx(9.0)
    # an optimizer step of 2 micro-batches counts both
    third = telemetry.record(3, 1.0, [_batch(2, 10, [1.0]), _batch(3, 20, [2.0])], wait=0.0, busy=2.0, lr=5e-4, world=2)
    assert (third["samples"], third["tokens_per_s"], third["samples_per_s"]) == (22, 30.0, 5.0)
    assert third["audio_hours_per_s"] == round(6.0 / 3600 / 2.0, 6)
