"""Undo the cheap disguises of PII before the detectors look, keeping a map to the original.

One pass over the text:

* NFKC per character (fullwidth ``４１１１`` and ``＠``, circled digits, compatibility forms);
* format characters removed: zero-width space/joiners, word joiner, BOM, soft hyphen and the
  bidi controls (Unicode category ``Cf``);
* every Unicode decimal digit (Arabic-Indic ``٤``, Devanagari ``४``, ...) to its ASCII digit;
* every dash (category ``Pd``, minus sign) to ``-`` and every space separator (``Zs``: NBSP,
  thin and narrow spaces) to `` ``, so digit groups use the separators the detectors know;
* ``@`` written as ``%40``, ``&#64;``, ``&#x40;`` or ``&commat;`` decoded.

Offsets found in the normalized text are mapped back with :meth:`Normalized.original_span`,
so a redaction replaces exactly the original characters, the removed ones inside included.

Plain ASCII text with none of the encoded forms is returned as it is (``identity``), after a
C-speed ``str.isascii()`` and a look for ``%`` and ``&``: that is the fast path of every scan.
Other text costs one regex pass over a character class of everything that may change (built
once per process, a few milliseconds; windowed on long texts, see
:mod:`iron_sdk.safety.windows`), plus a little Python per changed character; accented
Latin, CJK or emoji alone leave it identity.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import cache

from iron_sdk.safety.windows import finditer

__all__ = ["Normalized", "normalize", "needs_normalizing"]

_AT = r"%40|&#0*64;|&#[xX]0*40;|&commat;"  # ASCII spellings of '@'
_AT_RX = re.compile(_AT)
# Characters that normalization may change besides those NFKC changes: format characters,
# dashes and unusual spaces (changed only next to a digit), non-ASCII digits.
_FORMAT = (
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064"
    "\u2066-\u206f\ufeff\ufff9-\ufffb"
)
_SEP = (
    "\u2010-\u2015\u2212\ufe58\ufe63\uff0d\u058a\u05be"
    "\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"
)
# The zero of every block of non-ASCII decimal digits (Unicode category Nd; each block holds
# 0-9 in order). tests/test_safety_normalize.py checks this list against unicodedata.
DIGIT_ZEROS = (
    0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6,
    0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50,
    0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10,
    0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650,
    0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0, 0x16B50,
    0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
)
_DIGITS = "".join(f"{chr(z)}-{chr(z + 9)}" for z in DIGIT_ZEROS if z < 0x10000)


@cache
def _candidates() -> re.Pattern[str]:
    """Every character normalization may change, as one character class: the BMP characters
    NFKC changes (found once per process, a few milliseconds), the ones above, and any astral
    character (emoji are sorted out in Python). A class of BMP characters compiles to a
    bitmap, so re skips through prose at C speed."""
    ranges: list[list[int]] = []
    for c in range(0xA0, 0x10000):
        if 0xD800 <= c < 0xE000 or unicodedata.is_normalized("NFKC", chr(c)):
            continue
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    nfkc = "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                   for a, b in ranges)
    return re.compile(f"[{nfkc}{_FORMAT}{_SEP}{_DIGITS}\U00010000-\U0010ffff]")


_SEPARATORS = frozenset(chr(c) for c in range(0x2010, 0x2016)) | frozenset(
    "\u2212\ufe58\ufe63\uff0d\u058a\u05be\u00a0\u1680\u202f\u205f\u3000"
) | frozenset(chr(c) for c in range(0x2000, 0x200B))
_CHAR_CACHE: dict[str, str] = {}


def _char(c: str) -> str:
    """The normalized form of one non-ASCII character ('' when it is removed)."""
    cat = unicodedata.category(c)
    if cat == "Cf":
        out = ""
    elif cat == "Nd":
        out = str(unicodedata.digit(c))
    elif cat == "Pd" or c == "\u2212":
        out = "-"
    elif cat == "Zs":
        out = " "
    else:
        out = unicodedata.normalize("NFKC", c)
        if not out.isascii():  # e.g. NFKC kept a non-ASCII digit inside a longer form
            out = "".join(str(unicodedata.digit(ch)) if unicodedata.category(ch) == "Nd"
                          else ch for ch in out)
    return out


def needs_normalizing(text: str) -> bool:
    """False for plain ASCII without an encoded '@': such text is scanned as it is."""
    return not text.isascii() or _encoded_at(text)


def _encoded_at(text: str) -> bool:
    """Whether ``text`` may spell '@' in ASCII (one memchr each when it has no '%' or '&';
    a search for a longer needle costs ~1 ms per MB)."""
    return ("%" in text and "%40" in text) or (
        "&" in text and ("&#" in text or "&commat;" in text))


_Edit = tuple[int, int, int, int]  # normalized [start, end) came from original [start, end)


@dataclass(frozen=True, slots=True)
class Normalized:
    """A normalized text and, unless ``identity``, the edits that made it from ``original``."""

    text: str
    original: str
    edits: list[_Edit] = field(default_factory=list, repr=False)  # sorted, non-overlapping
    _edit_starts: list[int] = field(default_factory=list, repr=False)

    @property
    def identity(self) -> bool:
        return self.text is self.original

    def _start(self, pos: int) -> int:
        i = bisect_right(self._edit_starts, pos) - 1
        if i < 0:
            return pos
        n_start, n_end, o_start, o_end = self.edits[i]
        return o_start if pos < n_end else o_end + pos - n_end

    def _end(self, pos: int) -> int:  # original end of the normalized character at pos
        i = bisect_right(self._edit_starts, pos) - 1
        if i < 0:
            return pos + 1
        n_start, n_end, o_start, o_end = self.edits[i]
        return o_end if pos < n_end else o_end + pos - n_end + 1

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The original offsets of the normalized ``text[start:end]`` (``end > start``); they
        include every character removed inside it."""
        if self.identity:
            return start, end
        return self._start(start), self._end(end - 1)


_KEEP = "\x00keep"  # _plan(): the character stays as it is


def _plan(c: str) -> str:
    """What a candidate character becomes (cached): its normalized form, or _KEEP for astral
    characters that NFKC keeps (emoji)."""
    out = _CHAR_CACHE.get(c)
    if out is None:
        if c >= "\U00010000" and unicodedata.is_normalized("NFKC", c) and not (
                c.isdecimal() or unicodedata.category(c) == "Cf"):
            out = _KEEP
        else:
            out = _char(c)
            if out == c:
                out = _KEEP
        if len(_CHAR_CACHE) < 65536:
            _CHAR_CACHE[c] = out
    return out


def _replacements(text: str) -> list[tuple[int, int, str]]:
    """(start, end, replacement) for every original character that normalization changes."""
    out: list[tuple[int, int, str]] = []
    if not text.isascii():
        last = len(text) - 1
        cached = _CHAR_CACHE.get
        for m in finditer(_candidates(), text):
            c = m.group()
            new = cached(c) or _plan(c)
            if new is _KEEP:
                continue
            a = m.start()
            if c in _SEPARATORS and not (
                (a > 0 and text[a - 1].isdecimal()) or (a < last and text[a + 1].isdecimal())
            ):
                continue  # a dash or space that separates no digits (an em dash in prose)
            out.append((a, a + 1, new))
    if _encoded_at(text):
        out.extend((m.start(), m.end(), "@") for m in finditer(_AT_RX, text))
        out.sort()
    return out


def normalize(text: str) -> Normalized:
    """Normalize ``text`` for detection (see the module docstring)."""
    if not needs_normalizing(text):
        return Normalized(text, text)
    replacements = _replacements(text)
    if not replacements:
        return Normalized(text, text)
    parts: list[str] = []
    edits: list[_Edit] = []
    cursor = 0
    length = 0  # of the normalized text so far
    for a, b, new in replacements:
        parts.append(text[cursor:a])
        length += a - cursor
        parts.append(new)
        edits.append((length, length + len(new), a, b))
        length += len(new)
        cursor = b
    parts.append(text[cursor:])
    return Normalized("".join(parts), text, edits, [e[0] for e in edits])
