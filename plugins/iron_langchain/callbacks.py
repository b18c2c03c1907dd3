"""``IronCallbackHandler``: LangChain model and tool runs under iron-sdk policy.

Attached automatically to every LangChain run inside a ``@protect_agent`` function (a
LangChain configure hook, installed by the plugin once ``langchain_core`` is loaded), and
usable by itself: ``callbacks=[IronCallbackHandler(agent_id="bot", budget_usd=0.5)]``
governs code outside any protected function with a session of its own.

Who governs — and charges, once — each model request:

* Chat models built on the openai client (``ChatOpenAI``, ``AzureChatOpenAI``, every
  ``BaseChatOpenAI`` subclass) or the anthropic client (``ChatAnthropic``), inside a
  protected function: that client's plugin, at the client. It blocks, redacts the prompt
  and charges the provider's exact usage (for streams too). This handler leaves those
  runs alone.
* Every other model run (other providers, legacy completion LLMs such as
  ``langchain_openai.OpenAI``, custom models; and ChatOpenAI under a handler with its
  own session, where the client plugin is not active): this handler. The request
  policies run in ``on_chat_model_start``/``on_llm_start`` — a refusal raises
  ``BudgetExceededError``/``SafetyViolationError`` there, so the request is never sent —
  and the call settles in ``on_llm_end`` from ``usage_metadata`` (legacy LLMs:
  ``llm_output["token_usage"]``), counting the text when the provider reported none.
* Runs inside an outer iron integration (:func:`iron_langchain.governed`,
  :class:`iron_langchain.IronMiddleware`): that integration (``is_outer_governed()``).

Redaction: a callback cannot rewrite a prompt. When the safety policy would redact a
prompt that this handler governs, the call is refused with ``SafetyViolationError``
rather than sent unredacted; ``governed(model)`` or ``IronMiddleware`` redact instead.

Tools: ``on_tool_start``/``on_tool_end`` drive ``runtime.begin_tool``/``end_tool`` (audited
as ``tool_called``; a plugin refusing the tool raises before it runs).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any
from uuid import UUID

from iron_anthropic import instrument as instrument_anthropic
from iron_openai import instrument as instrument_openai
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult
from langchain_core.tracers.context import register_configure_hook

from iron_langchain.convert import GOVERNED_TYPE, SOURCE, MessageMeter, to_dicts
from iron_sdk.integration import (
    LlmCall,
    LlmRequest,
    Session,
    ToolCall,
    active_session,
    enter_session,
    exit_session,
    is_outer_governed,
    read_request,
    usage_from_openai,
)

REDACT_HINT = ("Wrap the model with iron_langchain.governed(model) (agents: "
               "middleware=[IronMiddleware()]) to send it redacted.")

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage

    from iron_sdk.config import BudgetConfig, ReliabilityConfig, SafetyConfig


class IronCallbackHandler(BaseCallbackHandler):
    """Governs LangChain model runs and audits tool runs (see the module docstring).

    Without arguments it uses the session of the protected function it runs in (and does
    nothing outside one). With ``agent_id`` or ``ic_token`` (and the other
    ``@protect_agent`` options) it opens a session of its own on first use, for code
    outside protected functions; inside one, the protected function's session wins.
    """

    raise_error = True  # a governance error must reach the caller, not be logged
    run_inline = True  # async paths call it in the caller's context too: no executor hop

    def __init__(self, agent_id: str | None = None, *, ic_token: str | None = None,
                 budget_usd: float | None = None, budget: BudgetConfig | None = None,
                 safety: SafetyConfig | None = None,
                 reliability: ReliabilityConfig | None = None) -> None:
        own = agent_id is not None or ic_token is not None
        self._agent_id = agent_id
        self._options = dict(ic_token=ic_token, budget_usd=budget_usd, budget=budget,
                             safety=safety, reliability=reliability) if own else None
        self._own: Session | None = None
        self._lock = threading.Lock()
        self._calls: dict[UUID, LlmCall] = {}
        self._lent: dict[UUID, Token[Session | None]] = {}  # runs made current (_lend)
        self._tools: dict[UUID, ToolCall] = {}

    # Only model and tool events matter: skip the per-step chain/retriever dispatch.
    @property
    def ignore_chain(self) -> bool:
        return True

    @property
    def ignore_retriever(self) -> bool:
        return True

    @property
    def ignore_retry(self) -> bool:
        return True

    @property
    def ignore_custom_event(self) -> bool:
        return True

    @property
    def session(self) -> Session | None:
        """The session governing now: the protected function's, else the handler's own."""
        session = active_session()
        if session is not None or self._options is None:
            return session
        if self._own is None:
            with self._lock:
                if self._own is None:
                    from iron_sdk.runtime import get_runtime

                    self._own = get_runtime().open_session(self._agent_id, **self._options)
        return self._own

    def close(self) -> None:
        """End the handler's own session (if it opened one)."""
        own, self._own = self._own, None
        if own is not None:
            own.runtime.close_session(own)

    def __enter__(self) -> IronCallbackHandler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- model runs -------------------------------------------------------------------
    def on_chat_model_start(self, serialized: dict[str, Any],
                            messages: list[list[BaseMessage]], *, run_id: UUID,
                            metadata: dict[str, Any] | None = None,
                            invocation_params: dict[str, Any] | None = None,
                            **kwargs: Any) -> None:
        session = self.session
        if session is None or is_outer_governed():
            return
        params = invocation_params or {}
        if params.get("_type") == GOVERNED_TYPE:
            return  # IronChatModel governs (and redacts) its own runs
        if _client_governed(serialized):
            self._lend(session, run_id)  # the openai-client plugin governs it at the client
            return
        self._begin(session, run_id, serialized, to_dicts(messages[0]), metadata, params,
                    batch_size=kwargs.get("batch_size") or 1)

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID,
                     metadata: dict[str, Any] | None = None,
                     invocation_params: dict[str, Any] | None = None, **kwargs: Any) -> None:
        session = self.session
        if session is None or is_outer_governed():
            return
        if _client_governed(serialized):
            self._lend(session, run_id)  # the openai-client plugin governs (and redacts) it
            return
        self._begin(session, run_id, serialized, prompts[0], metadata,
                    invocation_params or {}, batch_size=kwargs.get("batch_size") or 1)

    def _begin(self, session: Session, run_id: UUID, serialized: dict[str, Any],
               messages: list[dict[str, Any]] | str, metadata: dict[str, Any] | None,
               params: dict[str, Any], *, batch_size: int) -> None:
        meta = metadata or {}
        model = str(meta.get("ls_model_name") or params.get("model")
                    or params.get("model_name")
                    or (serialized.get("id") or ["unknown"])[-1])  # unpriced → refused
        max_tokens = (meta.get("ls_max_tokens") or params.get("max_tokens")
                      or params.get("max_completion_tokens"))
        stream = bool(params.get("stream"))
        try:
            if isinstance(messages, str):  # a legacy LLM's prompt
                body: dict[str, Any] = {"model": model, "prompt": messages}
                if max_tokens:
                    body["max_tokens"] = max_tokens
                request = read_request("completion", body)
                request.stream = stream
            else:
                request = LlmRequest.chat(model, messages, max_tokens=max_tokens,
                                          stream=stream)
            call = session.runtime.begin_call(
                session, request, source=SOURCE, provider=meta.get("ls_provider") or "",
                # A callback cannot rewrite the prompt: what would be redacted is blocked.
                can_redact=False, redact_hint=REDACT_HINT)
        except BaseException as exc:
            if batch_size > 1:
                self._abort_batch(exc)
            raise
        self._calls[run_id] = call
        if batch_size > 1:
            state = _starting.get()
            started = state[1] if state and len(state[1]) < state[0] else ()
            _starting.set((batch_size, (*started, run_id)))

    def _abort_batch(self, error: BaseException) -> None:
        """A prompt of a multi-prompt run was refused: LangChain raises before sending
        any of them, so release the prompts of that batch already started."""
        state = _starting.get()
        _starting.set(None)
        if state and len(state[1]) < state[0]:
            for run_id in state[1]:
                call = self._calls.pop(run_id, None)
                if call is not None:
                    call.session.runtime.fail_call(call, error)

    def _lend(self, session: Session, run_id: UUID) -> None:
        """A run the client plugin governs, under this handler's own identity: make that
        session current for the run, so the client plugin charges it to this agent."""
        if session is not active_session():
            self._lent[run_id] = enter_session(session)

    def _return(self, run_id: UUID) -> None:
        token = self._lent.pop(run_id, None)
        if token is not None:
            exit_session(token)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self._return(run_id)
        call = self._calls.pop(run_id, None)
        if call is not None:
            _meter(call, response).finish()

    def on_llm_error(self, error: BaseException, *, run_id: UUID,
                     response: LLMResult | None = None, **kwargs: Any) -> None:
        self._return(run_id)
        call = self._calls.pop(run_id, None)
        if call is not None:  # an abandoned stream pays for what it generated
            _meter(call, response).fail(error)

    # -- tools ------------------------------------------------------------------------
    def on_tool_start(self, serialized: dict[str, Any], input_str: str, *, run_id: UUID,
                      inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        session = self.session
        if session is None:
            return
        name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
        self._tools[run_id] = session.runtime.begin_tool(
            session, name, inputs if inputs is not None else input_str, source=SOURCE)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        tool = self._tools.pop(run_id, None)
        if tool is not None:
            tool.session.runtime.end_tool(tool, result=output)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        tool = self._tools.pop(run_id, None)
        if tool is not None:
            tool.session.runtime.end_tool(tool, error=error)


def _meter(call: LlmCall, response: LLMResult | None) -> MessageMeter:
    """What the run produced, ready to settle: usage_metadata, else the legacy
    ``token_usage`` (``{}`` on the 2nd.. prompt of a batched request: its usage is on the
    1st), else the text to count."""
    meter = MessageMeter(call)
    generations = response.generations[0] if response and response.generations else []
    for gen in generations:
        message = getattr(gen, "message", None)
        if message is not None:
            meter.add(message)
        else:
            meter.add_text(gen.text)
    if generations and isinstance(generations[0], ChatGenerationChunk | GenerationChunk):
        call.request.stream = True
    message = getattr(generations[0], "message", None) if generations else None
    token_usage = (response.llm_output or {}).get("token_usage") if response else None
    if getattr(message, "usage_metadata", None) is None and isinstance(token_usage, dict):
        meter.set_usage(usage_from_openai(token_usage))  # type: ignore[arg-type]
    return meter


# Runs of one multi-prompt ``generate`` start back to back in one context before any
# request is sent: (batch size, run ids started so far) of the batch starting here.
_starting: ContextVar[tuple[int, tuple[UUID, ...]] | None] = ContextVar(
    "iron_langchain_starting", default=None)


# -- which models a client plugin (openai, anthropic) governs ----------------------------
# The LangChain base classes built on each client, by module, and that client's plugin.
_CLIENT_MODELS: tuple[tuple[str, str, str], ...] = (
    ("langchain_openai.chat_models.base", "BaseChatOpenAI", "openai"),
    ("langchain_openai.llms.base", "BaseOpenAI", "openai"),
    ("langchain_anthropic.chat_models", "ChatAnthropic", "anthropic"),
    ("langchain_anthropic.llms", "AnthropicLLM", "anthropic"),
)
_INSTRUMENT: dict[str, Callable[[], None]] = {
    "openai": instrument_openai, "anthropic": instrument_anthropic}
_client_governed_ids: dict[tuple[str, ...], str | None] = {}


def _client_governed(serialized: dict[str, Any]) -> bool:
    """True for runs of a model built on the openai or anthropic client, recognised by the
    class id LangChain serializes the model under (cached per class)."""
    ident = tuple(serialized.get("id") or ())
    if ident not in _client_governed_ids:
        _client_governed_ids[ident] = _client_chat_ids().get(ident)
    client = _client_governed_ids[ident]
    if client is not None:
        _INSTRUMENT[client]()  # idempotent: the delegate is in place (client imported late)
    return client is not None


def _client_chat_ids() -> dict[tuple[str, ...], str]:
    """Every id LangChain may serialize a model built on a governed client under (the
    subclasses of ``_CLIENT_MODELS``), with the client's name."""
    ids: dict[tuple[str, ...], str] = {}
    for module, name, client in _CLIENT_MODELS:
        base = getattr(sys.modules.get(module), name, None)
        todo: list[type] = [base] if base is not None else []
        while todo:
            cls = todo.pop()
            todo.extend(cls.__subclasses__())
            ids[(*cls.__module__.split("."), cls.__name__)] = client  # not lc-serializable
            if cls.is_lc_serializable():  # type: ignore[attr-defined]
                ids[tuple(cls.lc_id())] = client  # type: ignore[attr-defined]
    return ids


# -- automatic attachment ---------------------------------------------------------------
_HANDLER = IronCallbackHandler()
_install_lock = threading.Lock()
_installed = False


class _WhileProtected:
    """Stands in for the ContextVar of ``register_configure_hook``: LangChain only calls
    ``.get()`` on it when it builds a run's callback manager. It answers the shared
    handler inside a protected function and None elsewhere, so runs outside protected
    functions carry no iron handler at all."""

    def get(self) -> IronCallbackHandler | None:
        return _HANDLER if active_session() is not None else None


def instrument() -> None:
    """Attach :class:`IronCallbackHandler` to every LangChain run inside a protected
    function (idempotent). A handler the user passed explicitly takes its place."""
    global _installed
    if _installed:
        return
    with _install_lock:
        if not _installed:
            register_configure_hook(_WhileProtected(),  # type: ignore[arg-type]
                                    inheritable=True, handle_class=IronCallbackHandler)
            _installed = True
