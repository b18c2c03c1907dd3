"""The meter: how every door and plugin settles a call, exactly once.

A call is settled from, in order of preference:

1. the usage the provider reported (a response's ``usage``, a stream's usage chunk or
   final event);
2. the text it generated, counted with the model's tokenizer (``usage.counted``);
3. nothing readable: the reservation is charged and a ``usage_missing`` event says so
   (never $0 silently).

An abandoned stream pays for what was generated; a stream that failed before producing
anything is released. :func:`ask_for_usage` owns "ask the provider for the usage chunk,
hide it from a caller who did not ask for it". Provider formats are read here, once:
OpenAI chat/completion chunks, Responses API events, Anthropic message events.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from iron_sdk.call import Usage, field_of
from iron_sdk.events import call_event
from iron_sdk.tokens import count_text
from iron_sdk.usage import usage_from_anthropic, usage_from_openai

if TYPE_CHECKING:
    from iron_sdk.call import LlmCall
    from iron_sdk.request import LlmRequest
    from iron_sdk.safety.response import ResponseGuard

Protocol = Literal["openai", "responses", "anthropic"]


def ask_for_usage(request: LlmRequest) -> bool:
    """Make a streamed chat/completion request carry its usage chunk; True when the
    caller did not ask for it (so the meter hides it from them). Responses and Anthropic
    streams always report usage."""
    if not request.stream or request.kind not in ("chat", "completion"):
        return False
    options = request.body.get("stream_options") or {}
    if options.get("include_usage"):
        return False
    request.set_field("stream_options", {**options, "include_usage": True})
    return True


def protocol_of(request: LlmRequest) -> Protocol:
    """The response format a request of this kind is answered in."""
    if request.kind == "responses":
        return "responses"
    if request.kind == "anthropic":
        return "anthropic"
    return "openai"


class Meter:
    """Settles one call exactly once; see the module docstring for the order."""

    __slots__ = ("call", "parts", "usage", "partial", "done", "hide_usage", "protocol",
                 "guard", "log_answer", "_observe")

    def __init__(self, call: LlmCall, *, hide_usage: bool = False,
                 protocol: Protocol | None = None) -> None:
        self.call = call
        self.parts: list[str] = []
        self.usage: Usage | None = None
        self.partial = False  # the usage is a stream's opening count, not its final one
        self.done = False
        self.hide_usage = hide_usage
        self.protocol: Protocol = protocol or protocol_of(call.request)
        self._observe = _OBSERVERS[self.protocol]
        # What the model answers is scanned too (SafetyConfig.response): redacted or
        # blocked as it streams, or (``log``) scanned once whole when the call settles.
        action = call.session.safety.response
        self.log_answer = action == "log"
        self.guard: ResponseGuard | None = None
        if action in ("redact", "block"):
            from iron_sdk.safety.response import ResponseGuard

            self.guard = ResponseGuard(call)

    def observe(self, chunk: Any) -> bool:
        """Meter one stream chunk or event (object or dict). False for a chunk that
        carries only the usage the caller did not ask for: do not show it to them."""
        return self._observe(self, chunk) or not self.hide_usage

    def take(self, chunk: Any) -> list[Any]:
        """Meter one stream chunk and scan it (redacted in place where the response
        policy redacts); returns the chunks to pass on: none for a hidden usage chunk,
        two when held text is released before it. Raises the response policy's
        :class:`~iron_sdk.errors.SafetyViolationError` under ``block``."""
        show = self.observe(chunk)
        if self.guard is None:
            return [chunk] if show else []
        out = self.guard.chunk(chunk, self.protocol)
        return out if show else out[:-1]

    def end(self) -> list[Any]:
        """The stream is over: chunks carrying text the scan still held, if any."""
        return self.guard.close(self.protocol) if self.guard is not None else []

    def finish(self) -> None:
        """The stream ended (or was abandoned): settle with its usage, else the text."""
        if self.done:
            return
        self.done = True
        usage = self.usage
        if usage is not None and self.partial and self.parts:
            # left before the final counts (Anthropic's message_start reports input and
            # 1 output token): the input as reported, the output generated so far counted
            generated = count_text(self.call.model, "".join(self.parts))
            if generated > usage.output_tokens:
                usage.output_tokens, usage.counted = generated, True
        if usage is not None:
            self.call.session.runtime.settle_call(self.call, usage)
        else:
            settle_text(self.call, "".join(self.parts))
        if self.guard is not None:
            self.guard.done()  # report what the answer contained
        elif self.log_answer and self.parts:
            _log_answer(self.call, "".join(self.parts))

    def fail(self, error: BaseException) -> None:
        """The stream failed: generated tokens are billed, else the call is released."""
        if self.done:
            return
        if self.parts or self.usage:
            self.finish()
        else:
            self.done = True
            self.call.session.runtime.fail_call(self.call, error)

    def record(self, usage: Usage) -> None:
        """Settle with a usage the integration read itself (a cache hit: ``Usage()``)."""
        if self.done:
            return
        self.done = True
        self.call.session.runtime.settle_call(self.call, usage)

    def settle(self, result: Any) -> bool:
        """Settle from a complete answer (object or dict, any protocol), then scan it
        (in place); True when the scan changed it. Raises the response policy's
        :class:`~iron_sdk.errors.SafetyViolationError` under ``block`` (the call is
        charged all the same)."""
        if self.done:
            return False
        self.done = True
        settle_response(self.call, result, self.protocol)
        if self.guard is not None:
            return self.guard.answer(result, self.protocol)
        if self.log_answer:
            text = response_text(result, self.protocol)
            if text:
                _log_answer(self.call, text)
        return False


def settle_response(call: LlmCall, result: Any, protocol: Protocol | None = None) -> None:
    """Settle ``call`` from a complete answer: its usage, else its text counted, else
    the reservation (``usage_missing``)."""
    protocol = protocol or protocol_of(call.request)
    usage = _usage(result, protocol)
    if usage is not None and (usage.input_tokens or usage.output_tokens):
        call.session.runtime.settle_call(call, usage)
        return
    text = response_text(result, protocol)
    if text is None:
        settle_reserved(call)
    else:
        settle_text(call, text)


def _log_answer(call: LlmCall, text: str) -> None:
    from iron_sdk.safety.response import log_answer

    log_answer(call, text)


def settle_text(call: LlmCall, text: str) -> None:
    """No usage reported: charge the estimated input and the generated text counted."""
    call.session.runtime.settle_call(call, Usage(
        input_tokens=call.input_tokens_est, output_tokens=count_text(call.model, text),
        counted=True))


def settle_reserved(call: LlmCall) -> None:
    """Nothing tells what the call used: charge what was reserved, on the record."""
    runtime = call.session.runtime
    runtime.settle_call(call, Usage(input_tokens=call.input_tokens_est,
                                    output_tokens=call.max_output_tokens, counted=True))
    runtime.emit(call_event("usage_missing", call))


def response_text(result: Any, protocol: Protocol = "openai") -> str | None:
    """The generated text of a complete answer (None when the answer is unreadable)."""
    if result is None:
        return None
    if protocol == "anthropic":
        blocks = field_of(result, "content")
        if not isinstance(blocks, list):
            return None
        return "".join(_block_text(b) for b in blocks)
    if protocol == "responses":
        text = field_of(result, "output_text")
        if isinstance(text, str):
            return text
        output = field_of(result, "output")
        if not isinstance(output, list):
            return None
        return "".join(_item_text(item) for item in output)
    choices = field_of(result, "choices")
    if choices is None:
        data = field_of(result, "data")  # embeddings: nothing generated
        return "" if isinstance(data, list) else None
    return "".join(_choice_text(c) for c in choices or ())


def _usage(result: Any, protocol: Protocol) -> Usage | None:
    if result is None:
        return None
    if protocol == "anthropic":
        return usage_from_anthropic(field_of(result, "usage"))
    tier = field_of(result, "service_tier")
    return usage_from_openai(field_of(result, "usage"),
                             service_tier=tier if isinstance(tier, str) else None)


def _choice_text(choice: Any) -> str:
    message = field_of(choice, "message")
    if message is None:
        text = field_of(choice, "text")  # a text completion
        return text if isinstance(text, str) else ""
    text = field_of(message, "content")
    out = text if isinstance(text, str) else ""
    for tool_call in field_of(message, "tool_calls") or ():
        function = field_of(tool_call, "function")
        arguments = field_of(function, "arguments") if function is not None else None
        if isinstance(arguments, str):
            out += arguments
    return out


def _item_text(item: Any) -> str:
    arguments = field_of(item, "arguments")
    if isinstance(arguments, str):
        return arguments
    return "".join(field_of(c, "text") or "" for c in field_of(item, "content") or ())


def _block_text(block: Any) -> str:
    text = field_of(block, "text")
    if isinstance(text, str):
        return text
    data = field_of(block, "input")
    return str(data) if data else ""


# -- stream observers: record text and usage, True when the chunk is for the caller ------
def _observe_openai(meter: Meter, chunk: Any) -> bool:
    usage = field_of(chunk, "usage")
    if usage is not None:
        meter.usage = usage_from_openai(usage)
    choices = field_of(chunk, "choices") or ()
    for choice in choices:
        delta = field_of(choice, "delta")
        if delta is None:
            text = field_of(choice, "text")  # a text-completion chunk
            if isinstance(text, str) and text:
                meter.parts.append(text)
            continue
        content = field_of(delta, "content")
        if content:
            meter.parts.append(content)
        for tool_call in field_of(delta, "tool_calls") or ():
            function = field_of(tool_call, "function")
            arguments = field_of(function, "arguments") if function is not None else None
            if arguments:
                meter.parts.append(arguments)
    return bool(choices) or usage is None


def _observe_responses(meter: Meter, event: Any) -> bool:
    kind = field_of(event, "type")
    if kind in ("response.output_text.delta", "response.function_call_arguments.delta",
                "response.refusal.delta"):
        delta = field_of(event, "delta")
        if delta:
            meter.parts.append(delta)
    elif kind in ("response.completed", "response.incomplete", "response.failed"):
        usage = usage_from_openai(field_of(field_of(event, "response"), "usage"))
        if usage is not None:
            meter.usage = usage
    return True


def _observe_anthropic(meter: Meter, event: Any) -> bool:
    kind = field_of(event, "type")
    if kind == "content_block_delta":
        delta = field_of(event, "delta")
        text = field_of(delta, "text") or field_of(delta, "partial_json")
        if text:
            meter.parts.append(text)
    elif kind == "message_start":
        meter.usage = usage_from_anthropic(field_of(field_of(event, "message"), "usage"))
        meter.partial = meter.usage is not None
    elif kind == "message_delta":  # the final counts (input repeated by newer APIs)
        usage = field_of(event, "usage")
        output = field_of(usage, "output_tokens") if usage is not None else None
        if output is not None:
            base = meter.usage or Usage()
            if field_of(usage, "input_tokens") is not None:
                base = usage_from_anthropic(usage) or base
            base.output_tokens = output
            meter.usage, meter.partial = base, False
    return True


_OBSERVERS: dict[str, Callable[[Meter, Any], bool]] = {
    "openai": _observe_openai, "responses": _observe_responses,
    "anthropic": _observe_anthropic}


class MeteredStream:
    """A provider stream (sync or async), metered: yields the chunks the caller asked
    for and settles exactly once when exhausted, failed, closed or dropped. The rest of
    the stream's interface passes through."""

    def __init__(self, stream: Any, meter: Meter) -> None:
        self._stream, self._meter = stream, meter
        self._ready: list[Any] = []  # chunks to hand out before reading more
        self._ended = False

    def __iter__(self) -> MeteredStream:
        return self

    def __next__(self) -> Any:
        while not self._ready:
            if self._ended:
                raise StopIteration
            try:
                chunk = next(self._stream)
            except StopIteration:
                self._end()
                continue
            except BaseException as exc:
                self._meter.fail(exc)
                raise
            self._take(chunk)
        return self._ready.pop(0)

    def __aiter__(self) -> MeteredStream:
        return self

    async def __anext__(self) -> Any:
        while not self._ready:
            if self._ended:
                raise StopAsyncIteration
            try:
                chunk = await self._stream.__anext__()
            except StopAsyncIteration:
                self._end()
                continue
            except BaseException as exc:
                self._meter.fail(exc)
                raise
            self._take(chunk)
        return self._ready.pop(0)

    def _take(self, chunk: Any) -> None:
        try:
            self._ready.extend(self._meter.take(chunk))
        except BaseException as exc:  # the response policy blocks the rest
            self._ended = True
            self._meter.finish()  # what was generated is charged
            raise exc from None

    def _end(self) -> None:
        self._ended = True
        try:
            self._ready.extend(self._meter.end())
        finally:
            self._meter.finish()

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
