"""Governing one model call by hand (``llm_call``), and ``outer_governed``: the marker
that makes a request governed by an outer integration pass through inner ones.

Every integration — ours or a user's — drives a call the same way:
``runtime.begin_call`` before the request, then ``settle_call`` with the usage or
``fail_call`` with the error (:mod:`iron_sdk.meter` picks which).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import Any

from iron_sdk.call import LlmCall, Usage
from iron_sdk.errors import IronCageError
from iron_sdk.meter import settle_reserved
from iron_sdk.request import LlmRequest
from iron_sdk.session import active_session


class LlmCallGuard:
    """Context manager returned by :func:`llm_call`."""

    def __init__(self, model: str, messages: list[dict[str, Any]], max_tokens: int | None,
                 stream: bool, source: str) -> None:
        self._args = (model, messages, max_tokens, stream)
        self._source = source
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
        model, messages, max_tokens, stream = self._args
        request = LlmRequest.chat(model, messages, max_tokens=max_tokens, stream=stream)
        self.call = session.runtime.begin_call(session, request, source=self._source)
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
        settle_reserved(call)  # left without record(): never charge $0 silently

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
    return LlmCallGuard(model, messages, max_tokens, stream, source)


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
