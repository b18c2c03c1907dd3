"""The runtime API's session registry: the sessions a router holds for remote SDKs,
with their calls and tool calls still in flight, each owned by the IC token that
opened its session.

Ids carry 128 random bits (:func:`iron_sdk.call.new_id`) and every lookup checks the
owner: a session, call or tool id with another token (or none) is answered exactly as
an unknown id (404), so ids can be neither guessed nor used by anyone else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import time
from typing import Any

from starlette.requests import Request

from iron_sdk.call import LlmCall, ToolCall
from iron_sdk.errors import IronCageError, RuntimeUnavailableError
from iron_sdk.runtime import Runtime
from iron_sdk.session import Session

log = logging.getLogger("iron_router.runtime_api")

IDLE_S = 3600.0  # sessions untouched this long are dropped (override: app.state)
SWEEP_EVERY_S = 60.0
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens",
                 "cache_creation_tokens", "reasoning_tokens")


class NotFound(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def owner_of(token: str | None) -> bytes | None:
    """What identifies a session's owner: a digest of its IC token (never the token)."""
    return None if token is None else hashlib.blake2b(token.encode(), digest_size=16).digest()


@dataclasses.dataclass(slots=True, eq=False)
class Entry:
    """A session the router holds for a remote SDK, with its calls still in flight."""

    session: Session
    last: float
    owner: bytes | None = None  # digest of the opening IC token (None: anonymous)
    seq: int = 0  # bumped on every change, so the SDK applies states in order
    calls: dict[str, LlmCall] = dataclasses.field(default_factory=dict)
    tools: dict[str, ToolCall] = dataclasses.field(default_factory=dict)


class Registry:
    """Open sessions and in-flight calls of one app. Used only from the event loop
    thread (every handler is ``async``), so plain dicts suffice.

    A closed session's calls still in flight stay settle-able (an abandoned stream is
    settled when the SDK drops it, possibly after the session returned) until they are
    idle for ``idle_s``; then, like an idle open session's, they are released.
    """

    def __init__(self, runtime: Runtime, idle_s: float = IDLE_S) -> None:
        self.runtime = runtime
        self.idle_s = idle_s
        self.sessions: dict[str, Entry] = {}
        self.lingering: dict[str, Entry] = {}  # closed, with calls in flight
        self.calls: dict[str, tuple[Entry, LlmCall]] = {}
        self.tools: dict[str, tuple[Entry, ToolCall]] = {}
        self._swept = time.monotonic()

    def add(self, session: Session, owner: bytes | None) -> Entry:
        now = time.monotonic()
        if now - self._swept >= min(SWEEP_EVERY_S, self.idle_s):
            self.sweep(now)
        entry = self.sessions[session.session_id] = Entry(session, now, owner)
        return entry

    def session(self, session_id: Any, owner: bytes | None) -> Entry:
        entry = self.sessions.get(session_id) if isinstance(session_id, str) else None
        if entry is None or not _owns(entry, owner):
            raise NotFound("session_not_found", (
                f"No open session '{session_id}' in this runtime: it was closed, idle for "
                f"over {self.idle_s:.0f}s, or the router restarted."))
        entry.last = time.monotonic()
        return entry

    def call(self, call_id: str, owner: bytes | None) -> tuple[Entry, LlmCall]:
        found = self.calls.get(call_id)
        if found is None or not _owns(found[0], owner):
            raise NotFound("call_not_found", (
                f"No call '{call_id}' in flight: it was settled or failed already, or it "
                f"was idle for over {self.idle_s:.0f}s."))
        found[0].last = time.monotonic()
        return found

    def done(self, entry: Entry, call: LlmCall) -> None:
        """``call`` was settled or failed: forget it."""
        del self.calls[call.call_id], entry.calls[call.call_id]
        if not entry.calls and entry.session.session_id in self.lingering:
            del self.lingering[entry.session.session_id]

    def tool(self, tool_id: str, owner: bytes | None) -> tuple[Entry, ToolCall]:
        found = self.tools.get(tool_id)
        if found is None or not _owns(found[0], owner):
            raise NotFound("tool_call_not_found", f"No tool call '{tool_id}' in flight.")
        del self.tools[tool_id], found[0].tools[tool_id]
        return found

    def close(self, entry: Entry, error: BaseException | None) -> None:
        sid = entry.session.session_id
        if self.sessions.pop(sid, None) is None:
            return
        for tool_id in entry.tools:
            self.tools.pop(tool_id, None)
        entry.tools.clear()
        if entry.calls:
            self.lingering[sid] = entry
        self.runtime.close_session(entry.session, error)

    def sweep(self, now: float) -> None:
        """Release what idle sessions (open or closed) still hold, and close them."""
        self._swept = now
        for entry in [e for e in (*self.sessions.values(), *self.lingering.values())
                      if now - e.last >= self.idle_s]:
            log.info("dropping session %s of agent %s: idle for %.0fs",
                     entry.session.session_id, entry.session.agent_id, now - entry.last)
            self.release(entry, RuntimeUnavailableError("session idle for too long"))

    def release(self, entry: Entry, error: IronCageError) -> None:
        for call in list(entry.calls.values()):
            self.runtime.fail_call(call, error)
            self.done(entry, call)
        self.close(entry, error)
        self.lingering.pop(entry.session.session_id, None)


def _owns(entry: Entry, owner: bytes | None) -> bool:
    if entry.owner is None or owner is None:
        return entry.owner is owner
    return hmac.compare_digest(entry.owner, owner)


def registry(request: Request) -> Registry:
    """The app's registry, created on first use from ``app.state.runtime``."""
    state = request.app.state
    reg = getattr(state, "runtime_registry", None)
    if reg is None:
        reg = state.runtime_registry = Registry(
            state.runtime, getattr(state, "runtime_session_idle_s", IDLE_S))
    return reg


