"""Between LangChain objects and the runtime's view of a call (OpenAI-shaped messages,
``Usage``), shared by the callback handler, the model wrapper and the agent middleware.

Imported only once LangChain is in use (never by ``iron_langchain.plugin`` at load time).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseLanguageModel
from langchain_core.messages import BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.runnables import Runnable, RunnableBinding

from iron_sdk.integration import LlmCall, LlmRequest, Meter, Usage

if TYPE_CHECKING:
    from iron_sdk.integration import Session

SOURCE = "langchain"
# ``_llm_type`` of IronChatModel: its own runs are governed by the wrapper, not the handler.
GOVERNED_TYPE = "iron-governed"

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool",
          "function": "function", "developer": "developer"}


def role_of(message: BaseMessage) -> str:
    kind = message.type.removesuffix("MessageChunk").lower()
    return getattr(message, "role", None) if kind == "chat" else _ROLES.get(kind, kind)


def to_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """The messages as the policies read them. ``content`` is the message's own object
    (string or LangChain content blocks, whose text parts are ``{"text": ...}``), so
    redaction can be mapped back onto the original messages."""
    out = []
    for m in messages:
        d: dict[str, Any] = {"role": role_of(m), "content": m.content}
        tool_calls = getattr(m, "tool_calls", None)
        if tool_calls:
            d["tool_calls"] = tool_calls  # counted in the reservation's input estimate
        out.append(d)
    return out


def redacted(messages: list[BaseMessage], sent: list[dict[str, Any]]) -> list[BaseMessage]:
    """``messages`` with the content the policies rewrote (the same list when unchanged)."""
    out: list[BaseMessage] | None = None
    for i, (message, d) in enumerate(zip(messages, sent, strict=True)):
        if d.get("content") != message.content:
            out = out or list(messages)
            out[i] = message.model_copy(update={"content": d["content"]})
    return messages if out is None else out


def begin(session: Session, messages: list[BaseMessage], params: dict[str, Any], *,
          stream: bool) -> tuple[LlmCall, list[BaseMessage]]:
    """Run the request policies on LangChain messages (raises the typed error to refuse);
    return the call and the messages to send — redacted where the policy redacts."""
    request = LlmRequest.chat(params["model"], to_dicts(messages),
                              max_tokens=params.get("max_tokens"), stream=stream)
    request.writable = _content_only  # redactions are mapped back per message content
    call = session.runtime.begin_call(session, request, source=SOURCE,
                                      provider=params.get("provider") or "")
    return call, redacted(messages, call.messages)


def _content_only(path: tuple[str | int, ...]) -> bool:
    return len(path) >= 3 and path[0] == "messages" and path[2] == "content"


def model_params(ls: dict[str, Any], fallback: str) -> dict[str, Any]:
    """Model, output cap and provider from LangChain's standard ``ls_*`` params."""
    return {"model": ls.get("ls_model_name") or fallback, "max_tokens": ls.get("ls_max_tokens"),
            "provider": ls.get("ls_provider")}


def unwrap(runnable: Runnable) -> tuple[Runnable, dict[str, Any]]:
    """The model under ``bind``/``bind_tools`` layers and the keyword arguments bound."""
    bound: dict[str, Any] = {}
    while isinstance(runnable, RunnableBinding):
        bound = {**runnable.kwargs, **bound}
        runnable = runnable.bound
    return runnable, bound


def ls_params(runnable: Runnable, stop: list[str] | None = None,
              **kwargs: Any) -> dict[str, Any]:
    """LangChain's tracing params (``ls_model_name``, ``ls_max_tokens``, ...) of a model."""
    model, bound = unwrap(runnable)
    if isinstance(model, BaseLanguageModel):
        get = getattr(model, "_get_ls_params", None)  # the standard per-provider hook
        if get is not None:
            return dict(get(stop=stop, **{**bound, **kwargs}))
    return {}


def is_openai_chat(runnable: Runnable) -> bool:
    """True for chat models built on the openai client (ChatOpenAI and its subclasses)."""
    base = sys.modules.get("langchain_openai.chat_models.base")
    return base is not None and isinstance(unwrap(runnable)[0], base.BaseChatOpenAI)


def usage_of(meta: UsageMetadata) -> Usage:
    """LangChain ``usage_metadata`` as a ``Usage`` (input includes cached tokens in both)."""
    inp = meta.get("input_token_details") or {}
    out = meta.get("output_token_details") or {}
    return Usage(input_tokens=meta.get("input_tokens") or 0,
                 output_tokens=meta.get("output_tokens") or 0,
                 cached_input_tokens=inp.get("cache_read") or 0,
                 cache_creation_tokens=inp.get("cache_creation") or 0,
                 reasoning_tokens=out.get("reasoning") or 0)


class MessageMeter:
    """Settles one governed call from what LangChain returned: the summed
    ``usage_metadata`` when the provider reported usage, else the text counted (by
    :class:`~iron_sdk.meter.Meter`, which also bills abandoned streams)."""

    __slots__ = ("meter", "_usage")

    def __init__(self, call: LlmCall) -> None:
        self.meter = Meter(call)
        self._usage: UsageMetadata | None = None

    def add(self, message: Any) -> None:
        """A message or chunk the model produced."""
        parts = self.meter.parts
        text = str(getattr(message, "text", "") or "")
        if text:
            parts.append(text)
        chunks = getattr(message, "tool_call_chunks", None)
        if chunks is not None:  # a streamed chunk: argument fragments
            parts.extend(tc["args"] for tc in chunks if tc.get("args"))
        else:
            parts.extend(json.dumps(tc["args"]) for tc in getattr(message, "tool_calls", ())
                         if tc.get("args"))
        meta = getattr(message, "usage_metadata", None)
        if meta is not None:
            self._usage = add_usage(self._usage, meta)

    def add_text(self, text: str) -> None:
        if text:
            self.meter.parts.append(text)

    def set_usage(self, usage: Usage) -> None:
        self.meter.usage = usage

    def _resolve(self) -> None:
        if self._usage is not None:
            self.meter.usage = usage_of(self._usage)

    def finish(self) -> None:
        self._resolve()
        self.meter.finish()

    def fail(self, error: BaseException) -> None:
        self._resolve()
        self.meter.fail(error)
