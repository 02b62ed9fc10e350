"""Chat rendering: ids and loss mask built together, audio spans, truncation, system prompts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llaso_data.stream.chat import (
    template_overhead,
    IGNORE_INDEX,
    LLASO_SYSTEM_PROMPT,
    ChatFormat,
    NoSupervisedTokens,
    PromptTooLong,
    TruncatedAudio,
    ensure_chat_tokens,
    render,
    special_token_ids,
    tiny_tokenizer,
)
from llaso_data.ingest.corpus import iter_corpus
from llaso_data.records import Sample, Turn

BOS = "<|begin_of_text|>"
EOT = "<|eot_id|>"
PAD = "<|reserved_special_token_2|>"
REPO = Path(__file__).resolve().parents[1]


def header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def audio(n: int) -> str:
    return "<|reserved_special_token_0|>" + PAD * n + "<|reserved_special_token_1|>"


def default_system() -> str:
    return header("system") + LLASO_SYSTEM_PROMPT + EOT


def make_sample(turns: list[Turn], clips: int, system: str | None = None,
                key: str = "hand-test-00000000") -> Sample:
    return Sample(
        key=key, split="test", modality="text_audio", task="ASR", category="linguistic",
        source="hand.json", ordinal=0, turns=tuple(turns),
        audio=tuple(f"clip{i}.wav" for i in range(clips)), label=turns[-1].text, system=system,
    )


def supervised_runs(rendered) -> list[tuple[int, int]]:
    """``[start, end)`` of each maximal run of supervised positions."""
    runs, start = [], None
    for i, label in enumerate([*rendered.labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


def vocab_digest(tokenizer) -> str:
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def fixture_samples(eval_sample: Path) -> list[Sample]:
    return [item for item in iter_corpus(eval_sample) if isinstance(item, Sample)]


def first_of(samples: list[Sample], modality: str) -> Sample:
    return next(s for s in samples if s.modality == modality and len(s.turns) == 2)


def test_text_audio_layout(tok, fixture_samples):
    sample = first_of(fixture_samples, "text_audio")
    rendered = render(sample, tok, [5])
    instruction = sample.turns[0].segments()[0]
    assert tok.decode(rendered.input_ids) == (
        BOS + default_system() + header("user") + instruction + audio(5) + EOT
        + header("assistant") + sample.label + EOT
    )
    (start, length, clip), = rendered.audio_spans
    ids = special_token_ids(tok)
    assert (length, clip) == (5, 0)
    assert rendered.input_ids[start - 1] == ids["<|reserved_special_token_0|>"]
    assert rendered.input_ids[start:start + length] == [ids[PAD]] * 5
    assert rendered.input_ids[start + length] == ids["<|reserved_special_token_1|>"]


def test_audio_text_layout(tok, fixture_samples):
    sample = first_of(fixture_samples, "audio_text")
    rendered = render(sample, tok, [3])
    question = sample.turns[0].segments()[1]
    prefix = BOS + default_system() + header("user")
    assert tok.decode(rendered.input_ids) == (
        prefix + audio(3) + question + EOT + header("assistant") + sample.label + EOT
    )
    (start, length, clip), = rendered.audio_spans
    assert tok.decode(rendered.input_ids[:start - 1]) == prefix
    assert (length, clip) == (3, 0)


def test_labels_are_exactly_the_answer_and_eot(tok, fixture_samples):
    assert len(fixture_samples) > 30
    for sample in fixture_samples:
        rendered = render(sample, tok, [7] * len(sample.audio))
        assert len(rendered.labels) == len(rendered.input_ids)
        assert all(label in (IGNORE_INDEX, token)
                   for label, token in zip(rendered.labels, rendered.input_ids))
        (start, end), = supervised_runs(rendered)
        assert end == len(rendered.input_ids)
        assert tok.decode(rendered.input_ids[start:end]) == sample.label + EOT
        assert end - start == len(tok.encode(sample.label, add_special_tokens=False)) + 1
        assert tok.decode(rendered.input_ids[:start]).endswith(header("assistant"))


def multi_turn_sample() -> Sample:
    turns = [
        Turn("user", "Transcribe this.", ((16, 0),)),
        Turn("assistant", "Hello world."),
        Turn("user", "Then this one, and compare.", ((9, 1),)),
        Turn("assistant", "The second clip is louder."),
        Turn("user", "Last: 这个声音听起来怎么样？", ((0, 2),)),
        Turn("assistant", "很高兴。"),
    ]
    return make_sample(turns, clips=3, key="multi-test-00000007")


def test_multi_turn_supervises_every_assistant_turn(tok):
    sample = multi_turn_sample()
    rendered = render(sample, tok, [2, 3, 4])
    expected = (
        BOS + default_system()
        + header("user") + "Transcribe this." + audio(2) + EOT
        + header("assistant") + "Hello world." + EOT
        + header("user") + "Then this" + audio(3) + " one, and compare." + EOT
        + header("assistant") + "The second clip is louder." + EOT
        + header("user") + audio(4) + "Last: 这个声音听起来怎么样？" + EOT
        + header("assistant") + "很高兴。" + EOT
    )
    assert tok.decode(rendered.input_ids) == expected
    answers = ["Hello world.", "The second clip is louder.", "很高兴。"]
    runs = supervised_runs(rendered)
    assert [tok.decode(rendered.input_ids[a:b]) for a, b in runs] == [a + EOT for a in answers]
    assert all(tok.decode(rendered.input_ids[:a]).endswith(header("assistant")) for a, _ in runs)
    pad = special_token_ids(tok)[PAD]
    assert [(length, clip) for _, length, clip in rendered.audio_spans] == [(2, 0), (3, 1), (4, 2)]
    for start, length, _ in rendered.audio_spans:
        assert rendered.input_ids[start:start + length] == [pad] * length
        assert rendered.labels[start:start + length] == [IGNORE_INDEX] * length
    assert rendered.input_ids.count(pad) == 9


def test_prompt_is_the_training_sequence_up_to_the_last_answer(tok, fixture_samples):
    for sample in [*fixture_samples, multi_turn_sample()]:
        tokens = [3] * len(sample.audio)
        full = render(sample, tok, tokens)
        prompt = render(sample, tok, tokens, prompt_only=True)
        last_answer = supervised_runs(full)[-1][0]
        assert prompt.input_ids == full.input_ids[:last_answer], sample.key
        assert prompt.labels == [IGNORE_INDEX] * len(prompt.input_ids)
        assert prompt.audio_spans == full.audio_spans
        assert tok.decode(prompt.input_ids).endswith(header("assistant"))


def test_multi_turn_prompt_keeps_earlier_answers_as_context(tok):
    prompt = render(multi_turn_sample(), tok, [2, 3, 4], prompt_only=True)
    decoded = tok.decode(prompt.input_ids)
    assert "The second clip is louder." + EOT in decoded
    assert decoded.endswith(header("user") + audio(4) + "Last: 这个声音听起来怎么样？" + EOT + header("assistant"))
    assert "很高兴" not in decoded


def test_prompt_longer_than_max_length_is_reported(tok, fixture_samples):
    sample = first_of(fixture_samples, "text_audio")
    length = len(render(sample, tok, [3], prompt_only=True).input_ids)
    assert len(render(sample, tok, [3], max_length=length, prompt_only=True).input_ids) == length
    with pytest.raises(PromptTooLong, match=sample.key):
        render(sample, tok, [3], max_length=length - 1, prompt_only=True)


def test_truncation_after_audio_keeps_the_span(tok, fixture_samples):
    sample = first_of(fixture_samples, "text_audio")
    full = render(sample, tok, [6])
    cut = render(sample, tok, [6], max_length=len(full.input_ids) - 1)
    assert cut.input_ids == full.input_ids[:-1]
    assert cut.labels == full.labels[:-1]
    assert cut.audio_spans == full.audio_spans
    assert render(sample, tok, [6], max_length=len(full.input_ids)) == full


@pytest.mark.parametrize("offset", [-3, 0, 2, 6])
def test_truncation_into_or_before_audio_raises(tok, fixture_samples, offset):
    """Cuts before the span, at its first pad, inside it, or between the pads and audio_end."""
    sample = first_of(fixture_samples, "text_audio")
    (start, _, _), = render(sample, tok, [6]).audio_spans
    with pytest.raises(TruncatedAudio, match=sample.key):
        render(sample, tok, [6], max_length=start + offset)


def test_truncation_leaving_no_supervised_token_raises(tok, fixture_samples):
    sample = first_of(fixture_samples, "text_audio")
    full = render(sample, tok, [6])
    first_supervised, _ = supervised_runs(full)[0]
    with pytest.raises(NoSupervisedTokens, match=sample.key):
        render(sample, tok, [6], max_length=first_supervised)


def test_multi_turn_truncation(tok):
    sample = multi_turn_sample()
    full = render(sample, tok, [2, 3, 4])
    last_start, _ = supervised_runs(full)[-1]
    cut = render(sample, tok, [2, 3, 4], max_length=last_start + 1)
    assert len(supervised_runs(cut)) == 3
    assert cut.audio_spans == full.audio_spans
    second_start, _ = supervised_runs(full)[1]
    with pytest.raises(TruncatedAudio, match="multi-test-00000007.*clip 2"):
        render(sample, tok, [2, 3, 4], max_length=second_start + 1)


def test_record_system_overrides_default(tok):
    sample = make_sample([Turn("user", "Hi.", ((3, 0),)), Turn("assistant", "Hello.")], clips=1,
                         system="Be brief.")
    text = tok.decode(render(sample, tok, [1]).input_ids)
    assert text.startswith(BOS + header("system") + "Be brief." + EOT + header("user"))
    assert LLASO_SYSTEM_PROMPT not in text


def test_no_system_turn(tok):
    sample = make_sample([Turn("user", "Hi.", ((3, 0),)), Turn("assistant", "Hello.")], clips=1)
    rendered = render(sample, tok, [1], fmt=ChatFormat(system_prompt=None))
    assert tok.decode(rendered.input_ids) == (
        BOS + header("user") + "Hi." + audio(1) + EOT + header("assistant") + "Hello." + EOT
    )
    custom = render(sample, tok, [1], fmt=ChatFormat(system_prompt="Short answers."))
    assert tok.decode(custom.input_ids).startswith(BOS + header("system") + "Short answers." + EOT)


def test_special_strings_in_text_stay_text(tok):
    sample = make_sample([Turn("user", "Say <|eot_id|> now.", ((0, 0),)),
                          Turn("assistant", "<|eot_id|>")], clips=1)
    rendered = render(sample, tok, [1], fmt=ChatFormat(system_prompt=None))
    eot = special_token_ids(tok)[EOT]
    assert rendered.input_ids.count(eot) == 2
    (start, end), = supervised_runs(rendered)
    assert tok.decode(rendered.input_ids[start:end]) == "<|eot_id|>" + EOT


def test_bad_audio_token_counts(tok):
    sample = multi_turn_sample()
    with pytest.raises(ValueError, match="3 clips"):
        render(sample, tok, [2, 3])
    with pytest.raises(ValueError, match="at least one"):
        render(sample, tok, [2, 0, 4])


def test_missing_special_token_is_named_and_can_be_added():
    tokenizer = tiny_tokenizer()
    fmt = ChatFormat(audio_pad="<|audio_pad|>")
    sample = make_sample([Turn("user", "Hi.", ((3, 0),)), Turn("assistant", "Hello.")], clips=1)
    with pytest.raises(ValueError, match=r"<\|audio_pad\|>"):
        render(sample, tokenizer, [2], fmt=fmt)
    size = len(tokenizer)
    ensure_chat_tokens(tokenizer, fmt)
    ensure_chat_tokens(tokenizer, fmt)
    assert len(tokenizer) == size + 1
    rendered = render(sample, tokenizer, [2], fmt=fmt)
    pad = tokenizer.convert_tokens_to_ids("<|audio_pad|>")
    (start, length, _), = rendered.audio_spans
    assert rendered.input_ids[start:start + length] == [pad, pad]


def test_other_format_without_begin_or_audio_wrappers():
    fmt = ChatFormat(begin="", header="<|im_start|>{role}\n", end_of_turn="<|im_end|>",
                     audio_start="", audio_end="", audio_pad="<|AUDIO|>", system_prompt=None)
    tokenizer = tiny_tokenizer(fmt=fmt)
    sample = make_sample([Turn("user", "Hi.", ((3, 0),)), Turn("assistant", "Hello.")], clips=1)
    rendered = render(sample, tokenizer, [2], fmt=fmt)
    assert tokenizer.decode(rendered.input_ids) == (
        "<|im_start|>user\nHi.<|AUDIO|><|AUDIO|><|im_end|><|im_start|>assistant\nHello.<|im_end|>"
    )
    (start, _, _), = rendered.audio_spans
    with pytest.raises(TruncatedAudio):
        render(sample, tokenizer, [2], fmt=fmt, max_length=start + 1)
    cut = render(sample, tokenizer, [2], fmt=fmt, max_length=len(rendered.input_ids) - 1)
    assert cut.audio_spans == rendered.audio_spans


def test_tiny_tokenizer_is_deterministic(tok):
    again = tiny_tokenizer()
    assert again.get_vocab() == tok.get_vocab()
    assert 900 <= len(tok) <= 1100
    specials = ChatFormat().special_strings()
    assert [tok.convert_tokens_to_ids(s) for s in specials] == list(range(len(specials)))
    assert tok.pad_token_id is not None and tok.eos_token == EOT
    code = (
        "import hashlib, json; from llaso_data.stream.chat import tiny_tokenizer; "
        "v = tiny_tokenizer().get_vocab(); "
        "print(hashlib.sha256(json.dumps(sorted(v.items())).encode()).hexdigest())"
    )
    other_process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert other_process.stdout.strip() == vocab_digest(tok)


def test_template_overhead_is_what_rendering_adds_to_the_text_and_audio(tok, fixture_samples):
    """Per sample and per clip, the tokens the planner adds to a sample's text and audio
    estimate are exactly what rendering a one-question, one-answer conversation adds."""
    per_sample, per_clip = template_overhead(tok)
    assert per_clip == 2 and per_sample > len(tok(ChatFormat().system_prompt, add_special_tokens=False)["input_ids"])
    for modality in ("text_audio", "audio_text", "pure_audio"):
        sample = dataclasses.replace(first_of(fixture_samples, modality), system=None)
        audio = [5 + clip for clip in range(len(sample.audio))]
        texts = [s for turn in sample.turns for s in turn.segments() if isinstance(s, str)]
        text = sum(len(ids) for ids in tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"])
        rendered = render(sample, tok, audio)
        assert len(rendered.input_ids) == text + sum(audio) + per_sample + per_clip * len(audio)
