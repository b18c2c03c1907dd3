"""Scanning what a model answers (``SafetyConfig.response``), plain or streamed.

A :class:`ResponseGuard` belongs to one call's :class:`~iron_sdk.meter.Meter`, which
hands it every answer and stream chunk it meters, in any protocol (OpenAI chat and
completion chunks, Responses events, Anthropic events; objects or dicts):

- ``redact``: texts are rewritten in place before the caller sees them. Streams pass
  through :class:`~iron_sdk.safety.stream.StreamRedactor` (text) and
  :class:`~iron_sdk.safety.stream.ToolArgumentsRedactor` (tool-call arguments, held
  until their JSON closes), so a value split over chunks is still caught and only the
  tail a pattern may still need is held back; what is held comes out in the chunk that
  ends the text (or in one more chunk made like the last, if none does);
- ``block``: as ``redact``, and the answer is refused with
  :class:`~iron_sdk.errors.SafetyViolationError` once something is found (a stream ends
  there; what was generated is still charged);
- ``log`` (the default): nothing is changed or held; the answer's text is scanned once
  when the call settles (:func:`log_answer`, no guard per chunk).

Every answer with findings emits one ``response_pii_detected`` event (kinds, never
values).
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import TYPE_CHECKING, Any

from iron_sdk.call import field_of
from iron_sdk.errors import SafetyViolationError
from iron_sdk.events import make_event
from iron_sdk.safety.detectors import redact
from iron_sdk.safety.scanner import scanner_for
from iron_sdk.safety.stream import StreamRedactor, ToolArgumentsRedactor

if TYPE_CHECKING:
    from iron_sdk.call import LlmCall


def _set(obj: Any, name: str, value: Any) -> None:
    if isinstance(obj, dict):
        obj[name] = value
    else:
        setattr(obj, name, value)


def log_answer(call: LlmCall, text: str) -> None:
    """``response="log"``: record the kinds a complete answer's text contains (one scan,
    nothing changed or held)."""
    kinds = Counter(f.kind for f in scanner_for(call.session.safety).scan(text))
    if kinds:
        call.session.runtime.emit(make_event(
            "response_pii_detected", call_id=call.call_id, agent_id=call.agent_id,
            session_id=call.session.session_id, model=call.model, kinds=dict(kinds),
            action="log"))


Key = tuple[Any, str, Any]  # (choice index / block index / item id, field, tool index)
_ARGUMENTS = ("arguments", "partial_json")


class ResponseGuard:
    """Scans one call's answer; see the module docstring."""

    __slots__ = ("call", "action", "config", "kinds", "_open", "_last", "_log",
                 "_reported")

    def __init__(self, call: LlmCall) -> None:
        self.call = call
        self.config = call.session.safety
        self.action = self.config.response
        self.kinds: Counter[str] = Counter()
        self._open: dict[Key, StreamRedactor | ToolArgumentsRedactor] = {}
        self._last: dict[Key, Any] = {}  # per text: the last chunk that carried it
        self._log: list[str] = []  # log mode: the text, scanned once at the end
        self._reported = False

    # -- complete answers -----------------------------------------------------------------
    def answer(self, result: Any, protocol: str) -> bool:
        """Scan a complete answer in place; True when it was changed. Raises
        :class:`SafetyViolationError` under ``block`` when something was found."""
        changed = self._rewrite(result, protocol, count=True)
        self._check()
        self.done()
        return changed

    def _rewrite(self, result: Any, protocol: str, *, count: bool) -> bool:
        changed = False
        for owner, name, text in _texts(result, protocol):
            if self.action == "log":
                self._log.append(text)
                continue
            new = self._redacted(text, count)
            if new is not None:
                _set(owner, name, new)
                changed = True
        return changed

    def _redacted(self, text: str, count: bool) -> str | None:
        if text[:1] == "{" and text[-1:] == "}":  # a tool call's JSON arguments
            red = ToolArgumentsRedactor.for_config(self.config, response=True)
            out = red.feed(text) + red.finish()
            found = red.kinds
        else:
            findings = scanner_for(self.config).scan(text)
            out = redact(text, findings) if findings else text
            found = Counter(f.kind for f in findings)
        if count:
            self.kinds.update(found)
        return out if out != text else None

    # -- streams --------------------------------------------------------------------------
    def chunk(self, chunk: Any, protocol: str) -> list[Any]:
        """Scan one stream chunk or event in place; returns the chunks to pass on: this
        one, after one carrying held text when this one ends a text without room for
        it. Raises :class:`SafetyViolationError` under ``block`` once something is
        found."""
        deltas = _deltas(chunk, protocol)
        if self.action == "log":
            self._log.extend(text for _, _, text, _ in deltas)
            return [chunk]
        for owner, name, text, key in deltas:
            red = self._open.get(key)
            if red is None:
                red = self._open[key] = (
                    ToolArgumentsRedactor.for_config(self.config, response=True)
                    if name in _ARGUMENTS or key[1] in _ARGUMENTS
                    else StreamRedactor.for_config(self.config, response=True))
            self._last[key] = chunk
            _set(owner, name, red.feed(text))
        before: list[Any] = []
        for key, place in self._ends(chunk, protocol):
            before.extend(self._release(key, place, protocol))
        self._rewrite_whole(chunk, protocol)
        self._check()
        return [*before, chunk]

    def close(self, protocol: str) -> list[Any]:
        """The stream ended: chunks carrying whatever is still held."""
        out: list[Any] = []
        for key in list(self._open):
            out.extend(self._release(key, None, protocol))
        self._check()
        self.done()
        return out

    def _rewrite_whole(self, chunk: Any, protocol: str) -> None:
        """Events that repeat a whole text (Responses' ``*.done`` and ``completed``)."""
        if protocol != "responses":
            return
        kind = field_of(chunk, "type")
        if kind in ("response.output_text.done", "response.function_call_arguments.done"):
            name = "text" if kind == "response.output_text.done" else "arguments"
            text = field_of(chunk, name)
            new = self._redacted(text, False) if isinstance(text, str) and text else None
            if new is not None:
                _set(chunk, name, new)
        elif kind in ("response.completed", "response.incomplete"):
            response = field_of(chunk, "response")
            if response is not None:
                self._rewrite(response, "responses", count=False)

    def _ends(self, chunk: Any, protocol: str) -> list[tuple[Key, Any]]:
        """Texts this chunk closes, with the delta that can carry their rest (or None)."""
        if protocol == "openai":
            ends: list[tuple[Key, Any]] = []
            for choice in field_of(chunk, "choices") or ():
                if field_of(choice, "finish_reason"):
                    index = field_of(choice, "index") or 0
                    ends += [(k, choice) for k in self._open if k[0] == index]
            return ends
        kind = field_of(chunk, "type")
        if protocol == "anthropic" and kind == "content_block_stop":
            return [(k, None) for k in self._open if k[0] == field_of(chunk, "index")]
        if protocol == "responses" and kind in ("response.output_text.done",
                                                "response.function_call_arguments.done"):
            return [(k, None) for k in self._open if k[0] == field_of(chunk, "item_id")]
        return []

    def _release(self, key: Key, place: Any, protocol: str) -> list[Any]:
        """Put what ``key``'s redactor still holds into ``place`` (the delta of an OpenAI
        choice that ends), else into a copy of the last chunk that carried the text."""
        red = self._open.pop(key, None)
        last = self._last.pop(key, None)
        if red is None:
            return []
        rest = red.finish()
        self.kinds.update(red.kinds)
        if not rest:
            return []
        if place is not None and key[1] in ("content", "text"):
            delta = field_of(place, "delta")
            owner, name = (delta, "content") if delta is not None else (place, "text")
            _set(owner, name, (field_of(owner, name) or "") + rest)
            return []
        if last is None:
            return []
        extra = copy.deepcopy(last)
        for owner, name, _, k in _deltas(extra, protocol):
            _set(owner, name, rest if k == key else "")
        return [extra]

    def _check(self) -> None:
        if self.action == "block" and self.kinds:
            self.done()
            raise SafetyViolationError(sorted(self.kinds), message=(
                f"The model's answer contains {', '.join(sorted(self.kinds))}; the safety "
                "policy blocks such answers (SafetyConfig.response='block')."))

    def done(self) -> None:
        """Report what was found, once (a log-mode answer is scanned whole here)."""
        if self._log:
            text, self._log = "".join(self._log), []
            self.kinds.update(f.kind for f in scanner_for(self.config).scan(text))
        if self.kinds and not self._reported:
            self._reported = True
            call = self.call
            call.session.runtime.emit(make_event(
                "response_pii_detected", call_id=call.call_id, agent_id=call.agent_id,
                session_id=call.session.session_id, model=call.model,
                kinds=dict(self.kinds), action=self.action))


def _deltas(chunk: Any, protocol: str) -> list[tuple[Any, str, str, Key]]:
    """(owner, field, text, key) of every text delta in a chunk or event."""
    out: list[tuple[Any, str, str, Key]] = []

    def add(owner: Any, name: str, key: Key) -> None:
        text = field_of(owner, name)
        if isinstance(text, str) and text:
            out.append((owner, name, text, key))

    if protocol == "openai":
        for choice in field_of(chunk, "choices") or ():
            index = field_of(choice, "index") or 0
            delta = field_of(choice, "delta")
            if delta is None:
                add(choice, "text", (index, "text", None))
                continue
            add(delta, "content", (index, "content", None))
            add(delta, "refusal", (index, "refusal", None))
            for tool_call in field_of(delta, "tool_calls") or ():
                function = field_of(tool_call, "function")
                if function is not None:
                    add(function, "arguments",
                        (index, "arguments", field_of(tool_call, "index") or 0))
        return out
    kind = field_of(chunk, "type")
    if protocol == "anthropic" and kind == "content_block_delta":
        delta = field_of(chunk, "delta")
        index = field_of(chunk, "index")
        add(delta, "text", (index, "text", None))
        add(delta, "partial_json", (index, "partial_json", None))
    elif protocol == "responses" and kind in ("response.output_text.delta",
                                              "response.refusal.delta"):
        add(chunk, "delta", (field_of(chunk, "item_id"), "text", None))
    elif protocol == "responses" and kind == "response.function_call_arguments.delta":
        add(chunk, "delta", (field_of(chunk, "item_id"), "arguments", None))
    return out


def _texts(result: Any, protocol: str) -> list[tuple[Any, str, str]]:
    """(owner, field, text) of every text in a complete answer."""
    out: list[tuple[Any, str, str]] = []

    def add(owner: Any, name: str) -> None:
        value = field_of(owner, name)
        if isinstance(value, str) and value:
            out.append((owner, name, value))

    if protocol == "anthropic":
        for block in field_of(result, "content") or ():
            add(block, "text")
        return out
    if protocol == "responses":
        for item in field_of(result, "output") or ():
            add(item, "arguments")
            for part in field_of(item, "content") or ():
                add(part, "text")
                add(part, "refusal")
        return out
    for choice in field_of(result, "choices") or ():
        message = field_of(choice, "message")
        if message is None:
            add(choice, "text")
            continue
        add(message, "content")
        add(message, "refusal")
        for tool_call in field_of(message, "tool_calls") or ():
            function = field_of(tool_call, "function")
            if function is not None:
                add(function, "arguments")
    return out
