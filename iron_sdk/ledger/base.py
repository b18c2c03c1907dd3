"""The ledger contract: where budgets are reserved before an LLM call and settled after it.

All amounts are integer micro-dollars. A *scope* is a string key (``"agent:x"``,
``"team:y"``, ``"global"``) that may carry a limit; scopes without one are still tracked.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from iron_sdk.errors import BudgetExceededError, LedgerUnavailableError, usd


class LedgerError(LedgerUnavailableError):
    """The ledger's storage failed; the caller applies its fail-open/closed policy."""


@dataclass(frozen=True, slots=True)
class ScopeState:
    scope: str
    limit_micro: int | None
    spent_micro: int
    reserved_micro: int  # active (unexpired) reservations


@dataclass(frozen=True, slots=True)
class UsageRow:
    agent_id: str
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_micro: int


@dataclass(frozen=True, slots=True)
class Settlement:
    """One call's settlement, as queued by :class:`~iron_sdk.ledger.writer.WriteBehindLedger`."""

    reservation_id: str
    scopes: tuple[str, ...]
    cost_micro: int
    agent_id: str
    model: str
    input_tokens: int
    output_tokens: int


class Ledger(ABC):
    """Budget storage. Every method is atomic; implementations are thread-safe."""

    @abstractmethod
    def reserve(self, reservation_id: str, scopes: Sequence[str], amount_micro: int,
                ttl_s: float) -> bool:
        """Hold ``amount_micro`` against every limited scope, or raise BudgetExceededError.

        For every scope with a limit, ``spent + active reservations + amount <= limit`` must
        hold; otherwise BudgetExceededError is raised for the first scope (in the given order)
        that does not fit and nothing is recorded. On success the reservation is recorded
        against every limited scope with expiry ``now + ttl_s`` and True is returned. If no
        scope has a limit nothing is recorded and False is returned.
        """

    @abstractmethod
    def settle(self, reservation_id: str, scopes: Sequence[str], cost_micro: int, *,
               agent_id: str, model: str, input_tokens: int,
               output_tokens: int) -> list[ScopeState]:
        """Drop the reservation (if any), charge ``cost_micro`` to every scope, count the call.

        Actual usage is always charged, even past a limit. Returns each scope's state after
        the update, in the given order.
        """

    def settle_many(self, items: Sequence[Settlement]) -> list[list[ScopeState]]:
        """Settle several calls (ledgers that can, do it in one transaction)."""
        return [self.settle(i.reservation_id, i.scopes, i.cost_micro, agent_id=i.agent_id,
                            model=i.model, input_tokens=i.input_tokens,
                            output_tokens=i.output_tokens) for i in items]

    @abstractmethod
    def release(self, reservation_id: str) -> None:
        """Drop a reservation without charging anything."""

    @abstractmethod
    def set_limit(self, scope: str, limit_micro: int | None) -> None:
        """Set (or with None remove) a scope's limit."""

    @abstractmethod
    def state(self, scope: str) -> ScopeState:
        """The scope's limit, spent and active reservations (zeros for an unknown scope)."""

    @abstractmethod
    def scopes(self) -> list[str]:
        """Every scope that has a limit or has been charged, sorted."""

    @abstractmethod
    def usage(self) -> list[UsageRow]:
        """Usage aggregated per (agent_id, model), sorted by agent_id, model."""

    @abstractmethod
    def reset(self, scope: str) -> None:
        """Set the scope's spent back to 0 (admin); the limit is kept."""

    @abstractmethod
    def close(self) -> None:
        """Release resources; the ledger must not be used afterwards."""

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def unique_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    """Order-preserving de-duplication: one call must never charge a scope twice."""
    if isinstance(scopes, str):  # a bare string would be iterated per character
        raise TypeError("scopes must be a sequence of scope names, not a single string")
    return tuple(dict.fromkeys(scopes))


def check_amount(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0 micro-dollars, got {value}")


def exceeded(scope: str, limit: int, used: int, amount: int) -> BudgetExceededError:
    """The refusal for ``scope``; ``used`` is spent plus active reservations."""
    return BudgetExceededError(scope=scope, limit_usd=usd(limit), spent_usd=usd(used),
                               requested_usd=usd(amount))
