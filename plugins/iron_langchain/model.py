"""``governed(model)``: a chat model whose prompts are governed — and redacted — before
the wrapped model sees them. The way to redact for any LangChain chat model (a callback
cannot rewrite a prompt)::

    model = governed(ChatAnthropic(model="claude-3-5-haiku-latest"))
    chain = prompt | model | StrOutputParser()

Inside a protected function (or with ``session=``) each call runs the request policies on
the LangChain messages, sends the redacted copies, and settles from the reply's
``usage_metadata`` (streams: summed over the chunks; ChatOpenAI is asked for its usage
chunk), counting the text when the provider reported none. The wrapped model runs under
``outer_governed()``, so neither the automatic callback handler nor the openai-client
plugin charges the request again. Outside a session, or under an outer iron integration
(``IronMiddleware``), it passes calls straight through.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import Field

from iron_langchain.convert import (
    GOVERNED_TYPE,
    MessageMeter,
    begin,
    is_openai_chat,
    ls_params,
    model_params,
    unwrap,
)
from iron_sdk.integration import Session, active_session, is_outer_governed, outer_governed

_END = object()


class IronChatModel(BaseChatModel):
    """Wraps ``inner`` (a chat model, or one with tools bound); see :func:`governed`."""

    inner: Runnable[LanguageModelInput, BaseMessage]
    model: str | None = None
    """Model name to price the calls as (default: the wrapped model's)."""
    session: Any = Field(default=None, exclude=True)  # a Session (not validated by pydantic)
    """Session to govern with outside a protected function (inside, that one wins)."""

    @property
    def _llm_type(self) -> str:
        return GOVERNED_TYPE

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = ls_params(self.inner, stop, **kwargs) or super()._get_ls_params(stop, **kwargs)
        if self.model:
            params["ls_model_name"] = self.model
        return params  # type: ignore[return-value]

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> IronChatModel:  # type: ignore[override]
        return self.model_copy(update={"inner": self.inner.bind_tools(tools, **kwargs)})  # type: ignore[attr-defined]

    # -- governance -------------------------------------------------------------------
    def _begin(self, messages: list[BaseMessage], stop: list[str] | None,
               kwargs: dict[str, Any], run_manager: Any, stream: bool
               ) -> tuple[MessageMeter, list[BaseMessage]] | None:
        if is_outer_governed():
            return None
        session = active_session() or self.session
        if session is None:
            return None
        # LangChain put this call's ls params in the run's metadata already (for tracing).
        ls = getattr(run_manager, "metadata", None) or {}
        if "ls_model_name" not in ls:
            ls = self._get_ls_params(stop, **kwargs)
        params = model_params(ls, type(unwrap(self.inner)[0]).__name__)
        call, sent = begin(session, messages, params, stream=stream)
        return MessageMeter(call), sent

    def _stream_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        # ChatOpenAI on a custom base_url sends no usage chunk unless asked.
        return {"stream_usage": True, **kwargs} if is_openai_chat(self.inner) else kwargs

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        config = _child(run_manager)
        governed = self._begin(messages, stop, kwargs, run_manager, stream=False)
        if governed is None:
            return _result(self.inner.invoke(messages, config, stop=stop, **kwargs))
        meter, sent = governed
        try:
            with outer_governed():
                message = self.inner.invoke(sent, config, stop=stop, **kwargs)
        except BaseException as exc:
            meter.fail(exc)
            raise
        meter.add(message)
        meter.finish()
        return _result(message)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        config = _child(run_manager)
        governed = self._begin(messages, stop, kwargs, run_manager, stream=False)
        if governed is None:
            return _result(await self.inner.ainvoke(messages, config, stop=stop, **kwargs))
        meter, sent = governed
        try:
            with outer_governed():
                message = await self.inner.ainvoke(sent, config, stop=stop, **kwargs)
        except BaseException as exc:
            meter.fail(exc)
            raise
        meter.add(message)
        meter.finish()
        return _result(message)

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        config = _child(run_manager)
        governed = self._begin(messages, stop, kwargs, run_manager, stream=True)
        if governed is None:
            for chunk in self.inner.stream(messages, config, stop=stop, **kwargs):
                yield _chunk(chunk, run_manager)
            return
        meter, sent = governed
        chunks = iter(self.inner.stream(sent, config, stop=stop, **self._stream_kwargs(kwargs)))
        try:
            while True:
                with outer_governed():  # only while the wrapped model runs, not the caller
                    chunk = next(chunks, _END)
                if chunk is _END:
                    break
                meter.add(chunk)
                yield _chunk(chunk, run_manager)
        except GeneratorExit:
            meter.finish()  # abandoned: charged for what was generated
            raise
        except BaseException as exc:
            meter.fail(exc)
            raise
        meter.finish()

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        config = _child(run_manager)
        governed = self._begin(messages, stop, kwargs, run_manager, stream=True)
        if governed is None:
            async for chunk in self.inner.astream(messages, config, stop=stop, **kwargs):
                yield await _achunk(chunk, run_manager)
            return
        meter, sent = governed
        chunks = aiter(self.inner.astream(sent, config, stop=stop,
                                          **self._stream_kwargs(kwargs)))
        try:
            while True:
                with outer_governed():
                    chunk = await anext(chunks, _END)
                if chunk is _END:
                    break
                meter.add(chunk)
                yield await _achunk(chunk, run_manager)
        except GeneratorExit:
            meter.finish()
            raise
        except BaseException as exc:
            meter.fail(exc)
            raise
        meter.finish()


def governed(model: Runnable[LanguageModelInput, BaseMessage], *, price_as: str | None = None,
             session: Session | None = None) -> IronChatModel:
    """``model`` with its prompts governed and redacted before it sees them.

    ``price_as`` names the model to price calls as (default: the model's own name);
    ``session`` governs outside protected functions (e.g. ``IronCallbackHandler(...).session``).
    """
    return IronChatModel(inner=model, model=price_as, session=session)


def _child(run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None
           ) -> RunnableConfig | None:
    """Callbacks for the wrapped model: its run is a child of the wrapper's (tracing shows
    both). LLM run managers have no ``get_child``; this is what it does for chains."""
    if run_manager is None:
        return None
    sync = isinstance(run_manager, CallbackManagerForLLMRun)
    manager = (CallbackManager if sync else AsyncCallbackManager)(
        handlers=[], parent_run_id=run_manager.run_id)
    manager.set_handlers(run_manager.inheritable_handlers)
    manager.add_tags(run_manager.inheritable_tags)
    manager.add_metadata(run_manager.inheritable_metadata)
    return {"callbacks": manager}


def _result(message: BaseMessage) -> ChatResult:
    return ChatResult(generations=[ChatGeneration(message=message)])


def _generation(chunk: BaseMessage) -> ChatGenerationChunk:
    if not isinstance(chunk, AIMessageChunk):  # a model without streaming yields its reply
        chunk = AIMessageChunk(
            content=chunk.content, id=chunk.id, response_metadata=chunk.response_metadata,
            usage_metadata=getattr(chunk, "usage_metadata", None),
            tool_call_chunks=[{"name": tc["name"], "args": json.dumps(tc["args"]),
                               "id": tc["id"], "index": i, "type": "tool_call_chunk"}
                              for i, tc in enumerate(getattr(chunk, "tool_calls", ()))])
    return ChatGenerationChunk(message=chunk)


def _chunk(chunk: BaseMessage, run_manager: CallbackManagerForLLMRun | None
           ) -> ChatGenerationChunk:
    gen = _generation(chunk)
    if run_manager is not None:
        run_manager.on_llm_new_token(gen.text, chunk=gen)
    return gen


async def _achunk(chunk: BaseMessage, run_manager: AsyncCallbackManagerForLLMRun | None
                  ) -> ChatGenerationChunk:
    gen = _generation(chunk)
    if run_manager is not None:
        await run_manager.on_llm_new_token(gen.text, chunk=gen)
    return gen
