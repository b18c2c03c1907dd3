"""Patches the ``openai`` resource classes so calls made inside a protected function go
through the runtime: request policies before, settlement after, exactly once."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from iron_sdk.call import LlmCall, Usage, field_of, usage_from_openai
from iron_sdk.guard import MeteredStream, StreamMeter, is_outer_governed
from iron_sdk.session import active_session
from iron_sdk.tokens import count_text

_lock = threading.Lock()
_originals: dict[tuple[type, str], Callable[..., Any]] = {}


def _targets() -> list[tuple[type, str, str]]:
    from openai.resources.chat.completions import AsyncCompletions, Completions
    from openai.resources.embeddings import AsyncEmbeddings, Embeddings
    from openai.resources.responses import AsyncResponses, Responses

    return [(Completions, "create", "chat"), (Completions, "parse", "chat"),
            (AsyncCompletions, "create", "chat"), (AsyncCompletions, "parse", "chat"),
            (Responses, "create", "responses"), (Responses, "parse", "responses"),
            (AsyncResponses, "create", "responses"), (AsyncResponses, "parse", "responses"),
            (Embeddings, "create", "embedding"), (AsyncEmbeddings, "create", "embedding")]


def instrument() -> None:
    """Install the governed methods (idempotent)."""
    if _originals:
        return
    with _lock:
        if _originals:
            return
        for cls, name, kind in _targets():
            original = getattr(cls, name)
            _originals[(cls, name)] = original
            is_async = cls.__name__.startswith("Async")
            wrap = _wrap_async if is_async else _wrap_sync
            setattr(cls, name, wrap(original, kind))


def uninstrument() -> None:
    with _lock:
        for (cls, name), original in _originals.items():
            setattr(cls, name, original)
        _originals.clear()


def _begin(kind: str, kwargs: dict[str, Any]) -> LlmCall | None:
    """Run the request policies for these create() kwargs; None when not governed here."""
    session = active_session()
    if session is None or is_outer_governed():
        return None
    if kind == "embedding":
        raw = kwargs.get("input")
        texts = raw if isinstance(raw, list) else [raw]
        messages = [{"role": "user", "content": t} for t in texts if isinstance(t, str)]
        call = session.runtime.begin_call(session, model=kwargs.get("model"),
                                          messages=messages, kind="embedding",
                                          source="openai")
        if isinstance(raw, list) and len(messages) == len(raw):
            kwargs["input"] = [m["content"] for m in call.messages]
        elif isinstance(raw, str):
            kwargs["input"] = call.messages[0]["content"]
        return call
    if kind == "responses":
        return _begin_response(session, kwargs)
    stream = bool(kwargs.get("stream"))
    tools = kwargs.get("tools")
    call = session.runtime.begin_call(
        session, model=kwargs.get("model"), messages=kwargs.get("messages"),
        max_tokens=kwargs.get("max_completion_tokens") or kwargs.get("max_tokens"),
        stream=stream, source="openai", metadata={"tools": tools} if tools else None)
    kwargs["messages"] = call.messages
    if stream:
        options = kwargs.get("stream_options") or {}
        call.metadata["hide_usage"] = not options.get("include_usage")
        kwargs["stream_options"] = {**options, "include_usage": True}
    return call


def _begin_response(session: Any, kwargs: dict[str, Any]) -> LlmCall:
    """The Responses API: ``instructions`` and ``input`` (a string, or items of which the
    role/content ones are messages) are what the policies see; redactions go back."""
    instructions, raw = kwargs.get("instructions"), kwargs.get("input")
    messages: list[dict[str, Any]] = []
    if isinstance(instructions, str):
        messages.append({"role": "system", "content": instructions})
    if isinstance(raw, str):
        messages.append({"role": "user", "content": raw})
        positions: list[int] = []
    else:
        positions = [i for i, item in enumerate(raw or ())
                     if isinstance(item, dict) and "role" in item and "content" in item]
        messages += [raw[i] for i in positions]
    call = session.runtime.begin_call(
        session, model=kwargs.get("model"), messages=messages,
        max_tokens=kwargs.get("max_output_tokens"), stream=bool(kwargs.get("stream")),
        source="openai")
    if call.redacted:
        out = iter(call.messages)
        if isinstance(instructions, str):
            kwargs["instructions"] = next(out)["content"]
        if isinstance(raw, str):
            kwargs["input"] = next(out)["content"]
        else:
            items = list(raw)
            for i in positions:
                items[i] = next(out)
            kwargs["input"] = items
    call.metadata["hide_usage"] = False  # Responses streams always carry their usage
    call.metadata["observe"] = _observe_response_event
    return call


def _observe_response_event(meter: StreamMeter, event: Any) -> bool:
    """Meter one Responses stream event: text and argument deltas, usage at the end."""
    kind = field_of(event, "type")
    if kind in ("response.output_text.delta", "response.function_call_arguments.delta"):
        delta = field_of(event, "delta")
        if delta:
            meter.parts.append(delta)
    elif kind == "response.completed":
        meter.usage = usage_from_openai(field_of(field_of(event, "response"), "usage"))
    return True


def _settle(call: LlmCall, result: Any) -> None:
    parsed = result
    if not hasattr(result, "usage") and hasattr(result, "parse"):  # with_raw_response
        parsed = result.parse()
    usage = usage_from_openai(getattr(parsed, "usage", None))
    if usage is None or (not usage.input_tokens and not usage.output_tokens):
        text = getattr(parsed, "output_text", None) or "".join(
            (getattr(c.message, "content", None) or "")
            for c in getattr(parsed, "choices", None) or ())
        usage = Usage(input_tokens=call.input_tokens_est,
                      output_tokens=count_text(call.model, text), counted=True)
    call.session.runtime.settle_call(call, usage)


def _wrap_sync(original: Callable[..., Any], kind: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def governed(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = _begin(kind, kwargs)
        if call is None:
            return original(self, *args, **kwargs)
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            call.session.runtime.fail_call(call, exc)
            raise
        if call.stream:
            return MeteredStream(result, StreamMeter(call), call.metadata["hide_usage"],
                                 call.metadata.get("observe"))
        _settle(call, result)
        return result
    return governed


def _wrap_async(original: Callable[..., Any], kind: str) -> Callable[..., Any]:
    @functools.wraps(original)
    async def governed(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = _begin(kind, kwargs)
        if call is None:
            return await original(self, *args, **kwargs)
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:
            call.session.runtime.fail_call(call, exc)
            raise
        if call.stream:
            return MeteredStream(result, StreamMeter(call), call.metadata["hide_usage"],
                                 call.metadata.get("observe"))
        _settle(call, result)
        return result
    return governed
