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
C-speed ``str.isascii()`` and three substring checks: that is the fast path of every scan.
Non-ASCII text that is already NFKC and holds none of the characters above (accented Latin,
CJK, emoji) costs one regex pass and stays identity as well.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass, field

__all__ = ["Normalized", "normalize", "needs_normalizing"]

_AT = r"%40|&#0*64;|&#[xX]0*40;|&commat;"  # ASCII spellings of '@'
_AT_RX = re.compile(_AT)
# Text that is not NFKC already: every non-ASCII run is normalized character by character.
_INTERESTING = re.compile(r"[^\x00-\x7f]+|" + _AT)
# Text that is NFKC already: only these characters change - format characters, non-ASCII
# digits, and dashes or unusual spaces next to a digit (an em dash in prose is left alone).
# One character class, so that re skips ahead at C speed.
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
# Astral characters (emoji, ...) are matched as one range and sorted out in Python: a class
# of BMP characters only compiles to a bitmap, many ranges above it to a slow linear list.
_DIGITS = "".join(f"{chr(z)}-{chr(z + 9)}" for z in DIGIT_ZEROS if z < 0x10000)
_SUSPECT = re.compile(f"[{_FORMAT}{_SEP}{_DIGITS}]|[\U00010000-\U0010ffff]")
_SEPARATORS = frozenset(chr(c) for c in range(0x2010, 0x2016)) | frozenset(
    "\u2212\ufe58\ufe63\uff0d\u058a\u05be\u00a0\u1680\u202f\u205f\u3000"
) | frozenset(chr(c) for c in range(0x2000, 0x200B))
_CHAR_CACHE: dict[str, str] = {}


def _char(c: str) -> str:
    """The normalized form of one non-ASCII character ('' when it is removed)."""
    out = _CHAR_CACHE.get(c)
    if out is not None:
        return out
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
    if len(_CHAR_CACHE) < 65536:
        _CHAR_CACHE[c] = out
    return out


def needs_normalizing(text: str) -> bool:
    """False for plain ASCII without an encoded '@': such text is scanned as it is."""
    return not text.isascii() or "%40" in text or "&#" in text or "&commat;" in text


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


def _replacements(text: str) -> list[tuple[int, int, str]]:
    """(start, end, replacement) for every original unit that normalization changes."""
    if text.isascii():
        return [(m.start(), m.end(), "@") for m in _AT_RX.finditer(text)]
    out: list[tuple[int, int, str]] = []
    if unicodedata.is_normalized("NFKC", text):
        last = len(text) - 1
        for m in _SUSPECT.finditer(text):
            a = m.start()
            c = m.group()
            if c >= "\U00010000" and not (c.isdecimal() or unicodedata.category(c) == "Cf"):
                continue  # emoji and other astral characters
            if c in _SEPARATORS and not (
                (a > 0 and text[a - 1].isdecimal()) or (a < last and text[a + 1].isdecimal())
            ):
                continue  # a dash or space that separates no digits
            out.append((a, a + 1, _char(c)))
        if "%40" in text or "&#" in text or "&commat;" in text:
            out.extend((m.start(), m.end(), "@") for m in _AT_RX.finditer(text))
            out.sort()
        return out
    for m in _INTERESTING.finditer(text):
        a, b = m.span()
        run = m.group()
        if run[0] < "\x80":
            out.append((a, b, "@"))
            continue
        for i, c in enumerate(run):
            new = _char(c)
            if new != c:
                out.append((a + i, a + i + 1, new))
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
