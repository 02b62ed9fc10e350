"""The one chat-template renderer: a :class:`Sample` becomes token ids, loss labels and audio spans.

Ids and the loss mask are built together, piece by piece (torchtune / nanochat style), never by
rendering a string and re-tokenising it to find where the answer starts (LLaSO's way, which
silently masks whole samples when the two tokenisations disagree). Layout with the default
Llama-3 :class:`ChatFormat` (``S`` = supervised, ``.`` = ``IGNORE_INDEX``)::

    <|begin_of_text|>                                                             .
    <|start_header_id|>system<|end_header_id|>\\n\\n{system}<|eot_id|>               .
    <|start_header_id|>user<|end_header_id|>\\n\\n{text}{audio}{text}<|eot_id|>       .
    <|start_header_id|>assistant<|end_header_id|>\\n\\n                               .
    {answer}<|eot_id|>                                                            S
    ... further user / assistant rounds, the same way

where ``{audio}`` is ``<|reserved_special_token_0|>`` + ``audio_tokens[clip]`` x
``<|reserved_special_token_2|>`` + ``<|reserved_special_token_1|>``. The model replaces the
placeholder ids of each span with the clip's projected encoder embeddings.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

from llaso_data.records import Sample, Turn

IGNORE_INDEX = -100

LLASO_SYSTEM_PROMPT = (
    "You are a helpful language and speech assistant. You are able to understand the speech "
    "content that the user provides, and assist the user with a variety of tasks using natural "
    "language."
)

# Special tokens inside a header template are the ``<|...|>`` pieces.
_SPECIAL_PATTERN = re.compile(r"(<\|[^|]*\|>)")

# (kind, value, supervised): ("special", string), ("text", string) or ("audio", clip index).
_Piece = tuple[str, str | int, bool]

_TINY_PAD = "<|finetune_right_pad_id|>"
_TINY_VOCAB_SIZE = 1000
_TINY_CORPUS = (
    LLASO_SYSTEM_PROMPT,
    "Transcribe the spoken words from the following audio clip. Ensure the text matches exactly "
    "what was said, and return no other information.",
    "Please listen to the audio and transcribe what is being said. Return only the transcript.",
    "Identify the speaker's gender based on their vocal attributes. Choose from female or male.",
    "Detect the emotional tone in this speaker's voice. Return only one of these categories: "
    "neutrality, joy, surprise, sadness, anger, fear, or disgust.",
    "What accent is being used in this audio clip? Scottish, British, Irish, Indian, American, "
    "Canadian, South African, Australian, or New Zealand?",
    "Identify the pitch in the given audio sample and return its MIDI number between 0 and 127.",
    "Listen to the audio, transcribe it, and then for each word, rate accuracy, stress, and "
    "provide a total score from 1 to 10, all as integers.",
    "After his nap Timothy lazily stretched first one gray velvet foot then another, strolled "
    "to his plate, turning over the food carefully and selecting choice bits.",
    "For Timothy was a spoiled cat and he allowed no one to interfere; everybody waited upon him.",
    "The seven wonders of the ancient world are the Great Pyramid of Giza, the Colossus of "
    "Rhodes, the Lighthouse of Alexandria and the Hanging Gardens of Babylon.",
    "Climate change may drive over 120 million people into poverty by 2030, according to the "
    "World Bank. Low-lying islands and coastal communities are threatened by sea level rise.",
    "Here is a simple recipe: 4 tablespoons of flour, 2 tablespoons of sugar, 3 tablespoons of "
    "milk. Whisk until smooth, then microwave for 1 minute and 30 seconds.",
    "def remove_non_alphanumeric(string):\n    return ''.join(c for c in string if c.isalnum())",
    "SELECT SUM(price) FROM product WHERE year = 2024;",
    "Question: what is the speaker asking for? Answer: the speaker asks about the weather today.",
    "请听这段音频并转写说话人的内容。只返回转写文本，不要添加其他信息。",
    "你好，世界。我们今天学习语音识别和语言模型。这个声音听起来很高兴。",
    "说话人的情绪是什么？请从中性、快乐、惊讶、悲伤、愤怒、恐惧或厌恶中选择一个。",
    "北京是中国的首都。上海是一个国际大都市，人口超过两千万。",
    "今天天气很好，我们一起去公园散步吧。明天可能会下雨，记得带伞。",
)


@dataclass(frozen=True)
class ChatFormat:
    """How turns are wrapped. Default: Llama-3 headers.

    Attributes:
        begin: sequence start token; ``""`` for none.
        header: turn header text; ``{role}`` becomes ``system``/``user``/``assistant``; its
            ``<|...|>`` pieces are special tokens, the rest is encoded as text.
        end_of_turn: closes every turn; supervised at the end of assistant turns.
        audio_start: opens every audio span; ``""`` for none.
        audio_end: closes every audio span; ``""`` for none.
        audio_pad: placeholder id repeated once per audio embedding position.
        system_prompt: used when the sample has no system prompt; ``None`` = no system turn.
    """

    begin: str = "<|begin_of_text|>"
    header: str = "<|start_header_id|>{role}<|end_header_id|>\n\n"
    end_of_turn: str = "<|eot_id|>"
    audio_start: str = "<|reserved_special_token_0|>"
    audio_end: str = "<|reserved_special_token_1|>"
    audio_pad: str = "<|reserved_special_token_2|>"
    system_prompt: str | None = LLASO_SYSTEM_PROMPT

    def __post_init__(self) -> None:
        if "{role}" not in self.header:
            raise ValueError(f"ChatFormat.header must contain '{{role}}', got {self.header!r}")
        if not self.end_of_turn or not self.audio_pad:
            raise ValueError("ChatFormat.end_of_turn and ChatFormat.audio_pad must not be empty")

    def special_strings(self) -> tuple[str, ...]:
        """Every string that must be one token id, in a fixed order, without duplicates."""
        in_header = _SPECIAL_PATTERN.findall(self.header)
        strings = (self.begin, *in_header, self.end_of_turn,
                   self.audio_start, self.audio_end, self.audio_pad)
        return tuple(dict.fromkeys(s for s in strings if s))


@dataclass(frozen=True)
class Rendered:
    """One rendered sample (L = sequence length, A = number of audio spans).

    Attributes:
        input_ids: ``[L]`` token ids; audio positions hold the ``audio_pad`` id.
        labels: ``[L]`` the same ids where supervised (assistant content and its end-of-turn
            token), ``IGNORE_INDEX`` (-100) everywhere else. Not shifted.
        audio_spans: ``[A]`` ``(start, length, clip_index)`` in sequence order:
            ``input_ids[start:start + length]`` are the placeholders of clip ``clip_index``.
    """

    input_ids: list[int]
    labels: list[int]
    audio_spans: list[tuple[int, int, int]]


class TruncatedAudio(ValueError):
    """``max_length`` would cut inside, or drop, an audio span; the message names the sample key."""


class NoSupervisedTokens(ValueError):
    """The rendered (possibly truncated) sample has no supervised token; names the sample key."""


class PromptTooLong(ValueError):
    """A generation prompt longer than ``max_length``; names the sample key."""


def render(
    sample: Sample,
    tokenizer,
    audio_tokens: Sequence[int],
    fmt: ChatFormat = ChatFormat(),
    max_length: int | None = None,
    prompt_only: bool = False,
) -> Rendered:
    """Render ``sample`` into ids, labels and audio spans.

    With ``prompt_only`` the last assistant turn (the answer) is left out and the sequence
    ends with an open assistant header: the prompt a model continues when it generates. Its
    labels are all ``IGNORE_INDEX`` and it is never truncated.

    Args:
        sample: the conversation; ``sample.system`` (if non-empty) replaces
            ``fmt.system_prompt``.
        tokenizer: a Hugging Face tokenizer holding every ``fmt.special_strings()`` as one token
            (see :func:`ensure_chat_tokens`). Text is encoded without added special tokens, and
            special-token strings inside text stay text.
        audio_tokens: ``[C]`` embedding positions per clip, ``C = len(sample.audio)``.
        fmt: the chat format.
        max_length: if given and the sequence is longer, keep the first ``max_length`` tokens.
            Truncation only drops text after the last audio span (its ``audio_end`` included);
            anything shorter raises :class:`TruncatedAudio`.

    Raises:
        ValueError: a special string is not one token of ``tokenizer``, or ``audio_tokens``
            does not match the sample's clips.
        TruncatedAudio: ``max_length`` would cut into or drop an audio span.
        NoSupervisedTokens: nothing is left to supervise.
        PromptTooLong: a ``prompt_only`` sequence is longer than ``max_length``.
    """
    _check_audio_tokens(sample, audio_tokens)
    special_ids = special_token_ids(tokenizer, fmt)
    pieces = list(_prompt_pieces(sample, fmt) if prompt_only else _pieces(sample, fmt))
    encoded = iter(_encode_texts(tokenizer, [value for kind, value, _ in pieces if kind == "text"]))
    input_ids: list[int] = []
    labels: list[int] = []
    spans: list[tuple[int, int, int]] = []
    for kind, value, supervised in pieces:
        if kind == "audio":
            spans.append((len(input_ids), audio_tokens[value], value))
            chunk = [special_ids[fmt.audio_pad]] * audio_tokens[value]
        elif kind == "special":
            chunk = [special_ids[value]]
        else:
            chunk = next(encoded)
        input_ids.extend(chunk)
        labels.extend(chunk if supervised and not prompt_only else [IGNORE_INDEX] * len(chunk))
    rendered = Rendered(input_ids, labels, spans)
    if prompt_only:
        if max_length is not None and len(input_ids) > max_length:
            raise PromptTooLong(f"{sample.key}: the prompt has {len(input_ids)} tokens, "
                                f"more than max_length={max_length}")
        return rendered
    if max_length is not None and len(input_ids) > max_length:
        rendered = _truncate(rendered, max_length, sample.key, tail=1 if fmt.audio_end else 0)
    if all(label == IGNORE_INDEX for label in rendered.labels):
        raise NoSupervisedTokens(
            f"{sample.key}: no supervised token left in {len(rendered.input_ids)} tokens "
            f"(max_length={max_length})"
        )
    return rendered


def special_token_ids(tokenizer, fmt: ChatFormat = ChatFormat()) -> dict[str, int]:
    """``{special string: token id}`` for every ``fmt.special_strings()``.

    Raises ValueError naming the first string the tokenizer lacks as one token.
    """
    ids = {}
    for token in fmt.special_strings():
        token_id = _single_token_id(tokenizer, token)
        if token_id is None:
            raise ValueError(
                f"tokenizer has no single token for {token!r}; "
                "add it with llaso_data.stream.chat.ensure_chat_tokens (and resize the model's embeddings)"
            )
        ids[token] = token_id
    return ids


def ensure_chat_tokens(tokenizer, fmt: ChatFormat = ChatFormat()) -> None:
    """Add every ``fmt.special_strings()`` missing from ``tokenizer`` as a special token.

    Grows ``len(tokenizer)``: a model using it must resize its embeddings afterwards.
    """
    missing = [t for t in fmt.special_strings() if _single_token_id(tokenizer, t) is None]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)


def tiny_tokenizer(texts: Iterable[str] | None = None, fmt: ChatFormat = ChatFormat()):
    """A small byte-level BPE ``PreTrainedTokenizerFast`` trained from scratch, offline.

    Trained on ``texts`` (default: a built-in English + Chinese sample) up to ~1000 entries;
    ids ``0..k-1`` are ``fmt.special_strings()`` then ``<|finetune_right_pad_id|>`` (the pad
    token). Deterministic (same vocabulary and ids on every run) and fast (~20 ms to train).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [*fmt.special_strings(), _TINY_PAD]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(_TINY_CORPUS if texts is None else texts), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=fmt.begin or None,
        eos_token=fmt.end_of_turn,
        pad_token=_TINY_PAD,
        clean_up_tokenization_spaces=False,
    )


def _single_token_id(tokenizer, token: str) -> int | None:
    """The id of ``token`` if the tokenizer has it as one token, else None."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return token_id


def _check_audio_tokens(sample: Sample, audio_tokens: Sequence[int]) -> None:
    if len(audio_tokens) != len(sample.audio):
        raise ValueError(
            f"{sample.key}: {len(audio_tokens)} audio token counts for {len(sample.audio)} clips"
        )
    if any(count < 1 for count in audio_tokens):
        raise ValueError(
            f"{sample.key}: every clip needs at least one audio token, got {list(audio_tokens)}"
        )


def _pieces(sample: Sample, fmt: ChatFormat) -> Iterator[_Piece]:
    """The sample as pieces in sequence order: optional begin, optional system turn, turns."""
    yield from _special(fmt.begin)
    system = sample.system or fmt.system_prompt
    if system is not None:
        yield from _turn("system", [system], fmt)
    for turn in sample.turns:
        yield from _turn(turn.role, turn.segments(), fmt)


def _prompt_pieces(sample: Sample, fmt: ChatFormat) -> Iterator[_Piece]:
    """Every turn but the last (the assistant's answer), then an open assistant header."""
    if not sample.turns or sample.turns[-1].role != "assistant":
        raise ValueError(f"{sample.key}: the conversation does not end with an assistant turn")
    yield from _pieces(dataclasses.replace(sample, turns=sample.turns[:-1]), fmt)
    yield from _header("assistant", fmt)


def _header(role: str, fmt: ChatFormat) -> Iterator[_Piece]:
    """A turn header, never supervised."""
    for piece in _SPECIAL_PATTERN.split(fmt.header.format(role=role)):
        if _SPECIAL_PATTERN.fullmatch(piece):
            yield from _special(piece)
        elif piece:
            yield "text", piece, False


def _turn(role: str, segments: list[str | int], fmt: ChatFormat) -> Iterator[_Piece]:
    """Header (never supervised), content and end-of-turn (supervised for the assistant)."""
    yield from _header(role, fmt)
    supervised = role == "assistant"
    for segment in segments:
        if isinstance(segment, int):
            yield from _special(fmt.audio_start)
            yield "audio", segment, False
            yield from _special(fmt.audio_end)
        else:
            yield "text", segment, supervised
    yield from _special(fmt.end_of_turn, supervised)


def _special(token: str, supervised: bool = False) -> Iterator[_Piece]:
    if token:
        yield "special", token, supervised


def _encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text piece, encoded on its own, in one batched call."""
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _truncate(rendered: Rendered, max_length: int, key: str, tail: int) -> Rendered:
    """Keep the first ``max_length`` tokens unless that cuts into or drops an audio span
    (its ``tail`` closing tokens included)."""
    for start, length, clip in rendered.audio_spans:
        if start + length + tail > max_length:
            raise TruncatedAudio(
                f"{key}: max_length={max_length} cuts audio clip {clip} (placeholders "
                f"{start}..{start + length - 1}) of a {len(rendered.input_ids)}-token sequence"
            )
    return Rendered(
        rendered.input_ids[:max_length], rendered.labels[:max_length], rendered.audio_spans
    )


def template_overhead(tokenizer, fmt: ChatFormat = ChatFormat()) -> tuple[int, int]:
    """Tokens ``fmt`` adds to a sample besides its turns' text and audio positions, as
    ``(per sample, per clip)``: per sample, the begin token, the default system turn and the
    headers and end-of-turn tokens of one user and one assistant turn (each further turn
    adds its own header and end-of-turn; a sample's own system prompt replaces the
    default's); per clip, its audio delimiters."""

    def length(clips: int) -> int:
        user = Turn("user", "", tuple((0, clip) for clip in range(clips)))
        sample = Sample(key="template", split="", modality="", task="", category="", source="", ordinal=0,
                        turns=(user, Turn("assistant", "")), audio=("",) * clips, label="")
        return len(render(sample, tokenizer, [1] * clips, fmt).input_ids) - clips  # less the one position each

    bare = length(0)
    return bare, length(1) - bare


def renderer(tokenizer, fmt: ChatFormat = ChatFormat(), max_length: int | None = None,
             prompt_only: bool = False) -> Callable[[Sample, Sequence[int]], Rendered]:
    """``render`` bound to a tokenizer and format: the ``render`` hook of
    :class:`llaso_data.stream.ShardStream` (``prompt_only`` for generation)."""

    def bound(sample: Sample, audio_tokens: Sequence[int]) -> Rendered:
        return render(sample, tokenizer, audio_tokens, fmt, max_length, prompt_only)

    return bound
