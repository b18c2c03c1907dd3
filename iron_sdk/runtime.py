"""The runtime: the one hook pipeline behind every door.

Library mode calls it directly; the router serves it over HTTP (the runtime API and the
OpenAI-compatible API). Each door builds an :class:`LlmCall` and drives it through
``begin_call`` → (the provider request) → ``settle_call`` or ``fail_call``.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from iron_sdk.call import LlmCall, ToolCall, Usage
from iron_sdk.config import BudgetConfig, ReliabilityConfig, RuntimeConfig, SafetyConfig
from iron_sdk.errors import (
    InvalidRequestError,
    IronCageError,
    RuntimeUnavailableError,
    UnknownModelPriceError,
)
from iron_sdk.events import Event, call_event, make_event
from iron_sdk.identity import TokenVerifier
from iron_sdk.ledger import Ledger, MemoryLedger, open_ledger
from iron_sdk.ledger.writer import WriteBehindLedger
from iron_sdk.plugins import make_manager
from iron_sdk.pricing import ModelPrice
from iron_sdk.session import Session

log = logging.getLogger("iron_sdk")


class Runtime:
    """In-process runtime. Thread-safe; one per process is the norm (:func:`get_runtime`)."""

    def __init__(self, config: RuntimeConfig | None = None, *, ledger: Ledger | None = None,
                 plugins: tuple[object, ...] = ()) -> None:
        self.config = config or RuntimeConfig()
        ledger = ledger or open_ledger(self.config.ledger_url())
        if self.config.write_behind and not isinstance(ledger, MemoryLedger):
            ledger = WriteBehindLedger(ledger)  # settlements leave the caller's path
        self.ledger = ledger
        self.tokens = TokenVerifier(self.config.home)
        self.pm = make_manager(self.config)
        for plugin in plugins:
            self.pm.register(plugin)
        self._prices: dict[str, ModelPrice] = {}
        self.hook = self.pm.hook
        self.hook.iron_configure(runtime=self)

    # -- sessions ---------------------------------------------------------------------
    def open_session(self, agent_id: str | None = None, *, ic_token: str | None = None,
                     budget_usd: float | None = None, budget: BudgetConfig | None = None,
                     safety: SafetyConfig | None = None,
                     reliability: ReliabilityConfig | None = None) -> Session:
        """Start a session; with ``ic_token`` the agent is the one the token names."""
        claims: dict[str, Any] = {}
        if ic_token:
            claims = self.tokens.verify(ic_token)
            if agent_id and agent_id != claims["sub"]:
                raise InvalidRequestError(
                    f"agent_id '{agent_id}' does not match the IC token's agent "
                    f"'{claims['sub']}'; drop agent_id or use that agent's token.")
            agent_id = claims["sub"]
        if not agent_id:
            raise InvalidRequestError("A session needs an agent_id or an IC token.")
        budget = budget or self.config.budget
        cap = budget_usd if budget_usd is not None else budget.session_usd
        scopes = (f"agent:{agent_id}", *claims.get("scopes", ()), *budget.scopes, "global")
        session = Session(
            agent_id=agent_id, runtime=self, budget=budget,  # type: ignore[arg-type]
            safety=safety or self.config.safety,
            reliability=reliability or self.config.reliability,
            scopes=tuple(dict.fromkeys(scopes)),
            cap_micro=None if cap is None else round(cap * 1_000_000), claims=claims)
        self.hook.iron_session_start(session=session)
        return session

    def close_session(self, session: Session, error: BaseException | None = None) -> None:
        self.hook.iron_session_end(session=session, error=error)

    # -- model calls ------------------------------------------------------------------
    def begin_call(self, session: Session, *, model: str, messages: list[dict[str, Any]],
                   max_tokens: int | None = None, stream: bool = False, kind: str = "chat",
                   source: str = "sdk", provider: str = "",
                   metadata: dict[str, Any] | None = None) -> LlmCall:
        """Run the request policies; return the call (``call.messages`` possibly redacted).

        Raises the policy's :class:`IronCageError` when the call is refused; nothing is
        reserved then.
        """
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("'model' must be a non-empty string.")
        if not isinstance(messages, list):
            raise InvalidRequestError("'messages' must be a list of message objects.")
        call = LlmCall(session=session, model=model, messages=list(messages),
                       max_tokens=max_tokens, stream=stream, kind=kind, source=source,
                       provider=provider, metadata=metadata or {})
        try:
            self.hook.iron_llm_request(call=call)
        except IronCageError as exc:
            self._refused(call, exc)
            raise
        except Exception as exc:  # a plugin crashed: fail closed, say which call
            self._refused(call, exc)
            raise RuntimeUnavailableError(
                f"A governance plugin failed on the request ({type(exc).__name__}); "
                "the call was not sent.") from exc
        return call

    def settle_call(self, call: LlmCall, usage: Usage) -> LlmCall:
        """The provider answered with ``usage``: charge the real cost, release the rest."""
        if call.outcome != "pending":
            return call  # already settled or failed: each request is charged once
        call.usage = usage
        call.cost_micro = self.price(call.model).cost_micro(usage)
        call.outcome = "completed"
        self.hook.iron_llm_response(call=call)
        self.emit(call_event("call_completed", call))
        return call

    def fail_call(self, call: LlmCall, error: BaseException) -> None:
        """The call failed after it was allowed: release its reservation."""
        if call.outcome != "pending":
            return
        call.outcome = "failed"
        self.hook.iron_llm_error(call=call, error=error)
        self.emit(call_event("call_failed", call, error=type(error).__name__,
                             status=getattr(error, "status_code", None)))

    def _refused(self, call: LlmCall, exc: BaseException) -> None:
        call.outcome = "blocked"
        self.pm.get_plugin("iron.budget").release(call)  # a later plugin may have vetoed
        self.emit(call_event("call_blocked", call,
                             reason=getattr(exc, "code", type(exc).__name__)))

    # -- tools ------------------------------------------------------------------------
    def begin_tool(self, session: Session, name: str, arguments: Any = None,
                   source: str = "sdk") -> ToolCall:
        call = ToolCall(session=session, name=name, arguments=arguments, source=source)
        self.hook.iron_tool_request(call=call)
        return call

    def end_tool(self, call: ToolCall, result: Any = None,
                 error: BaseException | None = None) -> None:
        call.error = error
        self.hook.iron_tool_response(call=call, result=result)
        self.emit(make_event("tool_called", call_id=call.call_id, tool=call.name,
                             session_id=call.session.session_id, agent_id=call.session.agent_id,
                             source=call.source, outcome="failed" if error else "completed"))

    # -- shared services --------------------------------------------------------------
    def price(self, model: str) -> ModelPrice:
        """The model's price (configured, plugin, or database); refuses unknown models."""
        price = self._prices.get(model)
        if price is None:
            price = self.hook.iron_model_price(model=model)
            if price is None:
                raise UnknownModelPriceError(model)
            self._prices[model] = price
        return price

    def flush(self) -> None:
        """Wait until every settlement and audit event so far is written."""
        if isinstance(self.ledger, WriteBehindLedger):
            self.ledger.flush()
        audit = self.pm.get_plugin("iron.audit")
        if audit is not None:
            audit.flush()

    def emit(self, event: Event) -> None:
        self.hook.iron_event(event=event)

    def close(self) -> None:
        self.ledger.close()  # flushes pending settlements (and their events) first
        self.hook.iron_unconfigure(runtime=self)


_runtime: Any = None
_runtime_lock = threading.Lock()


def get_runtime() -> Any:
    """The process's runtime: HTTP client of the router when ``IRON_RUNTIME_URL`` is set,
    else the in-process runtime. Created on first use."""
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                url = os.environ.get("IRON_RUNTIME_URL")
                if url:
                    from iron_sdk.remote import RemoteRuntime

                    _runtime = RemoteRuntime(url)
                else:
                    _runtime = Runtime()
    return _runtime


def set_runtime(runtime: Any) -> Any:
    """Install ``runtime`` as the process's runtime (returns the previous one)."""
    global _runtime
    previous, _runtime = _runtime, runtime
    return previous
