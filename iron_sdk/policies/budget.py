"""Budget policy: reserve before the call against every scope, settle after, release on failure.

The session cap is held in memory (a session lives in one runtime); the agent's and
wider scopes live in the shared ledger, reserved atomically across processes. The
session lock is held across both so the pair is atomic too.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from iron_sdk.errors import BudgetExceededError, RuntimeUnavailableError, usd
from iron_sdk.events import make_event
from iron_sdk.hookspecs import hookimpl
from iron_sdk.ledger import InvalidAmountError, ScopeState, Settlement
from iron_sdk.ledger.leases import LeaseKeeper
from iron_sdk.ledger.writer import WriteBehindLedger
from iron_sdk.tokens import count_request

if TYPE_CHECKING:
    from iron_sdk.call import LlmCall
    from iron_sdk.ledger import Ledger
    from iron_sdk.pricing import ModelPrice
    from iron_sdk.runtime import Runtime
    from iron_sdk.session import Session

log = logging.getLogger("iron_sdk.budget")
DEFAULT_MAX_OUTPUT = 4096  # when neither the call nor the price data names a maximum
MIN_OUTPUT = 16  # the least output worth a call when the budget caps it
_FIT_ATTEMPTS = 3


class BudgetPolicy:
    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.ledger: Ledger | None = None
        self.leases: LeaseKeeper | None = None  # renews the leases of calls in flight
        self._deferred = False
        self._pending: dict[str, tuple[float, ...]] = {}  # call id → thresholds to check

    @hookimpl
    def iron_configure(self, runtime: Runtime) -> None:
        self.runtime, self.ledger = runtime, runtime.ledger
        self.leases = LeaseKeeper(runtime.ledger)
        if isinstance(self.ledger, WriteBehindLedger):
            self.ledger.on_settled = self._written
            self._deferred = True

    @hookimpl
    def iron_unconfigure(self) -> None:
        if self.leases is not None:
            self.leases.close()

    @hookimpl(trylast=True)
    def iron_llm_request(self, call: LlmCall) -> None:
        assert self.runtime is not None and self.ledger is not None
        session = call.session
        price = self.runtime.price(call.model)
        call.provider = call.provider or price.provider
        if not call.input_tokens_est:
            call.input_tokens_est = count_request(call.model, call.request)
        # The output the call can generate: its limit (else the default, else the
        # model's maximum) for each of its n choices.
        default_out = (session.budget.default_max_tokens or price.max_output_tokens
                       or DEFAULT_MAX_OUTPUT)
        max_out = call.request.output_tokens(default_out)
        # No worst-case wall: a call that set no output limit, and that the budget cannot
        # cover at the model's maximum, gets the limit the budget affords (written into
        # the request, so it cannot generate more), decided under the session lock and
        # retried when another process took the remainder first.
        fit = (call.request.max_tokens is None and call.kind != "embedding"
               and session.budget.reserve == "fit")
        with session.lock:
            for attempt in range(_FIT_ATTEMPTS):
                amount = price.estimate_micro(call.input_tokens_est, max_out)
                try:
                    self._reserve(call, amount)
                    break
                except BudgetExceededError:
                    if not fit or attempt == _FIT_ATTEMPTS - 1:
                        raise
                    per_choice = self._affordable(call, price, default_out)
                    if per_choice < MIN_OUTPUT:
                        raise
                    call.request.limit_output(per_choice)
                    call.output_capped = per_choice
                    max_out = call.request.output_tokens(default_out)
        call.max_output_tokens = max_out
        if call.output_capped is not None:
            self.runtime.emit(make_event(
                "output_capped", call_id=call.call_id, agent_id=session.agent_id,
                model=call.model, max_tokens=call.output_capped, model_max=default_out,
                reserved_micro=call.reserved_micro))

    def _reserve(self, call: LlmCall, amount: int) -> None:
        """Hold ``amount`` against the session cap and every ledger scope (session lock
        held), or raise :class:`BudgetExceededError` with nothing held."""
        assert self.ledger is not None
        session = call.session
        cap = session.cap_micro
        if cap is not None and session.spent_micro + session.reserved_micro + amount > cap:
            raise BudgetExceededError(
                scope=f"session:{session.agent_id}", limit_usd=usd(cap),
                spent_usd=usd(session.spent_micro + session.reserved_micro),
                requested_usd=usd(amount))
        lease_s = session.budget.lease_s
        try:
            call.ledger_reserved = self.ledger.reserve(
                call.call_id, session.scopes, amount, lease_s, agent_id=session.agent_id,
                model=call.model)
        except RuntimeUnavailableError as exc:
            self._ledger_failed(session, "reserve", exc)
        if call.ledger_reserved and self.leases is not None:
            self.leases.hold(call.call_id, lease_s)
        session.reserved_micro += amount
        call.reserved_micro = amount
        call.reserved_scopes = session.scopes

    def _affordable(self, call: LlmCall, price: ModelPrice, most: int) -> int:
        """The output tokens per choice the tightest budget still covers (at most
        ``most``): the session cap's and every limited scope's remainder."""
        assert self.ledger is not None
        session = call.session
        left = []
        if session.cap_micro is not None:
            left.append(session.cap_micro - session.spent_micro - session.reserved_micro)
        for scope in session.scopes:
            state = self.ledger.state(scope)
            if state.limit_micro is not None:
                left.append(state.limit_micro - state.spent_micro - state.reserved_micro)
        remaining = min(left, default=0)
        choices = call.request.choices
        low, high = 0, most  # the largest output whose estimate fits (estimate grows)
        while low < high:
            mid = (low + high + 1) // 2
            if price.estimate_micro(call.input_tokens_est, mid * choices) <= remaining:
                low = mid
            else:
                high = mid - 1
        return low

    @hookimpl
    def iron_llm_response(self, call: LlmCall) -> None:
        assert self.runtime is not None and self.ledger is not None and call.usage is not None
        session = call.session
        with session.lock:
            session.reserved_micro -= call.reserved_micro
            session.spent_micro += call.cost_micro
            session.calls += 1
            spent = session.spent_micro
        thresholds = session.budget.thresholds
        if session.cap_micro is not None:
            self._marks(session.agent_id, call.cost_micro, thresholds,
                        f"session:{session.agent_id}", session.cap_micro, spent)
        if self._deferred:  # written behind: thresholds are checked once it is written
            self._pending[call.call_id] = thresholds
        if call.ledger_reserved and self.leases is not None:
            self.leases.drop(call.call_id)
        try:
            states = self.ledger.settle(
                call.call_id, session.scopes, call.cost_micro, agent_id=session.agent_id,
                model=call.model, input_tokens=call.usage.input_tokens,
                output_tokens=call.usage.output_tokens)
        except InvalidAmountError:  # nothing queued; the lease charges what was reserved
            self._pending.pop(call.call_id, None)
            raise
        except RuntimeUnavailableError as exc:
            # The provider already answered: the charge cannot be refused, only logged.
            log.error("ledger settle failed for call %s: %s", call.call_id, exc)
            self.runtime.emit(make_event("ledger_error", call_id=call.call_id, op="settle",
                                         agent_id=session.agent_id, cost_micro=call.cost_micro))
            return
        if states is not None:
            self._thresholds(session.agent_id, call.cost_micro, thresholds, states)

    def _written(self, item: Settlement, states: list[ScopeState]) -> None:
        thresholds = self._pending.pop(item.reservation_id, ())
        self._thresholds(item.agent_id, item.cost_micro, thresholds, states)

    @hookimpl
    def iron_llm_error(self, call: LlmCall) -> None:
        self.release(call)

    def release(self, call: LlmCall) -> None:
        if not call.reserved_micro:
            return
        session = call.session
        with session.lock:
            session.reserved_micro -= call.reserved_micro
        amount, call.reserved_micro = call.reserved_micro, 0
        if call.ledger_reserved and self.ledger is not None:
            if self.leases is not None:
                self.leases.drop(call.call_id)
            try:
                self.ledger.release(call.call_id)
            except RuntimeUnavailableError as exc:  # the lease frees it later anyway
                log.warning("ledger release of %d µ$ failed: %s", amount, exc)

    def _ledger_failed(self, session: Session, op: str, exc: RuntimeUnavailableError) -> None:
        if session.budget.on_ledger_error == "closed":
            raise exc
        log.warning("ledger %s failed, proceeding (on_ledger_error='open'): %s", op, exc)
        assert self.runtime is not None
        self.runtime.emit(make_event("ledger_error", op=op, agent_id=session.agent_id,
                                     action="fail_open"))

    def _thresholds(self, agent_id: str, cost_micro: int, thresholds: tuple[float, ...],
                    states: list[ScopeState]) -> None:
        """Emit ``budget_threshold`` for each mark this charge crossed."""
        for state in states:
            if state.limit_micro:
                self._marks(agent_id, cost_micro, thresholds, state.scope, state.limit_micro,
                            state.spent_micro)

    def _marks(self, agent_id: str, cost_micro: int, thresholds: tuple[float, ...],
               scope: str, limit: int, spent: int) -> None:
        """Emit ``budget_threshold`` for each mark of ``limit`` this charge crossed."""
        assert self.runtime is not None
        before = spent - cost_micro
        for t in thresholds:
            if before < t * limit <= spent:
                self.runtime.emit(make_event(
                    "budget_threshold", scope=scope, threshold=t, agent_id=agent_id,
                    spent_micro=spent, limit_micro=limit))
