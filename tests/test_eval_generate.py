"""The pure parts of ``llaso_eval.generate``: left-aligning prompts with their audio spans, and
writing predictions as LLaSO records that ingest back to the same samples. The end-to-end
generation under torchrun is in ``tests/test_listening.py`` (it needs a trained model)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from llaso_data.stream.chat import render, tiny_tokenizer
from llaso_data.ingest.corpus import iter_corpus
from llaso_data.records import Sample, Turn
from llaso_data.stream.loader import collate, to_torch
from llaso_data.stream.windows import WaveformConfig
from llaso_eval.generate import left_align, llaso_record, merge_parts

PAD = 0


def _sample(key: str, text: str, clips: int) -> Sample:
    turns = (Turn("user", text, tuple((len(text), c) for c in range(clips))), Turn("assistant", "ok"))
    return Sample(key, "test", "text_audio", "ASR", "linguistic", "a.json", 0, turns,
                  tuple(f"c{c}.wav" for c in range(clips)), "ok")


def test_left_align_moves_each_audio_span_with_its_tokens():
    tok = tiny_tokenizer()
    samples = [_sample("short-0", "Hi", 1), _sample("long-1", "Please transcribe this long request", 2)]
    windows = [[[torch.ones(3200).numpy()]], [[torch.ones(1600).numpy()], [torch.ones(4800).numpy()]]]
    waveform = WaveformConfig(stack=1)
    prompt = lambda s, tokens: render(s, tok, tokens, prompt_only=True)  # noqa: E731
    batch = to_torch(collate(samples, windows, waveform, prompt, PAD, {}))
    ids, mask, starts = left_align(batch["input_ids"], batch["attention_mask"], batch["chunk_sample"],
                                   batch["chunk_start"], PAD)
    lengths = batch["attention_mask"].sum(dim=1)
    width = ids.shape[1]
    for row in range(len(samples)):
        n = int(lengths[row])
        assert ids[row, width - n:].tolist() == batch["input_ids"][row, :n].tolist()
        assert ids[row, :width - n].tolist() == [PAD] * (width - n)
        assert mask[row].tolist() == [0] * (width - n) + [1] * n
    audio_pad = tok.convert_tokens_to_ids("<|reserved_special_token_2|>")
    for chunk in range(len(starts)):
        row, start, count = int(batch["chunk_sample"][chunk]), int(starts[chunk]), int(batch["chunk_tokens"][chunk])
        assert ids[row, start:start + count].tolist() == [audio_pad] * count
    assert starts.tolist() != batch["chunk_start"].tolist()  # the shorter prompt moved


def test_predictions_are_llaso_records_that_ingest_back_to_the_same_samples(eval_sample, tmp_path):
    samples = [s for s in iter_corpus(eval_sample) if isinstance(s, Sample)]
    by_source = defaultdict(list)
    for sample in samples:
        by_source[sample.source].append(llaso_record(sample, f"answer {sample.ordinal}"))
    for source, records in by_source.items():
        (tmp_path / source).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / source).write_text(json.dumps(records, ensure_ascii=False))
    again = {(s.source, s.ordinal): s for s in iter_corpus(tmp_path)}
    assert len(again) == len(samples)
    for sample in samples:
        back = again[(sample.source, sample.ordinal)]
        assert isinstance(back, Sample), back
        assert (back.turns, back.audio, back.label, back.task, back.modality) == \
            (sample.turns, sample.audio, sample.label, sample.task, sample.modality)
        assert back.provenance == {**sample.provenance, "key": sample.key, "answer": f"answer {sample.ordinal}"}


def test_merge_writes_each_key_once_in_source_order_and_lists_missing_ones(tmp_path):
    rows = [(2, "k2"), (0, "k0"), (2, "k2")]  # k2 twice: the planner's padding wraps around
    part = tmp_path / "rank-00000.jsonl"
    part.write_text("".join(json.dumps({"source": "x/A_test.json", "ordinal": o,
                                        "record": {"key": k, "answer": k}}) + "\n" for o, k in rows))
    out = tmp_path / "pred"
    out.mkdir()
    expected = {"k0": ("x/A_test.json", 0), "k1": ("x/A_test.json", 1), "k2": ("x/A_test.json", 2)}
    summary = merge_parts([part], out, expected, {"corrupt": 1})
    assert json.loads((out / "x" / "A_test.json").read_text()) == [{"key": "k0", "answer": "k0"},
                                                                   {"key": "k2", "answer": "k2"}]
    assert summary["samples"] == 3 and summary["predicted"] == 2
    assert summary["missing"] == [{"key": "k1", "source": "x/A_test.json", "ordinal": 1}]
    assert json.loads((out / "generation.json").read_text()) == summary
