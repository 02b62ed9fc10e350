"""The one normalised sample type, and the rejection that replaces it for bad input.

Every input record becomes exactly one :class:`Sample` or one :class:`Rejection`.
Samples and turns are plain (non-frozen) slotted dataclasses because ingestion builds
millions of them (a frozen dataclass costs ~2 us more per instance); treat them as
immutable. Both serialise to plain JSON (``to_json``/``from_json``) so they can travel through
Ray, sit in a tar shard as ``<key>.json`` and come back without pickling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ROLES = ("user", "assistant")


@dataclass(slots=True)
class Turn:
    """One conversation turn.

    ``text`` is the turn text with every ``<audio>`` placeholder removed.
    ``clips`` says where each audio clip sits: ``(char_offset, clip_index)`` pairs, where
    ``char_offset`` indexes into ``text`` and ``clip_index`` into ``Sample.audio``.
    """

    role: str
    text: str
    clips: tuple[tuple[int, int], ...] = ()

    def segments(self) -> list[str | int]:
        """The turn as an ordered list of text pieces (str) and clip indices (int)."""
        pieces: list[str | int] = []
        cursor = 0
        for offset, clip in self.clips:
            if offset > cursor:
                pieces.append(self.text[cursor:offset])
            pieces.append(clip)
            cursor = offset
        if cursor < len(self.text):
            pieces.append(self.text[cursor:])
        return pieces


@dataclass(slots=True)
class Sample:
    """A normalised training/eval sample.

    Attributes:
        key: stable id, unique within a corpus; a valid WebDataset key (no dots).
        split: ``train`` | ``test`` | ``dev``.
        modality: ``text_audio`` | ``audio_text`` | ``pure_audio``.
        task: task abbreviation (see ``llaso_data.tasks``) or the raw stem for unknown stems.
        category: ``linguistic`` | ``semantic`` | ``paralinguistic`` | ``unknown``.
        source: path of the source file relative to the corpus root (POSIX separators).
        ordinal: 0-based position of the record in its source file.
        turns: the conversation, user first, alternating, assistant last.
        audio: normalised relative audio paths (POSIX), one per placeholder, in order.
        label: text of the last assistant turn.
        system: a per-record system prompt (LLaSM ``instruction``), if any.
        provenance: every other field of the raw record, verbatim and in original order
            (``id``, ``index``, ``metadata``, ``meta-data``, ...). Never shown to a model.
        durations: seconds of each clip, known once the audio has been read (conversion);
            empty before that.
    """

    key: str
    split: str
    modality: str
    task: str
    category: str
    source: str
    ordinal: int
    turns: tuple[Turn, ...]
    audio: tuple[str, ...]
    label: str
    system: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    durations: tuple[float, ...] = ()

    @property
    def stratum(self) -> tuple[str, str, str]:
        """``(split, modality, task)``: the unit shards are grouped by."""
        return (self.split, self.modality, self.task)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "split": self.split,
            "modality": self.modality,
            "task": self.task,
            "category": self.category,
            "source": self.source,
            "ordinal": self.ordinal,
            "turns": [
                {"role": t.role, "text": t.text, "clips": [list(c) for c in t.clips]}
                for t in self.turns
            ],
            "audio": list(self.audio),
            "label": self.label,
            "system": self.system,
            "provenance": self.provenance,
            "durations": list(self.durations),
        }

    def to_json(self) -> str:
        """Compact JSON; non-ASCII characters (U+0085, CJK, ...) are kept as they are."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Sample":
        return cls(
            key=data["key"],
            split=data["split"],
            modality=data["modality"],
            task=data["task"],
            category=data["category"],
            source=data["source"],
            ordinal=int(data["ordinal"]),
            turns=tuple(
                Turn(t["role"], t["text"], tuple((int(o), int(c)) for o, c in t["clips"]))
                for t in data["turns"]
            ),
            audio=tuple(data["audio"]),
            label=data["label"],
            system=data.get("system"),
            provenance=data.get("provenance") or {},
            durations=tuple(data.get("durations") or ()),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "Sample":
        return cls.from_dict(json.loads(text))


REJECT_REASONS: dict[str, str] = {
    "malformed_json": "the file is not valid JSON from this point (truncated or broken)",
    "undecodable_text": "the record's text is not valid UTF-8",
    "not_an_object": "the array element is not a JSON object",
    "missing_turns": "no conversation, or no assistant turn to learn from",
    "misordered_turns": "turns do not alternate user/assistant starting with the user",
    "bad_field_type": "a field has the wrong type (voice, conversations or a turn value)",
    "audio_count_mismatch": "the number of <audio> placeholders differs from the number of voice paths",
    "absolute_audio_path": "a voice path is absolute",
    "audio_path_escapes_root": "a voice path leaves the audio root",
    "empty_label": "the last assistant turn is empty",
    "audio_missing": "an audio file does not exist",
    "audio_undecodable": "an audio file cannot be decoded",
    "audio_empty": "an audio file has no samples",
    "audio_not_a_file": "an audio path names a folder, FIFO, socket or device, not a regular file",
    "audio_too_large": "an audio file is larger than the size bound (2 GiB)",
    "audio_unreadable": "an audio file exists but cannot be opened or read (permissions, I/O error)",
    "audio_invalid": "an audio file decodes to NaN or infinite samples",
    "record_error": "reading or converting the record raised an unexpected error (named in the detail)",
    "audio_ambiguous": "a voice path names a member that several audio archive parts hold",
    "archive_member_unreadable": "the archive member holding a clip is encrypted, uses a compression method "
                                 "other than stored or deflated, or fails its header, size or CRC-32 check",
}
"""Every reason a record can be rejected for, with what it means: the one catalogue that
readers, validation, conversion and the synthetic corpus's faults draw from."""


@dataclass(frozen=True)
class Rejection:
    """An input record that could not become a sample.

    Attributes:
        source: source file relative to the corpus root.
        ordinal: 0-based record position in the file (for a fault that ends a JSON array,
            the position the next record would have had).
        reason: a machine-readable reason (one of :data:`REJECT_REASONS`).
        detail: a human-readable explanation naming what is wrong.
        raw: the raw record text as far as it could be recovered (may be truncated).
        byte_offset: byte offset of the record (or the fault) in the source file, if known.
        key: the sample key the record would have had, when it got that far.
    """

    source: str
    ordinal: int
    reason: str
    detail: str
    raw: str = ""
    byte_offset: int | None = None
    key: str | None = None

    def __post_init__(self):
        if self.reason not in REJECT_REASONS:
            raise ValueError(f"unknown rejection reason {self.reason!r}; add it to REJECT_REASONS")

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ordinal": self.ordinal,
            "reason": self.reason,
            "detail": self.detail,
            "raw": self.raw,
            "byte_offset": self.byte_offset,
            "key": self.key,
        }

    def __str__(self) -> str:
        where = f"{self.source} record {self.ordinal}"
        if self.byte_offset is not None:
            where += f" (byte {self.byte_offset})"
        return f"{where}: {self.reason}: {self.detail}"
