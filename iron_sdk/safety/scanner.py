"""The detector set one :class:`~iron_sdk.config.SafetyConfig` asks for.

Built-in detectors plus the config's custom patterns, on the normalized text, with the
allow-lists applied and the offsets mapped back to the original text::

    scanner = scanner_for(SafetyConfig(patterns=[...], allow={"support@company.com"}))
    findings = scanner.scan(text)

Scanners are cached per config (configs are frozen and hashable), so the regexes compile once.
Detector plugins (``iron_detect``) are given the config in force as an argument.

Long texts are searched a window at a time (:mod:`iron_sdk.safety.windows`) with exactly
re's matches, custom patterns included; the one exception is a custom pattern with an open
repeat (``+``, ``*``, ``{n,}``) and no literal first character, whose match attempts see
at most ``MAX_REACH`` (4096) characters past a window's edge.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from iron_sdk.safety.detectors import HOLDBACK, KINDS, Finding, detect, resolve
from iron_sdk.safety.normalize import normalize
from iron_sdk.safety.validators import VALIDATORS
from iron_sdk.safety.windows import finditer

if TYPE_CHECKING:
    from collections.abc import Callable

    from iron_sdk.config import SafetyConfig

__all__ = ["Scanner", "scanner_for"]

_BUILTIN = frozenset(KINDS)
_MAX_HOLDBACK = 1024  # a custom pattern may ask a stream to hold back at most this much
def _max_width(rx: re.Pattern[str]) -> int:
    """How many characters a match of ``rx`` can span (the built-in hold-back if unbounded)."""
    try:
        from re import _parser  # type: ignore[attr-defined]

        width = _parser.parse(rx.pattern, rx.flags).getwidth()[1]
    except Exception:  # a private module: fall back to the cap if it ever changes
        return _MAX_HOLDBACK
    return HOLDBACK if width >= _parser.MAXREPEAT else min(width, _MAX_HOLDBACK)


class Scanner:
    """Built-in and custom detectors with allow-lists, for one SafetyConfig."""

    def __init__(self, config: SafetyConfig) -> None:
        self.config = config
        self._custom: list[tuple[re.Pattern[str], str, Callable[[str], bool] | None]] = [
            (re.compile(p.regex, re.IGNORECASE if p.ignore_case else 0), p.kind,
             VALIDATORS[p.validator] if p.validator else None)
            for p in config.patterns
        ]
        self._allow = frozenset(v.casefold() for v in config.allow)
        self._allow_rx = [re.compile(rx) for rx in config.allow_patterns]
        self._kinds = config.kinds
        #: trailing characters a stream must hold back so that every finding is seen whole
        self.holdback = max([HOLDBACK, *(_max_width(rx) + 4 for rx, _, _ in self._custom)])

    def scan(self, text: str) -> list[Finding]:
        """Findings in ``text`` (original offsets), sorted, non-overlapping, allow-listed
        values and kinds the config turned off left out."""
        norm = normalize(text)
        ntext = norm.text
        found = detect(ntext)
        if self._custom:
            for rx, kind, validator in self._custom:
                for m in finditer(rx, ntext):
                    if m.end() > m.start() and (validator is None or validator(
                            m.group("value") if "value" in rx.groupindex else m.group())):
                        found.append(Finding(kind, m.start(), m.end()))
            found = resolve(found)
        if not found:
            return found
        if not norm.identity:
            found = [Finding(f.kind, *norm.original_span(f.start, f.end)) for f in found]
        return self.keep(text, found) if (self._allow or self._allow_rx or self._kinds) \
            else found

    def keep(self, text: str, findings: list[Finding]) -> list[Finding]:
        """``findings`` less allow-listed values and built-in kinds the config left out
        (``kinds`` selects built-in detectors; custom and plugin kinds always count)."""
        out = []
        for f in findings:
            if self._kinds is not None and f.kind in _BUILTIN and f.kind not in self._kinds:
                continue
            if (self._allow or self._allow_rx) and self.allowed(text[f.start:f.end]):
                continue
            out.append(f)
        return out

    def allowed(self, value: str) -> bool:
        """Whether ``value`` (as written, or normalized) is on an allow-list."""
        candidates = {value}
        norm = normalize(value)
        if not norm.identity:
            candidates.add(norm.text)
        for v in candidates:
            if v.casefold() in self._allow:
                return True
            if any(rx.fullmatch(v) for rx in self._allow_rx):
                return True
        return False


_by_id: dict[int, Scanner] = {}
_by_value: dict[SafetyConfig, Scanner] = {}


def scanner_for(config: SafetyConfig) -> Scanner:
    """The scanner of ``config``, built once per distinct config; the object a session
    holds is found by identity (a dict lookup on every call, no hashing of the model)."""
    scanner = _by_id.get(id(config))
    if scanner is not None and scanner.config is config:
        return scanner
    if len(_by_id) >= 256:
        _by_id.clear()
        _by_value.clear()
    scanner = _by_value.get(config)
    if scanner is None:
        scanner = _by_value[config] = Scanner(config)
    _by_id[id(config)] = scanner
    return scanner
