"""Governing one model call by hand (``llm_call``) and the pieces plugins share.

Every integration — ours or a user's — drives a call the same way:
``runtime.begin_call`` before the request, then ``settle_call`` with the usage or
``fail_call`` with the error. :class:`StreamMeter` does the settling for streams.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import Any

from iron_sdk.call import LlmCall, Usage, field_of, usage_from_openai
from iron_sdk.errors import IronCageError
from iron_sdk.events import call_event
from iron_sdk.session import active_session
from iron_sdk.tokens import count_text


class LlmCallGuard:
    """Context manager returned by :func:`llm_call`."""

    def __init__(self, model: str, messages: list[dict[str, Any]], max_tokens: int | None,
                 **options: Any) -> None:
        self._args = (model, messages, max_tokens)
        self._options = options
        self.call: LlmCall | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The messages to send: redacted where the safety policy redacts."""
        assert self.call is not None, "use llm_call(...) as a context manager"
        return self.call.messages

    @property
    def cost_usd(self) -> float:
        return self.call.cost_usd if self.call else 0.0

    def record(self, input_tokens: int, output_tokens: int, *, cached_input_tokens: int = 0,
               reasoning_tokens: int = 0) -> None:
        """Report the usage the provider returned; the call is charged for it."""
        assert self.call is not None, "record() belongs inside the with block"
        self.call.session.runtime.settle_call(self.call, Usage(
            input_tokens=input_tokens, output_tokens=output_tokens,
            cached_input_tokens=cached_input_tokens, reasoning_tokens=reasoning_tokens))

    def __enter__(self) -> LlmCallGuard:
        session = active_session()
        if session is None:
            raise IronCageError("llm_call() must run inside a @protect_agent function.")
        model, messages, max_tokens = self._args
        self.call = session.runtime.begin_call(session, model=model, messages=messages,
                                               max_tokens=max_tokens, **self._options)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        call = self.call
        if call is None or call.outcome != "pending":
            return
        runtime = call.session.runtime
        if exc is not None:
            runtime.fail_call(call, exc)
            return
        # Left without record(): never charge $0 silently — charge what was reserved.
        runtime.settle_call(call, Usage(input_tokens=call.input_tokens_est,
                                        output_tokens=call.max_output_tokens, counted=True))
        runtime.emit(call_event("usage_missing", call))

    async def __aenter__(self) -> LlmCallGuard:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


def llm_call(*, model: str, messages: list[dict[str, Any]], max_tokens: int | None = None,
             stream: bool = False, source: str = "llm_call") -> LlmCallGuard:
    """Govern a call made with any client::

        with llm_call(model="gpt-4o-mini", messages=msgs, max_tokens=200) as call:
            reply = my_client.chat(call.messages)          # possibly redacted
            call.record(input_tokens=reply.in_tok, output_tokens=reply.out_tok)

    Entering runs the request policies (may raise ``BudgetExceededError`` or
    ``SafetyViolationError``); leaving with an exception releases the reservation.
    """
    return LlmCallGuard(model, messages, max_tokens, stream=stream, source=source)


class StreamMeter:
    """Settles a streamed call exactly once: with the provider's usage chunk when one
    came, else with the streamed text counted; an abandoned stream pays for what was
    generated, a stream that produced nothing and failed is released."""

    __slots__ = ("call", "parts", "usage", "done")

    def __init__(self, call: LlmCall) -> None:
        self.call = call
        self.parts: list[str] = []
        self.usage: Usage | None = None
        self.done = False

    def observe(self, chunk: Any) -> bool:
        """Meter one OpenAI-format stream chunk (object or dict): its text, tool-call
        arguments and usage. False for a usage-only chunk (no choices), which a caller
        that did not ask for usage should not be shown."""
        usage = field_of(chunk, "usage")
        if usage is not None:
            self.usage = usage_from_openai(usage)
        choices = field_of(chunk, "choices") or ()
        for choice in choices:
            delta = field_of(choice, "delta")
            if delta is None:
                text = field_of(choice, "text")  # a text-completion chunk
                if isinstance(text, str) and text:
                    self.parts.append(text)
                continue
            content = field_of(delta, "content")
            if content:
                self.parts.append(content)
            for tool_call in field_of(delta, "tool_calls") or ():
                function = field_of(tool_call, "function")
                arguments = field_of(function, "arguments") if function is not None else None
                if arguments:
                    self.parts.append(arguments)
        return bool(choices) or usage is None

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        call = self.call
        usage = self.usage or Usage(
            input_tokens=call.input_tokens_est,
            output_tokens=count_text(call.model, "".join(self.parts)), counted=True)
        call.session.runtime.settle_call(call, usage)

    def fail(self, error: BaseException) -> None:
        if self.done:
            return
        if self.parts or self.usage:
            self.finish()  # tokens were generated: they are billed
        else:
            self.done = True
            self.call.session.runtime.fail_call(self.call, error)


Observe = Callable[[StreamMeter, Any], bool]  # meters one chunk; False hides it


class MeteredStream:
    """A provider stream (sync or async), metered: yields the chunks the caller asked
    for and settles exactly once when exhausted, failed, closed or dropped (an abandoned
    stream pays for what was generated). ``observe`` meters one chunk (default:
    OpenAI-format chunks); the rest of the stream's interface passes through."""

    def __init__(self, stream: Any, meter: StreamMeter, hide_usage: bool = False,
                 observe: Observe | None = None) -> None:
        self._stream, self._meter, self._hide = stream, meter, hide_usage
        self._observe: Observe = observe or StreamMeter.observe

    def __iter__(self) -> MeteredStream:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                chunk = next(self._stream)
            except StopIteration:
                self._meter.finish()
                raise
            except BaseException as exc:
                self._meter.fail(exc)
                raise
            if self._observe(self._meter, chunk) or not self._hide:
                return chunk

    def __aiter__(self) -> MeteredStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                chunk = await self._stream.__anext__()
            except StopAsyncIteration:
                self._meter.finish()
                raise
            except BaseException as exc:
                self._meter.fail(exc)
                raise
            if self._observe(self._meter, chunk) or not self._hide:
                return chunk

    def close(self) -> Any:
        """Close the stream; awaitable when the stream's own ``close`` is (openai's
        ``AsyncStream``)."""
        try:
            pending = self._stream.close()
        except BaseException:
            self._meter.finish()
            raise
        if inspect.isawaitable(pending):
            return self._finish_after(pending)
        self._meter.finish()
        return None

    async def aclose(self) -> None:
        closer = getattr(self._stream, "aclose", None) or self._stream.close
        await self._finish_after(closer())

    async def _finish_after(self, pending: Any) -> None:
        try:
            if inspect.isawaitable(pending):
                await pending
        finally:
            self._meter.finish()

    def __enter__(self) -> MeteredStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> MeteredStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if not self._meter.done:
            with contextlib.suppress(Exception):  # never raise from the garbage collector
                self._meter.finish()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


_outer: ContextVar[bool] = ContextVar("iron_outer_governed", default=False)


def is_outer_governed() -> bool:
    """True while an outer integration (e.g. LangChain's) governs the request in flight,
    so an inner one (the openai client under ChatOpenAI) must not charge it again."""
    return _outer.get()


@contextmanager
def outer_governed() -> Iterator[None]:
    token = _outer.set(True)
    try:
        yield
    finally:
        _outer.reset(token)
