"""Turn one raw record into a :class:`~llaso_data.records.Sample` or a
:class:`~llaso_data.records.Rejection`, never both and never neither.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llaso_data.ingest.paths import AudioPathError, normalise_audio_path
from llaso_data.ingest.readers import RawRecord
from llaso_data.records import Rejection, Sample, Turn
from llaso_data.tasks import MODALITIES, TASKS, StemInfo, modality_for_stem, parse_file_name

AUDIO_PLACEHOLDER = "<audio>"

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_STRUCTURAL_FIELDS = ("voice", "conversations", "instruction")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_CONVERSATION = "CONV"  # the task of a record with more than one exchange


@dataclass(frozen=True)
class FileContext:
    """What is known about every record of one source file.

    ``source`` is the file path relative to the corpus root; ``modality_folder`` is the
    modality named by a parent folder, or None when the layout has none; ``key_prefix``
    (stem, split and a hash of ``source``, then ``-``) makes sample keys unique within a
    corpus. ``task``, ``category`` and ``modality`` are worked out once per file: what
    each record gets unless it holds more than one exchange (``modality`` is None where
    the record decides it: a ``CONV`` stem outside a modality folder).
    """

    source: str
    stem: StemInfo
    modality_folder: str | None
    key_prefix: str
    task: str
    category: str
    modality: str | None

    @classmethod
    def for_path(cls, root: Path, path: Path) -> "FileContext":
        """Context for the annotation file ``path`` under the corpus folder ``root``.

        The modality is the nearest enclosing folder named after one, the root included
        (so a single file inside ``text_audio/`` still knows its modality).
        """
        relative = path.relative_to(root)
        folders = (root.name, *relative.parts[:-1])
        folder = next((p for p in reversed(folders) if p in MODALITIES), None)
        # A name that is not UTF-8 (bytes kept as lone surrogates) is shown escaped.
        source = relative.as_posix().encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        stem = parse_file_name(path.name)
        digest = hashlib.sha1(source.encode("utf-8")).hexdigest()[:8]
        key_prefix = f"{_KEY_UNSAFE.sub('-', stem.stem)}-{stem.split}-{digest}-"
        category = TASKS[stem.task].category if stem.task in TASKS else stem.category
        modality = folder or (None if stem.task == _CONVERSATION else modality_for_stem(stem.stem))
        return cls(source, stem, folder, key_prefix, stem.task, category, modality)


class _Reject(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def normalise_record(raw: RawRecord, context: FileContext) -> Sample | Rejection:
    """Validate one raw record of a file and build its sample, or say why not."""
    key = context.key_prefix + "%08d" % raw.ordinal
    if raw.error is not None:
        reason, detail = raw.error
        return Rejection(context.source, raw.ordinal, reason, detail, raw.raw, raw.byte_offset, key)
    try:
        return _build_sample(raw.value, context, raw.ordinal, key)
    except _Reject as rejected:
        return Rejection(context.source, raw.ordinal, rejected.reason, rejected.detail,
                         raw.raw, raw.byte_offset, key)


def _build_sample(value: Any, context: FileContext, ordinal: int, key: str) -> Sample:
    """The sample of one parsed record (this runs once per record: keep it lean)."""
    if not isinstance(value, dict):
        raise _Reject("not_an_object", f"expected a JSON object, found {type(value).__name__}")
    system, turns, placeholders = _parse_turns(value)
    instruction = value.get("instruction")
    if isinstance(instruction, str) and instruction.strip():
        system = instruction
    audio = _parse_voice(value.get("voice"))
    if placeholders != len(audio):
        raise _Reject("audio_count_mismatch",
                      f"{placeholders} <audio> placeholder(s) but {len(audio)} voice path(s)")
    label = turns[-1].text
    if not label.strip():
        raise _Reject("empty_label", "the last assistant turn is empty")
    if len(turns) > 2:
        task, category = _CONVERSATION, TASKS[_CONVERSATION].category
    else:
        task, category = context.task, context.category
    if task == _CONVERSATION and context.modality_folder is None:
        modality = _conversation_modality(turns)
    else:
        modality = context.modality
    provenance = value.copy()  # every other field, in its original order
    for name in _STRUCTURAL_FIELDS:
        provenance.pop(name, None)
    return Sample(key, context.stem.split, modality, task, category, context.source, ordinal,
                  turns, audio, label, system, provenance)


def _parse_turns(value: dict[str, Any]) -> tuple[str | None, tuple[Turn, ...], int]:
    """Returns (system prompt, turns, number of audio placeholders)."""
    conversations = value.get("conversations")
    if not conversations:
        raise _Reject("missing_turns", "the record has no conversations")
    if type(conversations) is not list:
        raise _Reject("bad_field_type", f"conversations is a {type(conversations).__name__}, not a list")
    system = None
    turns: list[Turn] = []
    clips = 0
    for index, entry in enumerate(conversations):
        if type(entry) is not dict:
            raise _Reject("bad_field_type", f"turn {index} is a {type(entry).__name__}, not an object")
        role_name = entry.get("from") or entry.get("role")
        text = entry["value"] if "value" in entry else entry.get("content")
        if type(text) is not str:
            raise _Reject("bad_field_type", f"turn {index} value is a {type(text).__name__}, not a string")
        if index == 0 and role_name == "system":
            system = text
            continue
        expected = "assistant" if len(turns) & 1 else "user"
        if _ROLES.get(role_name) != expected:
            raise _Reject("misordered_turns", f"turn {index} has role {role_name!r}, expected {expected}")
        if AUDIO_PLACEHOLDER in text:
            text, positions = _split_placeholders(text, clips)
            turns.append(Turn(expected, text, positions))
            clips += len(positions)
        else:
            turns.append(Turn(expected, text))
    if not turns or turns[-1].role != "assistant":
        if len(turns) <= 1:
            raise _Reject("missing_turns", "the conversation has no assistant turn")
        raise _Reject("misordered_turns", "the conversation ends with a user turn")
    return system, tuple(turns), clips


def _split_placeholders(text: str, first_clip: int) -> tuple[str, tuple[tuple[int, int], ...]]:
    """Remove every ``<audio>``; returns the clean text and a ``(char_offset, clip_index)``
    pair per placeholder, clips numbered from ``first_clip``."""
    pieces = text.split(AUDIO_PLACEHOLDER)
    if len(pieces) == 2:  # the usual single clip
        head, tail = pieces
        return head + tail, ((len(head), first_clip),)
    clips, cursor = [], 0
    for clip, piece in enumerate(pieces[:-1], first_clip):
        cursor += len(piece)
        clips.append((cursor, clip))
    return "".join(pieces), tuple(clips)


def _parse_voice(voice: Any) -> tuple[str, ...]:
    """Normalised voice paths; a wrong type anywhere is reported before a bad path."""
    if voice is None:
        return ()
    paths = [voice] if isinstance(voice, str) else voice
    if not isinstance(paths, list):
        raise _bad_voice(voice)
    for path in paths:  # a loop, not all(<generator>): this runs once per record
        if not isinstance(path, str):
            raise _bad_voice(voice)
    try:
        return tuple(map(normalise_audio_path, paths))
    except AudioPathError as error:
        raise _Reject(error.reason, str(error)) from None


def _bad_voice(voice: Any) -> _Reject:
    return _Reject("bad_field_type", f"voice must be a string or a list of strings, found {voice!r:.120}")


def _conversation_modality(turns: tuple[Turn, ...]) -> str:
    """Modality of a conversation outside a modality folder: the shape of its first user turn."""
    first = turns[0]
    if first.clips and not first.text.strip():
        return "pure_audio"
    if first.clips and first.clips[0][0] == 0:
        return "audio_text"
    return "text_audio"
