"""Patches the ``openai`` resource classes so calls made inside a protected function go
through the runtime: request policies before, settlement after, exactly once. The
request is read and the answer settled by :mod:`iron_sdk.integration`; this module only
says which methods send which kind of request."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from iron_sdk.integration import Patches, adeliver, begin, deliver, is_ic_token

patches = Patches()


def _targets() -> list[tuple[type, str, str]]:
    from openai.resources.chat.completions import AsyncCompletions, Completions
    from openai.resources.completions import AsyncCompletions as AsyncTextCompletions
    from openai.resources.completions import Completions as TextCompletions
    from openai.resources.embeddings import AsyncEmbeddings, Embeddings
    from openai.resources.responses import AsyncResponses, Responses

    return [(Completions, "create", "chat"), (Completions, "parse", "chat"),
            (AsyncCompletions, "create", "chat"), (AsyncCompletions, "parse", "chat"),
            (Responses, "create", "responses"), (Responses, "parse", "responses"),
            (AsyncResponses, "create", "responses"), (AsyncResponses, "parse", "responses"),
            (Embeddings, "create", "embedding"), (AsyncEmbeddings, "create", "embedding"),
            (TextCompletions, "create", "completion"),
            (AsyncTextCompletions, "create", "completion")]


def instrument(_module: Any = None) -> None:
    """Install the governed methods (idempotent). Done as soon as openai is imported
    (or the runtime starts), so ``with_raw_response``/``with_streaming_response``
    wrappers taken before the first session wrap the governed methods."""
    if patches.active:
        return
    for cls, name, kind in _targets():
        wrap = _wrap_async if cls.__name__.startswith("Async") else _wrap_sync
        patches.patch(cls, name, functools.partial(wrap, kind=kind))


def uninstrument() -> None:
    patches.undo()


def _routed(resource: Any) -> bool:
    """The client talks to an iron router (its API key is an IC token): the router
    governs the call, so it passes through here untouched."""
    return is_ic_token(getattr(getattr(resource, "_client", None), "api_key", None))


def _wrap_sync(original: Callable[..., Any], kind: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def governed(self: Any, *args: Any, **kwargs: Any) -> Any:
        governed_call = None if _routed(self) else begin(kind, kwargs, source="openai")
        if governed_call is None:
            return original(self, *args, **kwargs)
        call, meter = governed_call
        try:
            result = original(self, *args, **call.request.body)
        except BaseException as exc:
            call.session.runtime.fail_call(call, exc)
            raise
        return deliver(meter, result)
    return governed


def _wrap_async(original: Callable[..., Any], kind: str) -> Callable[..., Any]:
    @functools.wraps(original)
    async def governed(self: Any, *args: Any, **kwargs: Any) -> Any:
        governed_call = None if _routed(self) else begin(kind, kwargs, source="openai")
        if governed_call is None:
            return await original(self, *args, **kwargs)
        call, meter = governed_call
        try:
            result = await original(self, *args, **call.request.body)
        except BaseException as exc:
            call.session.runtime.fail_call(call, exc)
            raise
        return await adeliver(meter, result)
    return governed
