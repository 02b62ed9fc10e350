"""Waveforms for the synthetic LLaSO corpus: sounds whose content determines the label.

Two kinds of sound:

* :class:`Tone`: a harmonic tone at a fundamental frequency (Hz). Classification labels
  pick the fundamental with :func:`class_hz`, pitch labels with :func:`midi_hz`, velocity
  labels pick the amplitude.
* :class:`Speech`: spoken text. With ``espeak-ng`` on PATH it is real synthetic speech;
  otherwise every word becomes a short sine tone at :func:`word_hz` (a deterministic
  function of the word), so the audio still determines the transcript.

Clips are written as wav (PCM 16), flac (PCM 16) or mp3 with ``soundfile``; the format
comes from the file suffix. libsndfile's LAME mp3 encoder is byte-deterministic for the
same input (checked with soundfile 0.14 / libsndfile 1.2.2), so mp3 files take part in the
byte-identity test like the others.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

FORMATS = {".wav": "WAV", ".flac": "FLAC", ".mp3": "MP3"}
RATES = (16000, 22050, 44100, 48000)
CHANNELS = (1, 2)
MIN_SECONDS = 1.0
"""Shortest clip (s); shorter sounds are padded with trailing near-silence."""
NOISE_STD = 0.003
"""Standard deviation of the additive white noise (full scale = 1)."""
WORD_SECONDS = 0.25
"""Length of one word tone on the tone path (s)."""
GAP_SECONDS = 0.05
"""Silence after each word tone (s)."""
FADE_SECONDS = 0.01
"""Linear fade in/out of every tone (s), to avoid clicks."""
ESPEAK_VOICES = {"en": "en", "zh": "cmn"}

_SUBTYPES = {"WAV": "PCM_16", "FLAC": "PCM_16", "MP3": None}
_TOKEN = re.compile(r"[\u3400-\u9fff]|[^\W\u3400-\u9fff]+(?:'[^\W\u3400-\u9fff]+)*")


@dataclass(frozen=True)
class Tone:
    """A harmonic tone: fundamental ``hz`` (Hz), length ``seconds`` (s), peak ``amplitude`` (full scale = 1)."""

    hz: float
    seconds: float
    amplitude: float = 0.5


@dataclass(frozen=True)
class Speech:
    """Spoken ``text`` in ``lang`` ("en" or "zh"), padded with near-silence to ``min_seconds`` (s).

    ``gains`` optionally scales each word's tone (tone path only; ignored by espeak-ng).
    """

    text: str
    lang: str = "en"
    gains: tuple[float, ...] = ()
    min_seconds: float = MIN_SECONDS


Sound = Tone | Speech


def class_hz(index: int) -> float:
    """Fundamental (Hz) that encodes class ``index``: 150 Hz * 2**(index/3), a major third apart."""
    return 150.0 * 2.0 ** (index / 3.0)


def midi_hz(midi: int) -> float:
    """Frequency (Hz) of a MIDI note number (A4 = 69 = 440 Hz)."""
    return 440.0 * 2.0 ** ((midi - 69) / 12.0)


def word_hz(word: str) -> float:
    """Tone frequency (Hz) that encodes ``word`` on the tone path.

    One of 64 bins, 1/16 octave apart, from 200 Hz to about 3.1 kHz, chosen by a SHA-256
    hash of the lower-cased word. Different words can share a bin; the synthetic corpus
    picks its transcript vocabulary so that its words do not.
    """
    digest = hashlib.sha256(word.lower().encode("utf-8")).digest()
    return 200.0 * 2.0 ** ((int.from_bytes(digest[:4], "big") % 64) / 16.0)


def words_of(text: str) -> list[str]:
    """The words a text is spoken as: runs of letters/digits, and single CJK characters."""
    return _TOKEN.findall(text)


def espeak_available() -> bool:
    """True when ``espeak-ng`` is on PATH (speech is then real synthetic speech)."""
    return shutil.which("espeak-ng") is not None


def render(sound: Sound, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Mono float32 samples of ``sound`` at ``rate`` (Hz), at least :data:`MIN_SECONDS` long."""
    if isinstance(sound, Tone):
        wave = _pad(_harmonic_tone(sound.hz, sound.seconds, rate) * sound.amplitude, rate, MIN_SECONDS)
    else:
        spoken = _espeak(sound.text, sound.lang, rate) if espeak_available() else _word_tones(sound, rate)
        wave = _pad(spoken, rate, max(MIN_SECONDS, sound.min_seconds))
    return (wave + rng.normal(0.0, NOISE_STD, wave.shape)).astype(np.float32)


def write_clip(path: Path, mono: np.ndarray, rate: int, channels: int) -> float:
    """Write ``mono`` to ``path`` (format from the suffix) with ``channels`` channels; return its length (s).

    The second channel of a stereo clip is the first at 0.8 gain, so a downmix keeps
    the spectrum.
    """
    data = mono[:, None] if channels == 1 else np.stack([mono, 0.8 * mono], axis=1)
    fmt = FORMATS[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.clip(data, -1.0, 1.0), rate, format=fmt, subtype=_SUBTYPES[fmt])
    return len(mono) / rate


def write_empty_wav(path: Path, rate: int = 16000) -> None:
    """Write a well-formed wav file with zero frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros((0, 1), dtype=np.float32), rate, format="WAV", subtype="PCM_16")


def write_garbage(path: Path, rng: np.random.Generator, size: int = 4096) -> None:
    """Write ``size`` random bytes (an undecodable 'audio' file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"JUNK" + rng.integers(0, 256, size, dtype=np.uint8).tobytes())


class FormatPlanner:
    """Chooses (sample rate Hz, channels) per clip.

    The first 8 clips of each format take the 4 rates x 2 channel counts in turn, so every
    combination appears as soon as a format has 8 clips; later clips use the source's
    native setting. Deterministic given the order of requests.
    """

    def __init__(self) -> None:
        self._todo = {fmt: list(itertools.product(RATES, CHANNELS)) for fmt in FORMATS.values()}

    def choose(self, suffix: str, native: tuple[int, int]) -> tuple[int, int]:
        """(rate, channels) for the next clip with file ``suffix`` whose source is ``native``."""
        todo = self._todo[FORMATS[suffix.lower()]]
        return todo.pop(0) if todo else native


def _harmonic_tone(hz: float, seconds: float, rate: int) -> np.ndarray:
    """Unit-peak tone (fundamental ``hz`` Hz, harmonics 2-4 at 1/h**2 below 0.45 * rate), faded."""
    t = np.arange(round(seconds * rate)) / rate
    weights = [(h, 1.0 / h**2) for h in range(1, 5) if h * hz < 0.45 * rate]
    wave = sum(w * np.sin(2 * np.pi * h * hz * t) for h, w in weights)
    return _fade(wave / sum(w for _, w in weights), rate)


def _word_tones(speech: Speech, rate: int) -> np.ndarray:
    """Tone path of :class:`Speech`: per word a sine at :func:`word_hz`, then a short gap."""
    gap = np.zeros(round(GAP_SECONDS * rate))
    pieces = []
    for i, word in enumerate(words_of(speech.text)):
        gain = speech.gains[i] if i < len(speech.gains) else 1.0
        t = np.arange(round(WORD_SECONDS * rate)) / rate
        pieces += [0.5 * gain * _fade(np.sin(2 * np.pi * word_hz(word) * t), rate), gap]
    return np.concatenate(pieces) if pieces else np.zeros(0)


def _espeak(text: str, lang: str, rate: int) -> np.ndarray:
    """Speak ``text`` with espeak-ng (voice from :data:`ESPEAK_VOICES`), resampled to ``rate`` Hz."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        cmd = ["espeak-ng", "-v", ESPEAK_VOICES[lang], "-w", str(wav), "--stdin"]
        subprocess.run(cmd, input=text.encode("utf-8"), check=True, capture_output=True)
        data, source_rate = sf.read(wav, dtype="float32", always_2d=True)
    return soxr.resample(data.mean(axis=1), source_rate, rate)


def _fade(wave: np.ndarray, rate: int) -> np.ndarray:
    """``wave`` with a linear fade of :data:`FADE_SECONDS` at both ends."""
    n = min(round(FADE_SECONDS * rate), len(wave) // 2)
    ramp = np.linspace(0.0, 1.0, n, endpoint=False)
    out = wave.copy()
    out[:n] *= ramp
    out[len(out) - n:] *= ramp[::-1]
    return out


def _pad(wave: np.ndarray, rate: int, seconds: float) -> np.ndarray:
    """``wave`` padded with trailing zeros to at least ``seconds`` (s)."""
    missing = round(seconds * rate) - len(wave)
    return np.concatenate([wave, np.zeros(missing)]) if missing > 0 else wave
