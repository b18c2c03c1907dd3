"""Patches the ``anthropic`` Messages resources (and the beta ones) so calls made inside a
protected function go through the runtime: request policies before, settlement after,
exactly once. The request is read (kind ``"anthropic"``) and the answer settled by
:mod:`iron_sdk.integration`; this module only says which methods send a request and
where the client's answer objects keep the provider's events.

* ``create`` / ``parse``: the request is governed when sent; a message is settled from
  its usage, a ``stream=True`` answer is metered as it is read.
* ``stream(...)``: the request is governed when the manager is entered (that is when it
  is sent). The raw event stream under the ``MessageStream`` is metered, so every way of
  reading it (iterating, ``text_stream``, ``get_final_message()``, ``until_done()``)
  settles once; leaving the context early settles what was generated.
* ``with_raw_response`` (LangChain's ``ChatAnthropic`` sends through it): a message is
  settled at once; a stream is metered when the caller parses it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from iron_sdk.integration import (
    LlmCall,
    Meter,
    MeteredStream,
    Patches,
    Session,
    active_session,
    adeliver,
    begin,
    deliver,
    is_outer_governed,
    settle_reserved,
)

SOURCE = "anthropic"
PROVIDER = "anthropic"
KIND = "anthropic"

patches = Patches()


def _targets() -> list[type]:
    from anthropic.resources.beta.messages import AsyncMessages as AsyncBetaMessages
    from anthropic.resources.beta.messages import Messages as BetaMessages
    from anthropic.resources.messages import AsyncMessages, Messages

    return [Messages, AsyncMessages, BetaMessages, AsyncBetaMessages]


def instrument(_module: Any = None) -> None:
    """Install the governed methods (idempotent). Done when the runtime starts (or a
    session starts after anthropic was imported), so ``with_raw_response`` wrappers
    taken afterwards wrap the governed methods."""
    if patches.active:
        return
    for cls in _targets():
        is_async = cls.__name__.startswith("Async")
        for name in ("create", "parse"):
            if hasattr(cls, name):
                patches.patch(cls, name, _wrap_async if is_async else _wrap_sync)
        patches.patch(cls, "stream", functools.partial(_wrap_stream, is_async=is_async))


def uninstrument() -> None:
    patches.undo()


def _begin(kwargs: dict[str, Any], session: Session | None = None) -> tuple[LlmCall, Meter] | None:
    return begin(KIND, kwargs, source=SOURCE, provider=PROVIDER, session=session)


def _fail(call: LlmCall, error: BaseException) -> None:
    """The client raised: released, unless the provider answered and only reading the
    answer failed (``parse`` into the caller's type, a response the client could not
    validate) — then it billed, and the reservation is charged, on the record."""
    import anthropic
    import pydantic

    if isinstance(error, anthropic.APIResponseValidationError | pydantic.ValidationError):
        settle_reserved(call)
    else:
        call.session.runtime.fail_call(call, error)


# -- create / parse ---------------------------------------------------------------------
def _wrap_sync(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def governed(self: Any, *args: Any, **kwargs: Any) -> Any:
        governed_call = _begin(kwargs)
        if governed_call is None:
            return original(self, *args, **kwargs)
        call, meter = governed_call
        try:
            result = original(self, *args, **call.request.body)
        except BaseException as exc:
            _fail(call, exc)
            raise
        return deliver(meter, result)
    return governed


def _wrap_async(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def governed(self: Any, *args: Any, **kwargs: Any) -> Any:
        governed_call = _begin(kwargs)
        if governed_call is None:
            return await original(self, *args, **kwargs)
        call, meter = governed_call
        try:
            result = await original(self, *args, **call.request.body)
        except BaseException as exc:
            _fail(call, exc)
            raise
        return await adeliver(meter, result)
    return governed


# -- stream(...) ------------------------------------------------------------------------
def _wrap_stream(original: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    @functools.wraps(original)
    def governed(self: Any, *args: Any, **kwargs: Any) -> Any:
        if is_outer_governed():
            return original(self, *args, **kwargs)
        session = active_session()  # None: the runtime's outside session governs it
        manager = AsyncGovernedStreamManager if is_async else GovernedStreamManager
        return manager(functools.partial(original, self, *args), kwargs, session)
    return governed


class GovernedStreamManager:
    """Stands in for ``MessageStreamManager``: entering governs the request (refusals
    raise here, before anything is sent), sends it and meters the ``MessageStream``."""

    def __init__(self, open_manager: Callable[..., Any], kwargs: dict[str, Any],
                 session: Session | None) -> None:
        self._open, self._kwargs, self._session = open_manager, kwargs, session
        self._manager: Any = None
        self._meter: Meter | None = None

    def _prepare(self) -> Any:
        """Govern the request; the client's own manager for the (redacted) request."""
        governed_call = _begin({**self._kwargs, "stream": True}, self._session)
        if governed_call is None:
            self._manager = self._open(**self._kwargs)
            return self._manager
        call, self._meter = governed_call
        body = {k: v for k, v in call.request.body.items() if k != "stream"}
        try:
            self._manager = self._open(**body)
        except BaseException as exc:
            call.session.runtime.fail_call(call, exc)
            raise
        return self._manager

    def _metered(self, message_stream: Any) -> Any:
        # The MessageStream reads its raw events lazily from ``_raw_stream`` (its only
        # source: iteration, text_stream and get_final_message all go through it).
        # tests/test_anthropic.py fails loudly if a client release renames it.
        if self._meter is not None:
            message_stream._raw_stream = MeteredStream(message_stream._raw_stream, self._meter)
        return message_stream

    def _failed(self, exc: BaseException) -> None:
        if self._meter is not None:
            self._meter.fail(exc)

    def __enter__(self) -> Any:
        manager = self._prepare()
        try:
            return self._metered(manager.__enter__())
        except BaseException as exc:
            self._failed(exc)
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            self._manager.__exit__(*exc)
        finally:
            if self._meter is not None:
                self._meter.finish()  # a no-op once the stream settled


class AsyncGovernedStreamManager(GovernedStreamManager):
    """Stands in for ``AsyncMessageStreamManager`` (see :class:`GovernedStreamManager`)."""

    async def __aenter__(self) -> Any:
        manager = self._prepare()
        try:
            return self._metered(await manager.__aenter__())
        except BaseException as exc:
            self._failed(exc)
            raise

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._manager.__aexit__(*exc)
        finally:
            if self._meter is not None:
                self._meter.finish()
