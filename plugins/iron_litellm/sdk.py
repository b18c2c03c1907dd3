"""Governs the LiteLLM SDK: ``litellm.completion`` and ``litellm.acompletion``, plain and
streamed, go through the runtime — request policies before, one settlement after.

Why wrapping and not a litellm hook: litellm's SDK hooks that may rewrite or refuse a
request (``async_pre_call_deployment_hook``; the proxy's ``async_pre_call_hook``) run
only for async calls. For a sync ``completion`` the only callbacks before the request
are logging ones (``log_pre_api_call``), whose exceptions litellm swallows, and prompt
management hooks, which run only with a ``prompt_id``. So the public entry points are
wrapped instead: one code path for sync and async, streams included, with our typed
errors reaching the caller unwrapped (raised inside ``completion``, litellm's
``exception_type`` would turn them into an ``APIConnectionError``). ``litellm.Router``
calls these public functions, so its deployment requests are governed too.

A reference taken before instrumentation (``from litellm import completion`` at the top
of the user's module) would keep the ungoverned function, so :func:`instrument` also
rebinds such references in already-imported modules (litellm's own modules excepted).

Exactly once: while litellm runs the request, :func:`iron_sdk.guard.outer_governed` is
set, so the openai-client plugin does not charge the same request again (litellm's Azure
provider, and litellm before 1.110 for OpenAI too, call the official client's
``chat.completions.create``), and a nested call of the public functions passes straight
through. Calls an outer integration governs (``is_outer_governed()``) pass through too.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
from collections.abc import Callable
from typing import Any

import litellm

from iron_sdk.integration import (
    Meter,
    Session,
    Usage,
    active_session,
    begin,
    deliver,
    is_outer_governed,
    outer_governed,
)

_lock = threading.Lock()
_originals: dict[str, Callable[..., Any]] = {}  # public name → litellm's own function
_explicit = 0  # how many callbacks carry their own agent identity (0: skip the search)
proxy_governs = False  # set by iron_litellm.proxy: the proxy's own hooks govern requests


def instrument() -> None:
    """Wrap ``litellm.completion``/``litellm.acompletion`` (idempotent, thread-safe)."""
    if _originals:
        return
    with _lock:
        if _originals:
            return
        originals = {}
        for name, wrap in (("completion", _wrap_sync), ("acompletion", _wrap_async)):
            original = getattr(litellm, name)
            governed = wrap(original)
            originals[name] = original
            setattr(litellm, name, governed)
            _rebind(original, governed)
        _originals.update(originals)  # last: the unlocked check above means "all done"


def uninstrument() -> None:
    """Restore litellm's own functions (and the references :func:`instrument` rebound)."""
    with _lock:
        for name, original in _originals.items():
            governed = getattr(litellm, name)
            setattr(litellm, name, original)
            _rebind(governed, original)
        _originals.clear()


def _rebind(old: object, new: object) -> None:
    """Point module-level names bound to ``old`` (``from litellm import completion``) at
    ``new``. litellm's own modules keep their references: they are internal callers."""
    for mod_name, module in list(sys.modules.items()):
        if module is None or mod_name.split(".", 1)[0] in ("litellm", "iron_litellm"):
            continue
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for key, value in list(namespace.items()):
            if value is old:
                namespace[key] = new


def register_explicit() -> None:
    """An :class:`IronLiteLLM` with its own agent identity exists: look for it."""
    global _explicit
    with _lock:
        _explicit += 1


def _session(kwargs: dict[str, Any]) -> Session | None:
    """The session this request is governed by, or None to pass it through untouched:
    the protected function's, else that of a callback with its own agent identity in
    ``litellm.callbacks`` (or in this call's ``callbacks=``), else the runtime's outside
    session (inside the LiteLLM proxy, whose own hooks govern: None)."""
    if is_outer_governed():  # an outer integration (or our own outer call) governs it
        return None
    session = active_session()
    if session is not None:
        return session
    if _explicit:
        for cb in (*(kwargs.get("callbacks") or ()), *litellm.callbacks):
            if getattr(cb, "has_identity", False) is True:
                return cb.session()  # an IronLiteLLM with its own agent identity
    if proxy_governs:  # inside the LiteLLM proxy, its hooks govern every request
        return None
    from iron_sdk.runtime import get_runtime

    return get_runtime().outside_session()  # governed outside any protected function


@functools.cache
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)


def _kwargs(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> dict[str, Any]:
    """All arguments by name (``completion("gpt-4o", msgs)`` is allowed)."""
    if not args:
        return kwargs
    if len(args) <= 2:
        return {**dict(zip(("model", "messages"), args, strict=False)), **kwargs}
    bound = _signature(fn).bind_partial(*args, **kwargs)
    extra = bound.arguments.pop("kwargs", {})
    return {**bound.arguments, **extra}


def _begin(session: Session, kwargs: dict[str, Any]) -> Meter:
    """Run the request policies; ``kwargs`` become what may leave (redacted)."""
    governed = begin("chat", kwargs, source="litellm", session=session)
    assert governed is not None  # the session was checked by the caller
    return governed[1]


def _finish(meter: Meter, result: Any) -> Any:
    """Settle a plain reply, or hand back a stream that settles when it ends."""
    hidden = getattr(result, "_hidden_params", None) or {}
    if hidden.get("cache_hit") and not meter.call.stream:
        meter.record(Usage())  # answered from litellm's cache: no provider request
        return result
    return deliver(meter, result)


def _wrap_sync(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def completion(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("acompletion") is True:  # completion(..., acompletion=True)
            kwargs.pop("acompletion")
            return litellm.acompletion(*args, **kwargs)
        session = _session(kwargs)
        if session is None:
            return original(*args, **kwargs)
        kwargs = _kwargs(original, args, kwargs)
        meter = _begin(session, kwargs)
        try:
            with outer_governed():
                result = original(**kwargs)
        except BaseException as exc:
            session.runtime.fail_call(meter.call, exc)
            raise
        return _finish(meter, result)
    completion.__iron_governed__ = True  # type: ignore[attr-defined]
    return completion


def _wrap_async(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def acompletion(*args: Any, **kwargs: Any) -> Any:
        session = _session(kwargs)
        if session is None:
            return await original(*args, **kwargs)
        kwargs = _kwargs(original, args, kwargs)
        meter = _begin(session, kwargs)
        try:
            with outer_governed():
                result = await original(**kwargs)
        except BaseException as exc:
            session.runtime.fail_call(meter.call, exc)
            raise
        return _finish(meter, result)
    acompletion.__iron_governed__ = True  # type: ignore[attr-defined]
    return acompletion
