"""CrewAI model calls under the runtime: policies in the hook, one charge per request.

How one CrewAI model call flows (crewai >= 1.15):

1. CrewAI runs its ``before_llm_call`` hooks. Ours runs the request policies
   (``runtime.begin_call``). A refusal is raised as a ``HookAborted`` that is also the
   typed iron-sdk error (:mod:`iron_crewai.errors`), so CrewAI neither retries nor wraps
   it. Redaction is written back into CrewAI's own message dicts, in place, as CrewAI's
   hook contract asks, so the agent's history stays redacted too.
2. Every built-in CrewAI LLM (native providers and the LiteLLM fallback) runs its
   provider request inside ``crewai.llms.base_llm.llm_call_context()``. Our wrapper of it
   opens a *scope* to which the approved call is bound; the request runs under
   :func:`iron_sdk.guard.outer_governed`, so the openai/litellm client plugins beneath
   pass it through instead of charging it a second time.
3. The provider's usage reaches ``BaseLLM._track_token_usage_internal`` once per
   request; the scope collects it (and streamed text, for providers that report no
   usage) and settles the call exactly once when it closes. A call that failed before
   any usage came is released.

The executor dispatches the hooks *before* ``llm.call()``; the call then waits in a
context variable for the scope that ``llm.call()`` opens next in the same context. A
direct ``llm.call()`` dispatches them inside the scope, so the call is bound at once.
A user's own ``BaseLLM`` subclass gets the same scope around its ``call``/``acall``
(:func:`wrap_custom_call`), charged by the usage it reports or else by its answer counted.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any

from iron_crewai.errors import as_hook_abort
from iron_sdk.errors import IronCageError, RuntimeUnavailableError, SafetyViolationError
from iron_sdk.integration import (
    LlmCall,
    LlmRequest,
    Session,
    Usage,
    active_session,
    outer_governed,
    settle_reserved,
    settle_text,
)

SOURCE = "crewai"
enabled = False  # set by iron_crewai.install; hooks copied into executors stay inert after



def _no_watch(cls: type) -> None:
    return None


# Set by iron_crewai.install: attaches our seams to an LLM class a governed call uses.
watch_class: Callable[[type], None] = _no_watch


class _Scope:
    """One CrewAI model call in progress: the governed call bound to it, what came back."""

    __slots__ = ("session", "call", "usage", "parts", "retried", "_outer")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.call: LlmCall | None = None
        self.usage: Usage | None = None
        self.parts: list[str] = []  # answer text, counted when no usage is reported
        self.retried = False  # a nested call was charged: CrewAI retried this one
        self._outer: AbstractContextManager[None] | None = None

    def bind(self, call: LlmCall) -> None:
        self.call = call
        if self._outer is None:  # entered and left in this scope's own context
            self._outer = outer_governed()
            self._outer.__enter__()

    def add_usage(self, usage: Usage) -> None:
        """One provider request answered (a call may make more than one, e.g. a retry)."""
        total = self.usage
        self.usage = usage if total is None else Usage(
            input_tokens=total.input_tokens + usage.input_tokens,
            output_tokens=total.output_tokens + usage.output_tokens,
            cached_input_tokens=total.cached_input_tokens + usage.cached_input_tokens,
            cache_creation_tokens=total.cache_creation_tokens + usage.cache_creation_tokens,
            reasoning_tokens=total.reasoning_tokens + usage.reasoning_tokens)

    def close(self, error: BaseException | None) -> bool:
        """Settle the bound call once: reported usage, else the answer's text counted,
        else released (failed before anything came back, or answered by a nested call)
        or charged its reservation. Returns whether a call was charged here."""
        if self._outer is not None:
            self._outer.__exit__(None, None, None)
            self._outer = None
        call, self.call = self.call, None
        if call is None or call.outcome != "pending":
            return False
        runtime = call.session.runtime
        if self.usage is not None:
            runtime.settle_call(call, self.usage)
        elif self.retried:
            # Answered by a nested call that was charged itself (CrewAI's LiteLLM path
            # calls itself again without a rejected ``stop``; a custom LLM calls super()).
            runtime.fail_call(call, RuntimeError("answered by a nested CrewAI call"))
            return False
        elif self.parts:  # streamed without a usage chunk, cut off, or a custom LLM
            settle_text(call, "".join(self.parts))
        elif error is not None:  # failed before anything came back
            runtime.fail_call(call, error)
            return False
        else:
            settle_reserved(call)  # nothing reported: never $0 silently
        return True


_scope: ContextVar[_Scope | None] = ContextVar("iron_crewai_scope", default=None)
# Approved by the executor's hook dispatch, waiting for the scope of its llm.call().
_pending: ContextVar[LlmCall | None] = ContextVar("iron_crewai_pending", default=None)
# The same waiting calls, so one whose request never came (another hook vetoed it after
# ours) is released at the latest when its session ends. Small and short-lived.
_parked: dict[str, LlmCall] = {}
_parked_lock = threading.Lock()


def _park(call: LlmCall) -> None:
    stale = _pending.get()
    if stale is not None:  # approved, but its request never came
        _unpark(stale)
        _release(stale, "superseded before it was sent")
    _pending.set(call)
    with _parked_lock:
        _parked[call.call_id] = call


def _unpark(call: LlmCall) -> None:
    with _parked_lock:
        _parked.pop(call.call_id, None)


def _release(call: LlmCall, why: str) -> None:
    if call.outcome == "pending":
        call.session.runtime.fail_call(call, RuntimeError(f"CrewAI call {why}"))


def end_session(session: Session) -> None:
    """Release calls of ``session`` that were approved but never sent."""
    with _parked_lock:
        left = [c for c in _parked.values() if c.session is session]
        for call in left:
            del _parked[call.call_id]
    for call in left:
        _release(call, "never sent before its session ended")


# -- policies ---------------------------------------------------------------------------
def _max_tokens(llm: Any) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = getattr(llm, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _begin(session: Session, llm: Any, messages: Any) -> LlmCall:
    """Run the request policies for ``llm`` sending ``messages``.

    A list (CrewAI's messages) gets the redactions written back in place; for a bare
    string the caller sends ``call.messages`` instead, or refuses (:func:`_unredactable`).
    Raises the refusal as a CrewAI hook abort, and fails closed: a crash here blocks the
    call (CrewAI would swallow any other exception and send the request ungoverned).
    """
    try:
        watch_class(type(llm))
        sent = messages if isinstance(messages, list) else [
            {"role": "user", "content": str(messages)}]
        request = LlmRequest.chat(str(getattr(llm, "model", "") or ""), sent,
                                  max_tokens=_max_tokens(llm),
                                  stream=bool(getattr(llm, "stream", False)))
        request.writable = _content_only  # redactions are mapped back per message content
        call = session.runtime.begin_call(
            session, request, source=SOURCE, provider=str(getattr(llm, "provider", "") or ""))
    except IronCageError as exc:
        raise as_hook_abort(exc) from None
    except Exception as exc:
        raise as_hook_abort(RuntimeUnavailableError(
            f"iron-sdk could not govern this CrewAI model call ({type(exc).__name__}); "
            "it was not sent.")) from exc
    if sent is messages:
        for original, new in zip(messages, call.messages, strict=False):
            if new is not original and isinstance(original, dict):
                original["content"] = new.get("content")
    return call


def _content_only(path: tuple[str | int, ...]) -> bool:
    return len(path) >= 3 and path[0] == "messages" and path[2] == "content"


def _unredactable(call: LlmCall) -> None:
    """Refuse a call whose prompt needs redacting but cannot be edited in place."""
    error = SafetyViolationError(call.findings, message=(
        f"The prompt contains {', '.join(call.findings)} and reached the model as a plain "
        "string that cannot be redacted in place; the call was not sent."))
    call.session.runtime.fail_call(call, error)
    raise as_hook_abort(error)


# -- the CrewAI hook ----------------------------------------------------------------------
def before_llm_call(ctx: Any) -> None:
    """``before_llm_call`` hook: policies for the call about to be sent."""
    session = active_session()
    if session is None or not enabled:
        return None
    if ctx.executor is not None:
        _park(_begin(session, ctx.llm, ctx.messages))
        return None
    scope = _scope.get()
    if scope is None or scope.call is not None:
        # Not inside a CrewAI LLM call (e.g. the instructor converter goes to the client
        # directly): the provider-level plugins govern that request themselves.
        return None
    scope.bind(_begin(session, ctx.llm, ctx.messages))
    return None


# -- seams inside every CrewAI LLM --------------------------------------------------------
def wrap_call_context(original: Any) -> Any:
    """``llm_call_context()`` with a governed scope around the provider call."""

    @contextmanager
    def llm_call_context() -> Iterator[Any]:
        with original() as call_id:
            session = active_session()
            if session is None or not enabled:
                yield call_id
                return
            scope = _Scope(session)
            parent = _scope.get()
            pending = _pending.get()
            if pending is not None and pending.session is session:
                _pending.set(None)
                _unpark(pending)
                if pending.outcome == "pending":
                    scope.bind(pending)
            token = _scope.set(scope)
            error: BaseException | None = None
            try:
                yield call_id
            except BaseException as exc:
                error = exc
                raise
            finally:
                _scope.reset(token)
                if scope.close(error) and parent is not None:
                    parent.retried = True

    llm_call_context.__iron_crewai__ = True  # type: ignore[attr-defined]
    return llm_call_context


@contextmanager
def _no_call_id() -> Iterator[None]:
    yield None


_custom_scope = wrap_call_context(_no_call_id)


def _bind_custom(llm: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Govern a custom LLM's call that no hook governed (called directly, not by an
    executor); return the arguments to call it with (a bare string redacted)."""
    scope = _scope.get()
    if scope is None or scope.call is not None or not enabled:
        return args, kwargs
    messages = kwargs.get("messages", args[0] if args else None)
    if messages is None:
        return args, kwargs
    call = _begin(scope.session, llm, messages)
    scope.bind(call)
    if isinstance(messages, str) and call.redacted:
        text = call.messages[0]["content"]
        if "messages" in kwargs:
            kwargs = {**kwargs, "messages": text}
        else:
            args = (text, *args[1:])
    return args, kwargs


def _answered(result: Any) -> None:
    scope = _scope.get()
    if scope is not None and scope.usage is None and isinstance(result, str):
        scope.parts.append(result)


def wrap_custom_call(original: Any) -> Any:
    """``call`` of a user's ``BaseLLM`` subclass, in the scope CrewAI's own LLMs open."""

    @functools.wraps(original)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _custom_scope():
            args, kwargs = _bind_custom(self, args, kwargs)
            result = original(self, *args, **kwargs)
            _answered(result)
            return result

    call.__iron_crewai__ = True  # type: ignore[attr-defined]
    return call


def wrap_custom_acall(original: Any) -> Any:
    """``acall`` of a user's ``BaseLLM`` subclass (see :func:`wrap_custom_call`)."""

    @functools.wraps(original)
    async def acall(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _custom_scope():
            args, kwargs = _bind_custom(self, args, kwargs)
            result = await original(self, *args, **kwargs)
            _answered(result)
            return result

    acall.__iron_crewai__ = True  # type: ignore[attr-defined]
    return acall


def wrap_call_started(original: Any) -> Any:
    """``BaseLLM._emit_call_started_event``: the first thing every built-in LLM does in
    its scope. Governs calls whose hooks CrewAI dispatched without ours — an executor
    built before iron-sdk registered its hook, or a model call CrewAI makes inside an
    executor's already-dispatched window (context summarization)."""
    from crewai.hooks.llm_hooks import model_call_hooks_already_dispatched

    @functools.wraps(original)
    def _emit_call_started_event(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        scope = _scope.get()
        if (scope is not None and scope.call is None and enabled
                and model_call_hooks_already_dispatched()):
            messages = kwargs.get("messages", args[0] if args else None)
            if messages is not None:
                call = _begin(scope.session, self, messages)
                scope.bind(call)
                if isinstance(messages, str) and call.redacted:
                    _unredactable(call)
        return result

    _emit_call_started_event.__iron_crewai__ = True  # type: ignore[attr-defined]
    return _emit_call_started_event


def wrap_track_usage(original: Any) -> Any:
    """``_track_token_usage_internal``: called once per answered provider request."""

    @functools.wraps(original)
    def _track_token_usage_internal(self: Any, usage_data: Any, *args: Any, **kw: Any) -> Any:
        result = original(self, usage_data, *args, **kw)
        scope = _scope.get()
        if scope is not None and scope.call is not None:
            usage = usage_from_crewai(usage_data)
            if usage is not None:
                scope.add_usage(usage)
        return result

    _track_token_usage_internal.__iron_crewai__ = True  # type: ignore[attr-defined]
    return _track_token_usage_internal


def wrap_stream_chunk(original: Any) -> Any:
    """``_emit_stream_chunk_event``: streamed text, counted if no usage comes."""

    @functools.wraps(original)
    def _emit_stream_chunk_event(self: Any, *args: Any, **kwargs: Any) -> Any:
        scope = _scope.get()
        if scope is not None and scope.call is not None:
            chunk = kwargs.get("chunk", args[0] if args else None)
            if isinstance(chunk, str) and chunk:
                scope.parts.append(chunk)
        return original(self, *args, **kwargs)

    _emit_stream_chunk_event.__iron_crewai__ = True  # type: ignore[attr-defined]
    return _emit_stream_chunk_event


def _as_dict(data: Any) -> dict[str, Any] | None:
    if data is None or isinstance(data, dict):
        return data
    dump = getattr(data, "model_dump", None)  # litellm's Usage object
    if callable(dump):
        return dump()
    try:
        return dict(data)
    except (TypeError, ValueError):
        return None


def usage_from_crewai(data: Any) -> Usage | None:
    """Our :class:`Usage` from the raw usage CrewAI tracks (any provider's key names).

    ``None`` when the provider reported no tokens (e.g. OpenAI's ``{"total_tokens": 0}``).
    """
    from crewai.types.usage_metrics import UsageMetrics

    raw = _as_dict(data)
    if not raw:
        return None
    if "inputTokens" in raw:  # Bedrock's converse API
        raw = {"input_tokens": raw.get("inputTokens", 0),
               "output_tokens": raw.get("outputTokens", 0),
               "cached_prompt_tokens": raw.get("cacheReadInputTokens")
               or raw.get("cacheReadInputTokenCount") or 0}
    metrics = UsageMetrics.from_provider_dict(raw)
    if metrics is None or not (metrics.prompt_tokens or metrics.completion_tokens):
        return None
    return Usage(input_tokens=metrics.prompt_tokens, output_tokens=metrics.completion_tokens,
                 cached_input_tokens=metrics.cached_prompt_tokens,
                 cache_creation_tokens=metrics.cache_creation_tokens,
                 reasoning_tokens=metrics.reasoning_tokens)
