"""The operator's policy on every call: kill switch, revoked tokens, model and tool
allow/deny lists, the per-call output ceiling, the PII floor, and rate limits (rpm, tpm)
shared by every process and router on the same ledger.

Runs first in ``iron_llm_request`` (``tryfirst``, registered after the safety policy), so
a refused call is never scanned, reserved or sent. The policy is re-read only when the
store's version moves (:meth:`~iron_sdk.policy.PolicyStore.version`), so a change made
with the CLI or the admin API applies within a second, without restart.

``max_tokens`` above the operator's ceiling is refused (``PolicyViolationError``, field
``max_tokens``): a client may only tighten. A call that names no ``max_tokens`` gets the
ceiling written into ``call.max_tokens`` (doors forward it; the reservation uses it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iron_sdk.config import PII_STRICTNESS
from iron_sdk.errors import (
    AgentDisabledError,
    InvalidTokenError,
    IronCageError,
    ModelNotAllowedError,
    PolicyViolationError,
    RateLimitedError,
    RuntimeUnavailableError,
    ToolNotAllowedError,
)
from iron_sdk.hookspecs import hookimpl
from iron_sdk.policies.budget import DEFAULT_MAX_OUTPUT
from iron_sdk.policy import EffectivePolicy, Policy, PolicyStore, effective, open_policy_store
from iron_sdk.tokens import count_request

if TYPE_CHECKING:
    from iron_sdk.call import LlmCall, ToolCall
    from iron_sdk.runtime import Runtime
    from iron_sdk.session import Session

log = logging.getLogger("iron_sdk.operator")


def call_tokens(call: LlmCall, runtime: Runtime) -> int:
    """Input tokens plus the output tokens the call may generate (what tpm counts)."""
    if not call.input_tokens_est:
        call.input_tokens_est = count_request(call.model, call.request)
    out = call.request.output_tokens(call.session.budget.default_max_tokens
                                     or runtime.price(call.model).max_output_tokens
                                     or DEFAULT_MAX_OUTPUT)
    return call.input_tokens_est + out


class OperatorPolicy:
    """Plugin ``iron.operator``. ``store`` defaults to the one beside the runtime's ledger;
    ``clock`` (default ``time.time``, read on each call) paces the rate-limit windows."""

    def __init__(self, store: PolicyStore | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.store = store
        self._own_store = store is None
        self.clock = clock
        self.runtime: Runtime | None = None
        self.defaults: Policy | None = None

    @hookimpl
    def iron_configure(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.defaults = getattr(runtime.config, "policy", None)
        if self.store is None:
            self.store = open_policy_store(_beside(runtime))

    @hookimpl
    def iron_unconfigure(self, runtime: Runtime) -> None:
        if self._own_store and self.store is not None:
            self.store.close()

    # -- what applies ----------------------------------------------------------------------
    def effective_for(self, agent: str, scopes: tuple[str, ...],
                      requested: Policy | None = None) -> EffectivePolicy:
        """The agent's effective policy now, with what its code ``requested`` (cached
        until the store's version moves)."""
        assert self.store is not None
        snap = self.store.snapshot()
        key = (agent, scopes, requested)
        eff = snap.cache.get(key)
        if eff is None:
            names = (f"agent:{agent}", *scopes)
            eff = effective({s: snap.policies[s] for s in names if s in snap.policies},
                            self.defaults, requested)
            if len(snap.cache) >= 4096:
                snap.cache.clear()
            snap.cache[key] = eff
        return eff

    def refusal(self, session: Session) -> IronCageError | None:
        """Why ``session`` may no longer run (revoked token, disabled agent), or None.
        Cheap: a long stream can poll it to end when the operator switches the agent off."""
        assert self.store is not None
        if session.claims:
            reason = self.store.is_revoked(session.claims)
            if reason:
                return InvalidTokenError(reason)
        if self.effective_for(session.agent_id, session.scopes, session.policy).disabled:
            return AgentDisabledError(session.agent_id)
        return None

    # -- hooks -----------------------------------------------------------------------------
    @hookimpl(tryfirst=True)
    def iron_session_start(self, session: Session) -> None:
        error = self._guarded(session, lambda: self.refusal(session))
        if error is not None:
            raise error

    @hookimpl(tryfirst=True)
    def iron_llm_request(self, call: LlmCall) -> None:
        try:  # (no lambda through _guarded: this runs on every call)
            self._check_call(call)
        except RuntimeUnavailableError as exc:
            self._store_failed(call.session, exc)

    @hookimpl(tryfirst=True)
    def iron_tool_request(self, call: ToolCall) -> None:
        self._guarded(call.session, lambda: self._check_tool(call.session, call.name))

    def _guarded(self, session: Session, check: Callable[[], Any]) -> Any:
        """Run ``check``; a store that cannot answer follows the ledger's fail rule."""
        try:
            return check()
        except RuntimeUnavailableError as exc:
            self._store_failed(session, exc)
            return None

    @staticmethod
    def _store_failed(session: Session, exc: RuntimeUnavailableError) -> None:
        if session.budget.on_ledger_error == "closed":
            raise exc
        log.warning("policy store failed, proceeding (on_ledger_error='open'): %s", exc)

    def _check_call(self, call: LlmCall) -> None:
        assert self.store is not None and self.runtime is not None
        session = call.session
        if session.claims:
            reason = self.store.is_revoked(session.claims)
            if reason:
                raise InvalidTokenError(reason)
        agent = session.agent_id
        eff = self.effective_for(agent, session.scopes, session.policy)
        if not eff.restricts_calls:
            return
        if eff.disabled:
            raise AgentDisabledError(agent)
        model = call.model
        source = eff.model_refusal(model)
        if source is not None:
            raise ModelNotAllowedError(model, message=(
                f"Model '{model[:100]}' is not allowed for agent '{agent}' "
                f"(policy of {source}); `iron-runtime policy show {agent}` lists what is."))
        if eff.max_tokens is not None:
            ceiling, asked = eff.max_tokens.value, call.request.max_tokens
            if asked is None:
                call.request.limit_output(ceiling)
            elif asked > ceiling:
                raise PolicyViolationError("max_tokens", message=(
                    f"max_tokens {asked} is over the ceiling of {ceiling} output "
                    f"tokens per call (policy of {eff.max_tokens.source}); ask for less."))
        if eff.pii is not None:
            _raise_pii_floor(session, eff.pii.value)
        if eff.rpm is not None or eff.tpm is not None:
            self._rate(call, agent, eff)

    def _rate(self, call: LlmCall, agent: str, eff: EffectivePolicy) -> None:
        assert self.store is not None and self.runtime is not None
        rpm = eff.rpm.value if eff.rpm else None
        tpm = eff.tpm.value if eff.tpm else None
        tokens = call_tokens(call, self.runtime) if tpm else 0
        if tpm is not None and tokens > tpm:
            raise PolicyViolationError("tpm", message=(
                f"This call may use {tokens} tokens (input + max output), more than the "
                f"{tpm} tokens per minute allowed (policy of {eff.tpm.source}); "
                "lower max_tokens or shorten the prompt."))
        now = self.clock() if self.clock is not None else time.time()
        wait = self.store.take(f"agent:{agent}", tokens, rpm, tpm, now)
        if wait is not None:
            raise RateLimitedError(wait, message=(
                f"Rate limit of agent '{agent}' reached "
                f"({_limits(eff)}); retry after {wait:.1f}s."))

    def _check_tool(self, session: Session, tool: str) -> None:
        assert self.store is not None
        if session.claims:
            reason = self.store.is_revoked(session.claims)
            if reason:
                raise InvalidTokenError(reason)
        eff = self.effective_for(session.agent_id, session.scopes, session.policy)
        if eff.disabled:
            raise AgentDisabledError(session.agent_id)
        source = eff.tool_refusal(tool)
        if source is not None:
            raise ToolNotAllowedError(tool, message=(
                f"Tool '{tool[:100]}' is not allowed for agent '{session.agent_id}' "
                f"(policy of {source})."))


def _beside(runtime: Runtime) -> str:
    """Where the runtime's ledger is: the policy store lives there too."""
    from iron_sdk.ledger import MemoryLedger, SQLiteLedger

    ledger = getattr(runtime.ledger, "inner", runtime.ledger)  # a write-behind wrapper
    if isinstance(ledger, MemoryLedger):
        return "memory"  # a ledger of this process alone: so is its policy
    if isinstance(ledger, SQLiteLedger):
        return str(ledger.path)
    return runtime.config.ledger_url()


def _raise_pii_floor(session: Session, floor: str) -> None:
    """The session runs with at least the operator's PII action (never weaker)."""
    safety = session.safety
    update: dict[str, Any] = {}
    if PII_STRICTNESS[safety.pii] < PII_STRICTNESS[floor]:
        update["pii"] = floor
    if safety.secrets is not None and PII_STRICTNESS[safety.secrets] < PII_STRICTNESS[floor]:
        update["secrets"] = floor
    if update:
        session.safety = safety.model_copy(update=update)


def _limits(eff: EffectivePolicy) -> str:
    parts = [f"{name} {s.value} from {s.source}" for name, s in
             (("rpm", eff.rpm), ("tpm", eff.tpm)) if s is not None]
    return ", ".join(parts)
