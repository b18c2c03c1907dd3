"""The runtime: the one hook pipeline behind every door.

Library mode calls it directly; the router serves it over HTTP (the runtime API and the
OpenAI-compatible API). Each door reads its request with :func:`iron_sdk.request.
read_request` and drives it through ``begin_call`` → (the provider request) →
``settle_call`` or ``fail_call`` (the meter, :mod:`iron_sdk.meter`, picks which).

The pipeline owns failure: a plugin that raises in ``iron_llm_request`` blocks the call
(fail closed; anything reserved is released through ``iron_llm_error``); one that raises
in ``iron_llm_response``, ``iron_llm_error`` or ``iron_event`` is logged with its name
and reported as a ``plugin_failed`` event, while every other plugin still runs: the
charge or the release is never lost, and an answer the user paid for is never turned
into an exception.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from iron_sdk.call import LlmCall, ToolCall, Usage
from iron_sdk.config import BudgetConfig, ReliabilityConfig, RuntimeConfig, SafetyConfig
from iron_sdk.errors import (
    InvalidRequestError,
    IronCageError,
    OutsideSessionError,
    RuntimeUnavailableError,
    UnknownModelPriceError,
)
from iron_sdk.events import Event, call_event, make_event
from iron_sdk.home import secure_home_files
from iron_sdk.identity import TokenVerifier
from iron_sdk.interface import GovernanceRuntime
from iron_sdk.ledger import Ledger, MemoryLedger, open_ledger
from iron_sdk.ledger.writer import WriteBehindLedger
from iron_sdk.plugins import call_each, call_in_order, make_manager
from iron_sdk.policy.model import Policy, as_policy
from iron_sdk.pricing import ModelPrice
from iron_sdk.request import LlmRequest
from iron_sdk.session import Session

log = logging.getLogger("iron_sdk")


class Runtime:
    """In-process runtime. Thread-safe; one per process is the norm (:func:`get_runtime`)."""

    def __init__(self, config: RuntimeConfig | None = None, *, ledger: Ledger | None = None,
                 plugins: tuple[object, ...] = ()) -> None:
        self.config = config or RuntimeConfig()
        self.config.ensure_home()  # 0700 when we create it
        ledger = ledger or open_ledger(self.config.ledger_url())
        secure_home_files(self.config.home)  # ledger (+ WAL), keys, audit log: 0600
        if self.config.write_behind and not isinstance(ledger, MemoryLedger):
            ledger = WriteBehindLedger(ledger)  # settlements leave the caller's path
        self.ledger = ledger
        self.tokens = TokenVerifier(self.config.home)
        self.pm = make_manager(self.config)
        for plugin in plugins:
            self.pm.register(plugin)
        self._prices: dict[str, ModelPrice] = {}
        self._outside: Session | None = None
        self._outside_lock = threading.Lock()
        self.hook = self.pm.hook
        self.hook.iron_configure(runtime=self)

    # -- sessions ---------------------------------------------------------------------
    def open_session(self, agent_id: str | None = None, *, ic_token: str | None = None,
                     budget_usd: float | None = None, budget: BudgetConfig | None = None,
                     safety: SafetyConfig | None = None,
                     reliability: ReliabilityConfig | None = None,
                     scopes: tuple[str, ...] = (), policy: Policy | None = None) -> Session:
        """Start a session; with ``ic_token`` the agent is the one the token names.

        ``budget``, ``safety``, ``reliability``, ``budget_usd`` and ``policy`` come from
        the agent (its ``@protect_agent`` arguments or its request) and may only tighten
        the operator's config and policy. ``scopes`` are extra budget scopes an
        integration derived from an identity it verified itself (the LiteLLM proxy's team
        and user of a key), never from the agent's code or request."""
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
        # The operator's config, as the agent's code or request may only tighten it.
        budget = self.config.budget.tightened(budget)
        cap = budget.session_usd
        if budget_usd is not None:
            if not 0 < budget_usd < float("inf"):
                raise InvalidRequestError("'budget_usd' must be a positive number.")
            cap = budget_usd if cap is None else min(cap, budget_usd)
        scopes = (f"agent:{agent_id}", *claims.get("scopes", ()), *budget.scopes, *scopes,
                  "global")
        session = Session(
            agent_id=agent_id, runtime=self, budget=budget,
            safety=self.config.safety.tightened(safety),
            reliability=self.config.reliability.tightened(reliability),
            scopes=tuple(dict.fromkeys(scopes)),
            cap_micro=None if cap is None else round(cap * 1_000_000), claims=claims,
            policy=as_policy(policy))
        self.hook.iron_session_start(session=session)
        return session

    def close_session(self, session: Session, error: BaseException | None = None) -> None:
        self.hook.iron_session_end(session=session, error=error)

    def outside_session(self) -> Session:
        """The session of calls made outside any protected function: one per runtime,
        for ``config.default_agent_id()``; raises :class:`OutsideSessionError` where the
        operator refuses such calls."""
        if self.config.outside_session == "refuse":
            raise OutsideSessionError()
        session = self._outside
        if session is None:
            with self._outside_lock:
                session = self._outside
                if session is None:
                    session = self._outside = self.open_session(
                        self.config.default_agent_id())
        return session

    # -- model calls ------------------------------------------------------------------
    def begin_call(self, session: Session, request: LlmRequest, *, model: str | None = None,
                   source: str = "sdk", provider: str = "", can_redact: bool = True,
                   redact_hint: str | None = None) -> LlmCall:
        """Run the request policies on ``request``; return the call, whose
        ``request.body`` is what may leave (redacted where the policy redacts).

        ``model`` is the model governed and priced (default: the request's). Raises the
        policy's :class:`IronCageError` when the call is refused; nothing stays reserved.
        """
        model = model or request.model
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("'model' must be a non-empty string.")
        call = LlmCall(session=session, model=model, request=request, source=source,
                       provider=provider, can_redact=can_redact, redact_hint=redact_hint)
        try:
            call_in_order(self.pm, "iron_llm_request", call=call)
        except IronCageError as exc:
            self._refused(call, exc)
            raise
        except Exception as exc:  # a plugin crashed: fail closed, say which call
            log.error("plugin failed in iron_llm_request (%s); call %s blocked",
                      type(exc).__name__, call.call_id)
            self._refused(call, exc)
            raise RuntimeUnavailableError(
                f"A governance plugin failed on the request ({type(exc).__name__}); "
                "the call was not sent.") from exc
        return call

    def settle_call(self, call: LlmCall, usage: Usage) -> LlmCall:
        """The provider answered with ``usage``: charge the real cost, release the rest.
        Never raises for a plugin's fault (see the module docstring)."""
        if call.outcome != "pending":
            return call  # already settled or failed: each request is charged once
        call.usage = usage
        try:
            call.cost_micro = self.price(call.model).cost_micro(usage)
        except IronCageError:  # priced at begin_call; a plugin's price vanished since
            call.cost_micro = call.reserved_micro
        call.outcome = "completed"
        call_each(self.pm, "iron_llm_response", self._plugin_failed, call=call)
        self.emit(call_event("call_completed", call))
        return call

    def fail_call(self, call: LlmCall, error: BaseException) -> None:
        """The call failed after it was allowed: release its reservation."""
        if call.outcome != "pending":
            return
        call.outcome = "failed"
        call_each(self.pm, "iron_llm_error", self._plugin_failed, call=call, error=error)
        self.emit(call_event("call_failed", call, error=type(error).__name__,
                             status=getattr(error, "status_code", None)))

    def _refused(self, call: LlmCall, exc: BaseException) -> None:
        call.outcome = "blocked"  # iron_llm_error releases what an earlier plugin reserved
        call_each(self.pm, "iron_llm_error", self._plugin_failed, call=call, error=exc)
        self.emit(call_event("call_blocked", call,
                             reason=getattr(exc, "code", type(exc).__name__),
                             scope=getattr(exc, "scope", None)))

    def _plugin_failed(self, plugin: str, hook: str, exc: BaseException,
                       call: LlmCall | None) -> None:
        log.error("plugin %s failed in %s (%s); the pipeline went on", plugin, hook,
                  type(exc).__name__)
        if hook != "iron_event":
            ids = {} if call is None else {"call_id": call.call_id,
                                           "session_id": call.session.session_id,
                                           "agent_id": call.agent_id}
            self.emit(make_event("plugin_failed", plugin=plugin, hook=hook,
                                 error=type(exc).__name__, **ids))

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
        collector = _collecting.get()
        if collector is not None:
            collector.append(event)
        call_each(self.pm, "iron_event", self._plugin_failed, event=event)

    def close(self) -> None:
        self.ledger.close()  # flushes pending settlements (and their events) first
        self.hook.iron_unconfigure(runtime=self)


_collecting: ContextVar[list[Event] | None] = ContextVar("iron_collect_events", default=None)


@contextmanager
def collect_events() -> Iterator[list[Event]]:
    """Gather the events this context emits (the runtime API hands them back to the SDK,
    whose own plugins then see them as in library mode)."""
    events: list[Event] = []
    token = _collecting.set(events)
    try:
        yield events
    finally:
        _collecting.reset(token)


_runtime: GovernanceRuntime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> GovernanceRuntime:
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


def set_runtime(runtime: GovernanceRuntime | None) -> GovernanceRuntime | None:
    """Install ``runtime`` as the process's runtime (returns the previous one)."""
    global _runtime
    previous, _runtime = _runtime, runtime
    return previous
