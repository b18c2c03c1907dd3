"""The API for integration authors: everything a framework plugin needs, in one module.

Our own plugins (openai, anthropic, LangChain, CrewAI, LiteLLM) import only this module
and the public ``iron_sdk`` names; a user's plugin is a peer of ours. A plugin
translates its framework's objects into a request (:func:`read_request`) and a response
(:class:`Meter`) and does nothing else: the pipeline decides, redacts and charges.

The usual shape, for a client method that sends ``**kwargs`` as the request::

    patches = Patches()

    def govern(original):
        def governed(self, *args, **kwargs):
            governed_call = begin("chat", kwargs, source="myclient")
            if governed_call is None:                  # no session, or governed outside
                return original(self, *args, **kwargs)
            call, meter = governed_call
            try:
                result = original(self, *args, **call.request.body)
            except BaseException as exc:
                call.session.runtime.fail_call(call, exc)
                raise
            return deliver(meter, result)              # settles, or meters the stream
        return governed

    patches.patch(MyClient, "create", govern)          # idempotent; patches.undo()
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import inspect
import sys
import threading
from collections.abc import Callable, Sequence
from contextvars import Token
from types import ModuleType
from typing import Any

from iron_sdk.call import LlmCall, ToolCall, Usage, field_of
from iron_sdk.events import Event, call_event, make_event
from iron_sdk.guard import is_outer_governed, outer_governed
from iron_sdk.hookspecs import hookimpl
from iron_sdk.identity import is_ic_token
from iron_sdk.meter import (
    Meter,
    MeteredStream,
    Protocol,
    ask_for_usage,
    response_text,
    settle_reserved,
    settle_response,
    settle_text,
)
from iron_sdk.request import LlmRequest, Media, Text, Writable, read_request
from iron_sdk.session import Session, _current, active_session
from iron_sdk.usage import usage_from_anthropic, usage_from_openai

__all__ = [
    "Event", "LlmCall", "LlmRequest", "Media", "Meter", "MeteredResponse", "MeteredStream",
    "Patches", "Protocol", "Session", "Text", "ToolCall", "Usage", "Writable",
    "active_session", "adeliver", "ask_for_usage", "begin", "call_event", "deliver",
    "enter_session", "exit_session", "field_of", "hookimpl", "is_ic_token",
    "is_outer_governed", "make_event", "outer_governed", "read_request", "response_text",
    "settle_reserved", "settle_response", "settle_text", "usage_from_anthropic",
    "usage_from_openai", "when_imported",
]


def begin(kind: str, body: dict[str, Any], *, source: str, model: str | None = None,
          provider: str = "", writable: Writable | None = None,
          protocol: Protocol | None = None,
          session: Session | None = None) -> tuple[LlmCall, Meter] | None:
    """Govern a request about to leave: read ``body`` (the request's fields) as ``kind``,
    run the request policies (may raise the refusal), ask a stream for its usage.

    Outside any protected function the request is governed all the same, in the
    runtime's outside session (its default agent; audited as ``outside_session``), or
    refused with :class:`~iron_sdk.errors.OutsideSessionError` where the operator says
    so.

    Returns the call — send ``call.request.body``, redacted where the policy redacts —
    and the meter that settles it; None when an outer integration governs the request.
    """
    if is_outer_governed():
        return None
    outside = False
    if session is None:
        session = active_session()
        if session is None:
            from iron_sdk.runtime import get_runtime

            session, outside = get_runtime().outside_session(), True
    request = read_request(kind, body, writable=writable)
    call = session.runtime.begin_call(session, request, model=model, source=source,
                                      provider=provider)
    if outside:
        session.runtime.emit(make_event(
            "outside_session", call_id=call.call_id, session_id=session.session_id,
            agent_id=session.agent_id, model=call.model, integration=source))
    return call, Meter(call, hide_usage=ask_for_usage(request), protocol=protocol)


def deliver(meter: Meter, result: Any) -> Any:
    """The provider's result for the caller: a stream metered as it is read, or a
    complete answer settled now. A raw-response wrapper (the clients'
    ``with_raw_response``/``with_streaming_response``) is parsed for its usage, or, for
    a stream, metered when the caller parses it (:class:`MeteredResponse`)."""
    if meter.call.stream and (hasattr(result, "__next__") or hasattr(result, "__anext__")):
        return MeteredStream(result, meter)
    if _is_raw(result):
        if meter.call.stream:
            return MeteredResponse(result, meter)
        meter.settle(result.parse())
        return result
    meter.settle(result)
    return result


async def adeliver(meter: Meter, result: Any) -> Any:
    """:func:`deliver` for async clients, whose raw responses parse awaiting."""
    if _is_raw(result) and not meter.call.stream:
        parsed = result.parse()
        meter.settle(await parsed if inspect.isawaitable(parsed) else parsed)
        return result
    return deliver(meter, result)


def _is_raw(result: Any) -> bool:
    return (field_of(result, "usage") is None and hasattr(result, "http_response")
            and hasattr(result, "parse"))


class MeteredResponse:
    """A raw response whose body is a stream: ``parse()`` (sync or awaited, as the
    client's) gives the stream metered. Never parsed (the caller read the bytes itself):
    the reservation is charged when the response is dropped, on the record."""

    def __init__(self, response: Any, meter: Meter) -> None:
        self._response, self._meter = response, meter
        self._stream: MeteredStream | None = None

    def parse(self, **kwargs: Any) -> Any:
        if kwargs:  # parsed into a type of the caller's: not the event stream
            return self._response.parse(**kwargs)
        if self._stream is not None:
            return self._stream
        parsed = self._response.parse()
        if inspect.isawaitable(parsed):
            return self._metered_after(parsed)
        return self._metered(parsed)

    def _metered(self, stream: Any) -> MeteredStream:
        if self._stream is None:
            self._stream = MeteredStream(stream, self._meter)
        return self._stream

    async def _metered_after(self, pending: Any) -> MeteredStream:
        return self._metered(await pending)

    def __del__(self) -> None:
        if self._stream is None and not self._meter.done:
            self._meter.done = True
            with contextlib.suppress(Exception):  # never raise from the garbage collector
                settle_reserved(self._meter.call)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)


def enter_session(session: Session) -> Token[Session | None]:
    """Make ``session`` the current one (an integration that governs runs under its own
    identity, so the client plugins under it charge that agent); undo with
    :func:`exit_session`."""
    return _current.set(session)


def exit_session(token: Token[Session | None]) -> None:
    try:
        _current.reset(token)
    except ValueError:  # ended in another context than it started in
        _current.set(None)


class Patches:
    """Idempotent, thread-safe monkey-patching of a framework's methods or functions."""

    def __init__(self) -> None:
        self._originals: dict[tuple[Any, str], Any] = {}
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self._originals)

    def patch(self, owner: Any, name: str, wrap: Callable[[Any], Any]) -> None:
        """Replace ``owner.name`` with ``wrap(original)`` unless already done."""
        key = (owner, name)
        if key in self._originals:
            return
        with self._lock:
            if key in self._originals:
                return
            original = getattr(owner, name)
            setattr(owner, name, wrap(original))
            self._originals[key] = original

    def original(self, owner: Any, name: str) -> Any:
        """The function ``owner.name`` had before it was patched."""
        return self._originals.get((owner, name), getattr(owner, name))

    def undo(self) -> None:
        """Restore every original."""
        with self._lock:
            for (owner, name), original in self._originals.items():
                setattr(owner, name, original)
            self._originals.clear()


# -- post-import hooks ------------------------------------------------------------------
_waiting: dict[str, list[Callable[[ModuleType], None]]] = {}
_waiting_lock = threading.Lock()


def when_imported(module: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` now if ``module`` is imported, else right after it is.

    The callback runs while the import system still holds the module's lock: it must
    only patch attributes of what is already loaded, never import (another thread
    importing a submodule would deadlock); defer heavier work, e.g. to the first
    construction of a client class.
    """
    loaded = sys.modules.get(module)
    if loaded is not None and getattr(loaded, "__spec__", None) is not None and \
            not getattr(loaded.__spec__, "_initializing", False):
        callback(loaded)
        return
    with _waiting_lock:
        _waiting.setdefault(module, []).append(callback)
        if not any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _PostImportFinder())


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of a watched module so that the
    callbacks run once the module has executed."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _waiting:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        with _waiting_lock:
            callbacks = _waiting.pop(module.__name__, [])
        for callback in callbacks:
            callback(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
