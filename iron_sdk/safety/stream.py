"""Redaction of streamed text with bounded buffering.

:class:`StreamRedactor` takes a response's text deltas and gives back what may be passed on:
everything that can no longer be part of a finding, redacted. It holds back only the last
``holdback`` characters (enough for the longest text a detector needs before it reports,
see :data:`iron_sdk.safety.detectors.HOLDBACK`) and, while a finding still touches that tail
(a key, a JWT or a PEM body that may go on growing), the finding from its start. So a secret
or a card split over two chunks is caught, and ordinary text is released at once::

    redactor = StreamRedactor.for_config(session.safety)
    for delta in deltas:
        out = redactor.feed(delta)       # may be "" while the tail is held
        if out:
            yield out
    yield redactor.finish()              # the held tail, redacted

:class:`ToolArgumentsRedactor` does the same for a tool call's ``arguments`` deltas: JSON is
held until it closes, then released whole with every string (and number) redacted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iron_sdk.safety.detectors import HOLDBACK, Finding, placeholder, redact, scan

if TYPE_CHECKING:
    from iron_sdk.config import SafetyConfig

__all__ = ["ScanFn", "StreamRedactor", "ToolArgumentsRedactor"]

ScanFn = Callable[[str], list[Finding]]
# Released characters kept as look-behind context for the next scan (the longest look-behind
# of a detector: the version words before a dotted quad, 12 characters).
_CONTEXT = 16


def _redacting_scan(config: SafetyConfig, response: bool) -> tuple[ScanFn, int]:
    """The findings ``config`` redacts, and the hold-back they need. For a response
    (``response=True``) ``config.response`` decides for every kind: ``redact`` and ``block``
    redact (a caller that blocks ends the stream when ``kinds`` fills), ``log`` and ``off``
    redact nothing; otherwise the prompt actions do (``action_for``)."""
    from iron_sdk.safety.scanner import scanner_for

    scanner = scanner_for(config)
    if response:
        if config.response in ("redact", "block"):
            return scanner.scan, scanner.holdback
        return _nothing, 0

    def scan_fn(text: str) -> list[Finding]:
        return [f for f in scanner.scan(text) if config.action_for(f.kind) == "redact"]

    return scan_fn, scanner.holdback


def _nothing(text: str) -> list[Finding]:
    return []


class StreamRedactor:
    """Redact a text stream chunk by chunk (see the module docstring).

    ``scan`` finds what to redact (default: the built-in detectors); ``holdback`` is how many
    trailing characters may still be the start of a finding (default: what the built-ins
    need). ``kinds`` counts the findings redacted so far, by kind.
    """

    def __init__(self, scan: ScanFn | None = None, *, holdback: int | None = None) -> None:
        self._scan: ScanFn = scan or _builtin_scan
        self.holdback = HOLDBACK if holdback is None else holdback
        if self.holdback < 0:
            raise ValueError("holdback must not be negative")
        self._pending = ""  # received, not yet released
        self._context = ""  # the last released characters, as received
        self.kinds: Counter[str] = Counter()

    @classmethod
    def for_config(cls, config: SafetyConfig, *, response: bool = False) -> StreamRedactor:
        """Redact what ``config`` redacts (built-ins, custom patterns, allow-lists applied);
        ``response=True`` follows ``config.response`` instead of the prompt actions (``log``
        and ``off`` hold nothing back)."""
        scan_fn, holdback = _redacting_scan(config, response)
        return cls(scan_fn, holdback=holdback)

    @property
    def held(self) -> int:
        """How many received characters are not released yet."""
        return len(self._pending)

    def feed(self, text: str) -> str:
        """Add a delta; return the text that can be released now (redacted), maybe ""."""
        if not text:
            return ""
        pending = self._pending + text
        self._pending = pending
        if len(pending) <= self.holdback:
            return ""
        return self._release(len(pending) - self.holdback)

    def finish(self) -> str:
        """The end of the stream: release everything still held, redacted."""
        return self._release(len(self._pending)) if self._pending else ""

    def _release(self, limit: int) -> str:
        """Release ``pending[:cut]`` for the largest ``cut <= limit`` that splits no finding
        and leaves every finding that reaches past ``limit`` (it may still grow) held."""
        pending, context = self._pending, self._context
        offset = len(context)
        cut = limit
        ready: list[Finding] = []
        for f in self._scan(context + pending if context else pending):
            start, end = f.start - offset, f.end - offset
            if start < 0:
                # Starts in the released context: a real finding never does (the hold-back
                # kept its start), so this is an artefact of the cut-off context, e.g. the
                # tail of an allow-listed address read as an address of its own.
                continue
            if end > limit:
                cut = min(cut, start)
            else:
                ready.append(f if offset == 0 else Finding(f.kind, start, end))
        ready = [f for f in ready if f.end <= cut]
        released = pending[:cut]
        self._pending = pending[cut:]
        self._context = (context + released)[-_CONTEXT:]
        if not ready:
            return released
        self.kinds.update(f.kind for f in ready)
        return redact(released, ready)


def _builtin_scan(text: str) -> list[Finding]:
    return scan(text)


class ToolArgumentsRedactor:
    """Hold a tool call's ``arguments`` deltas until the JSON closes, then release it whole,
    every string (and number) redacted; the original text is released unchanged when there
    is nothing to redact. Text that never forms JSON is released redacted by :meth:`finish`.
    """

    def __init__(self, scan: ScanFn | None = None) -> None:
        self._scan: ScanFn = scan or _builtin_scan
        self._buf: list[str] = []
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._started = False
        self.kinds: Counter[str] = Counter()

    @classmethod
    def for_config(cls, config: SafetyConfig, *,
                   response: bool = False) -> ToolArgumentsRedactor:
        """As :meth:`StreamRedactor.for_config`."""
        return cls(_redacting_scan(config, response)[0])

    def feed(self, delta: str) -> str:
        """Add an arguments delta; return "" until the JSON value closes, then all of it."""
        if not delta:
            return ""
        self._buf.append(delta)
        if self._closes(delta):
            return self._flush()
        return ""

    def finish(self) -> str:
        """The end of the call: whatever is held, redacted (JSON or not)."""
        return self._flush() if self._buf else ""

    def _closes(self, delta: str) -> bool:
        """Track the JSON structure through ``delta``; True when the top value closed."""
        for ch in delta:
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
                self._started = True
            elif ch in "}]":
                self._depth -= 1
                if self._started and self._depth <= 0:
                    return True
        return False

    def _flush(self) -> str:
        text = "".join(self._buf)
        self._buf = []
        self._depth, self._in_string, self._escape, self._started = 0, False, False, False
        try:
            value = json.loads(text)
        except ValueError:
            found = self._scan(text)
            self.kinds.update(f.kind for f in found)
            return redact(text, found) if found else text
        changed, value = self._walk(value)
        return json.dumps(value, ensure_ascii=False) if changed else text

    def _walk(self, value: Any) -> tuple[bool, Any]:
        if isinstance(value, str):
            found = self._scan(value)
            if not found:
                return False, value
            self.kinds.update(f.kind for f in found)
            return True, redact(value, found)
        if isinstance(value, bool) or value is None:
            return False, value
        if isinstance(value, int | float):
            found = self._scan(str(value))
            if not found:
                return False, value
            self.kinds.update(f.kind for f in found)
            return True, placeholder(found[0].kind)
        if isinstance(value, list):
            results = [self._walk(v) for v in value]
            return any(c for c, _ in results), [v for _, v in results]
        if isinstance(value, dict):
            changed = False
            out: dict[str, Any] = {}
            for k, v in value.items():
                kc, key = self._walk(k)
                vc, val = self._walk(v)
                changed = changed or kc or vc
                out[key] = val
            return changed, out
        return False, value
