"""Patches the ``openai`` resource classes so calls made inside a protected function go
through the runtime: request policies before, settlement after, exactly once."""

from __future__ import annotations

import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from iron_sdk.call import LlmCall, Usage, usage_from_openai
from iron_sdk.guard import StreamMeter, is_outer_governed
from iron_sdk.session import active_session
from iron_sdk.tokens import count_text

_lock = threading.Lock()
_originals: dict[tuple[type, str], Callable[..., Any]] = {}


def _targets() -> list[tuple[type, str, str]]:
    from openai.resources.chat.completions import AsyncCompletions, Completions
    from openai.resources.embeddings import AsyncEmbeddings, Embeddings

    return [(Completions, "create", "chat"), (Completions, "parse", "chat"),
            (AsyncCompletions, "create", "chat"), (AsyncCompletions, "parse", "chat"),
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


def _settle(call: LlmCall, result: Any) -> None:
    parsed = result
    if not hasattr(result, "usage") and hasattr(result, "parse"):  # with_raw_response
        parsed = result.parse()
    usage = usage_from_openai(getattr(parsed, "usage", None))
    if usage is None or (not usage.input_tokens and not usage.output_tokens):
        text = "".join((getattr(c.message, "content", None) or "")
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
            return GovernedStream(result, StreamMeter(call), call.metadata["hide_usage"])
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
            return AsyncGovernedStream(result, StreamMeter(call), call.metadata["hide_usage"])
        _settle(call, result)
        return result
    return governed


class GovernedStream:
    """The user's ``Stream``, metered; settles when exhausted, closed or dropped."""

    def __init__(self, stream: Any, meter: StreamMeter, hide_usage: bool) -> None:
        self._stream, self._meter, self._hide = stream, meter, hide_usage
        self._iterator = self._iterate()

    def _iterate(self) -> Iterator[Any]:
        try:
            for chunk in self._stream:
                if self._meter.observe(chunk) or not self._hide:
                    yield chunk
        except GeneratorExit:
            self._meter.finish()  # abandoned: charged for what was generated
            raise
        except BaseException as exc:
            self._meter.fail(exc)
            raise
        self._meter.finish()

    def __iter__(self) -> Iterator[Any]:
        return self._iterator

    def __next__(self) -> Any:
        return next(self._iterator)

    def close(self) -> None:
        self._iterator.close()
        self._stream.close()
        self._meter.finish()

    def __enter__(self) -> GovernedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._meter.done:
            self._meter.finish()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class AsyncGovernedStream:
    """The user's ``AsyncStream``, metered like :class:`GovernedStream`."""

    def __init__(self, stream: Any, meter: StreamMeter, hide_usage: bool) -> None:
        self._stream, self._meter, self._hide = stream, meter, hide_usage
        self._iterator = self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        try:
            async for chunk in self._stream:
                if self._meter.observe(chunk) or not self._hide:
                    yield chunk
        except GeneratorExit:
            self._meter.finish()
            raise
        except BaseException as exc:
            self._meter.fail(exc)
            raise
        self._meter.finish()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterator

    async def __anext__(self) -> Any:
        return await self._iterator.__anext__()

    async def close(self) -> None:
        await self._iterator.aclose()
        await self._stream.close()
        self._meter.finish()

    async def __aenter__(self) -> AsyncGovernedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __del__(self) -> None:
        if not self._meter.done:
            self._meter.finish()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
