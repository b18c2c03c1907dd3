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
from dataclasses import dataclass, field

__all__ = ["Normalized", "normalize", "needs_normalizing"]

# Non-ASCII runs and the ASCII spellings of '@' (percent-encoding and HTML references).
_INTERESTING = re.compile(r"[^\x00-\x7f]+|%40|&#0*64;|&#[xX]0*40;|&commat;")
# Inside a non-ASCII run: the characters the per-character pass would change even though the
# run is NFKC already (format characters, non-ASCII digits, dashes, unusual spaces).
_RUN_SPECIAL = re.compile(
    r"[\u00ad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064"
    r"\u2066-\u206f\ufeff\ufff9-\ufffb\u2010-\u2015\u2212\ufe58\ufe63\uff0d\u058a\u05be"
    r"\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]|\d"
)
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


@dataclass(frozen=True, slots=True)
class Normalized:
    """A normalized text and, unless ``identity``, where each of its characters came from."""

    text: str
    original: str
    # starts[i]/ends[i]: the original characters [starts[i], ends[i]) produced text[i].
    starts: list[int] = field(default_factory=list, repr=False)
    ends: list[int] = field(default_factory=list, repr=False)

    @property
    def identity(self) -> bool:
        return self.text is self.original

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The original offsets of the normalized ``text[start:end]`` (``end > start``)."""
        if self.identity:
            return start, end
        return self.starts[start], self.ends[end - 1]

    def original_offset(self, pos: int) -> int:
        """The original offset of normalized position ``pos`` (``len(text)`` maps to the end)."""
        if self.identity:
            return pos
        return self.starts[pos] if pos < len(self.starts) else len(self.original)


def normalize(text: str) -> Normalized:
    """Normalize ``text`` for detection (see the module docstring)."""
    if not needs_normalizing(text):
        return Normalized(text, text)
    parts: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    cursor = 0
    changed = False
    for m in _INTERESTING.finditer(text):
        a, b = m.span()
        run = m.group()
        if run[0] < "\x80":  # an encoded '@'
            replacement = [("@", a, b)]
        elif unicodedata.is_normalized("NFKC", run) and _RUN_SPECIAL.search(run) is None:
            continue  # unchanged: copied with the ASCII around it
        else:
            replacement = [(_char(c), a + i, a + i + 1) for i, c in enumerate(run)]
        if cursor < a:
            parts.append(text[cursor:a])
            starts.extend(range(cursor, a))
            ends.extend(range(cursor + 1, a + 1))
        for out, s, e in replacement:
            if out != text[s:e]:
                changed = True
            parts.append(out)
            starts.extend([s] * len(out))
            ends.extend([e] * len(out))
        cursor = b
    if not changed:
        return Normalized(text, text)
    parts.append(text[cursor:])
    starts.extend(range(cursor, len(text)))
    ends.extend(range(cursor + 1, len(text) + 1))
    return Normalized("".join(parts), text, starts, ends)
