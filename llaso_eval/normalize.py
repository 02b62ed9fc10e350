"""Text normalisation applied to both reference and prediction before an error rate.

Word and character error rates (:func:`normalize_text`), in this order:

1. Unicode NFKC (full-width forms and ligatures become their plain letters);
2. case folding (``str.casefold``: ``"Timothy"`` and ``"timothy"`` are the same word);
3. apostrophes (``'``, U+2019, U+02BC) are deleted, so ``don't`` and ``dont`` match;
4. every other punctuation or symbol character (Unicode categories ``P*`` and ``S*``)
   becomes a space, so ``well-known`` is two words and ``end.`` is ``end``;
5. runs of whitespace collapse to one space; leading and trailing whitespace goes.

Numbers are left as written (``"2013"`` and ``"twenty thirteen"`` differ); LLaSO's ASR
references spell numbers as their sources do.

Character error rate is used for CJK text (:func:`is_cjk`): the same normalisation, then
all whitespace removed, one unit per character.

Phone error rate counts IPA symbols (:func:`phone_symbols`), not characters.
"""

from __future__ import annotations

import re
import unicodedata

_APOSTROPHES = str.maketrans("", "", "'\u2019\u02bc")
_WHITESPACE = re.compile(r"\s+")
_CJK = re.compile(
    "[\u3040-\u30ff"      # Hiragana, Katakana
    "\u3400-\u4dbf"       # CJK Extension A
    "\u4e00-\u9fff"       # CJK Unified Ideographs
    "\uac00-\ud7af"       # Hangul syllables
    "\uf900-\ufaff]"      # CJK Compatibility Ideographs
)
_STRESS_MARKS = {"\u02c8", "\u02cc"}  # ˈ ˌ
_TIE_BARS = {"\u0361", "\u035c"}      # t͡ʃ, k͜p: the next symbol joins the same phone


def normalize_text(text: str) -> str:
    """The WER normalisation of the module docstring; returns space-separated words."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    return _WHITESPACE.sub(" ", text).strip()


def normalize_characters(text: str) -> str:
    """The CER normalisation: :func:`normalize_text` with all whitespace removed."""
    return normalize_text(text).replace(" ", "")


def is_cjk(text: str) -> bool:
    """True when ``text`` holds at least one Chinese, Japanese or Korean character."""
    return _CJK.search(text) is not None


def phone_symbols(text: str) -> list[str]:
    """Split an IPA transcription into phone symbols, the units of the phone error rate.

    After Unicode NFD, each base character starts a symbol; combining marks (category
    ``Mn``, e.g. nasalisation) and modifier letters (``Lm``: length ``ː``, aspiration ``ʰ``,
    palatalisation ``ʲ``) attach to the symbol before them, and a tie bar joins the next
    character to it (``t͡ʃ`` is one symbol). Whitespace, punctuation (the syllable dot
    included) and the stress marks ``ˈ ˌ`` separate nothing and count for nothing, so
    ``"ˈkæt"``, ``"k æ t"`` and ``"kæt"`` all give ``["k", "æ", "t"]``. Letters are lower-cased.
    """
    symbols: list[str] = []
    join_next = False
    for char in unicodedata.normalize("NFD", text):
        category = unicodedata.category(char)
        if char in _STRESS_MARKS or char.isspace() or category[0] in "PSZC":
            join_next = False
            continue
        if symbols and (join_next or category in ("Mn", "Me", "Lm")):
            symbols[-1] += char
        else:
            symbols.append(char.lower())
        join_next = char in _TIE_BARS
    return symbols
