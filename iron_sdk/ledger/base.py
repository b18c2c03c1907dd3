"""The ledger contract: where budgets are reserved before an LLM call and settled after it.

All amounts are integer micro-dollars. A *scope* is a string key (``"agent:x"``,
``"team:y"``, ``"global"``) that may carry a limit for a period (``total``, ``daily``,
``weekly``, ``monthly``; see :mod:`iron_sdk.ledger.periods`); scopes without one are still
tracked.

Every call id has one life: reserved (a lease) → settled or released, exactly once.

- **Idempotent.** Settling or releasing an id that is already finished is a no-op that
  charges nothing; finished ids are remembered for :data:`SETTLED_RETENTION_S` (then
  forgotten, which bounds the storage). A retry never charges twice.
- **Leases.** A reservation expires ``ttl_s`` after it was made or last renewed
  (:meth:`Ledger.renew`; a live process renews its in-flight calls, see
  :class:`~iron_sdk.ledger.leases.LeaseKeeper`). An expired reservation is never
  forgotten: it is *charged at its reserved amount* to every scope of the call, in the
  period it was reserved in, and counted in ``UsageRow.unsettled_calls`` (its amount is
  in ``cost_micro``). A later settle for that id replaces the reserved charge by the true
  cost, exactly once; a later release refunds it (the call cost nothing). Until it is
  charged, an expired reservation keeps counting as reserved, so the budget never sees a
  gap. Calls whose scopes have no limit hold no lease (there is nothing to protect).
- **Time** is the caller's wall clock, ``time.time()``, for leases and periods alike.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from iron_sdk.errors import (
    BudgetExceededError,
    InvalidRequestError,
    LedgerUnavailableError,
    usd,
)

MAX_AMOUNT = 2**62  # every amount and token count is an int in [0, MAX_AMOUNT)
MAX_TTL_S = 7 * 86400.0
SETTLED_RETENTION_S = 25 * 3600.0  # finished call ids are remembered at least 24 h


class LedgerError(LedgerUnavailableError):
    """The ledger's storage failed; the caller applies its fail-open/closed policy."""


class InvalidAmountError(InvalidRequestError):
    """An amount or token count is not an int in ``[0, 2**62)`` (bools are refused)."""


@dataclass(frozen=True, slots=True)
class ScopeState:
    """A scope's limit and what its current (or, from ``settle``, charged) period holds.

    ``period`` is ``total``/``daily``/``weekly``/``monthly``; ``period_start`` and
    ``resets_at`` are epoch seconds (None for ``total``).
    """

    scope: str
    limit_micro: int | None
    spent_micro: int
    reserved_micro: int  # reservations not yet settled in this period
    period: str = "total"
    period_start: float | None = None
    resets_at: float | None = None


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Usage per (agent, model). ``calls`` counts settled calls; ``unsettled_calls`` the
    calls charged at their reserved amount because their lease ran out (their amount is
    included in ``cost_micro``) and not settled since."""

    agent_id: str
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_micro: int
    unsettled_calls: int = 0


class Settlement(NamedTuple):
    """One call's settlement, as queued by :class:`~iron_sdk.ledger.writer.WriteBehindLedger`.
    Immutable; a named tuple rather than a frozen dataclass, whose constructor costs four
    times as much on every call's settle."""

    reservation_id: str
    scopes: tuple[str, ...]
    cost_micro: int
    agent_id: str
    model: str
    input_tokens: int
    output_tokens: int

    def check(self) -> None:
        """Raise :class:`InvalidAmountError` unless every number is a sane int."""
        check_amount("cost_micro", self.cost_micro)
        check_amount("input_tokens", self.input_tokens)
        check_amount("output_tokens", self.output_tokens)


class Ledger(ABC):
    """Budget storage. Every method is atomic; implementations are thread-safe."""

    #: Where this ledger's write-behind journals live (None: no journal, e.g. in memory).
    home: Path | None = None

    @property
    def identity(self) -> str | None:
        """A name that is the same in every process opening this very ledger (no secrets);
        None for a ledger private to its process."""
        return None

    @abstractmethod
    def reserve(self, reservation_id: str, scopes: Sequence[str], amount_micro: int,
                ttl_s: float, *, agent_id: str = "", model: str = "") -> bool:
        """Hold ``amount_micro`` against every limited scope, or raise BudgetExceededError.

        For every scope with a limit, ``spent + reservations + amount <= limit`` must hold
        in the scope's current period; otherwise BudgetExceededError is raised for the first
        scope (in the given order) that does not fit and nothing is recorded. On success the
        reservation is recorded (with its period per scope, and ``agent_id``/``model`` for
        the usage row should its lease run out) with expiry ``now + ttl_s`` and True is
        returned. If no scope has a limit nothing is recorded and False is returned.
        """

    @abstractmethod
    def settle(self, reservation_id: str, scopes: Sequence[str], cost_micro: int, *,
               agent_id: str, model: str, input_tokens: int,
               output_tokens: int) -> list[ScopeState]:
        """Drop the reservation (if any), charge ``cost_micro`` to every scope, count the call.

        Charged to the period the reservation was made in (the current one without a
        reservation). Actual usage is always charged, even past a limit. Idempotent by
        ``reservation_id`` (see the module docstring). Returns each scope's state (of the
        period charged) after the update, in the given order.
        """

    def settle_many(self, items: Sequence[Settlement]) -> list[list[ScopeState]]:
        """Settle several calls (ledgers that can, do it in one transaction)."""
        return [self.settle(i.reservation_id, i.scopes, i.cost_micro, agent_id=i.agent_id,
                            model=i.model, input_tokens=i.input_tokens,
                            output_tokens=i.output_tokens) for i in items]

    @abstractmethod
    def release(self, reservation_id: str) -> None:
        """Drop a reservation without charging anything (idempotent, like settle)."""

    @abstractmethod
    def renew(self, reservation_ids: Sequence[str], ttl_s: float) -> int:
        """Extend the leases of these (held, unexpired-or-not-yet-charged) reservations to
        ``now + ttl_s``; return how many were renewed."""

    @abstractmethod
    def expire_leases(self) -> int:
        """Charge every reservation whose lease ran out (see the module docstring); return
        how many. Ledgers also do this on their own as they go."""

    @abstractmethod
    def set_limit(self, scope: str, limit_micro: int | None, *, period: str = "total",
                  tz: str = "UTC") -> None:
        """Set (or with None remove) a scope's limit per ``period`` in zone ``tz``."""

    @abstractmethod
    def state(self, scope: str) -> ScopeState:
        """The scope's limit, spent and reservations in its current period."""

    @abstractmethod
    def scopes(self) -> list[str]:
        """Every scope that has a limit or has been charged, sorted."""

    @abstractmethod
    def usage(self) -> list[UsageRow]:
        """Usage aggregated per (agent_id, model), sorted by agent_id, model."""

    @abstractmethod
    def reset(self, scope: str) -> None:
        """Set the scope's spent in its current period back to 0 (admin); keep the limit."""

    @abstractmethod
    def close(self) -> None:
        """Release resources; the ledger must not be used afterwards."""

    def upkeep(self) -> None:
        """Storage housekeeping, run by the write-behind thread after each batch so that no
        caller's thread pays for it (default: none). From the first call on, the ledger
        may leave such work to it. Never raises."""
        return

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


def check_amount(name: str, value: object) -> None:
    """Raise :class:`InvalidAmountError` unless ``value`` is an int in ``[0, 2**62)``."""
    if type(value) is not int and (not isinstance(value, int) or isinstance(value, bool)):
        raise InvalidAmountError(f"{name} must be an integer, got {type(value).__name__}")
    if not 0 <= value < MAX_AMOUNT:  # type: ignore[operator]
        raise InvalidAmountError(f"{name} must be >= 0 and < 2**62, got {value}")


def check_ttl(ttl_s: float) -> None:
    """A lease is a positive, finite number of seconds (at most a week)."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or math.isnan(ttl_s) \
            or not 0 < ttl_s <= MAX_TTL_S:
        raise InvalidAmountError(f"ttl_s must be > 0 and <= {MAX_TTL_S:.0f} seconds, "
                                 f"got {ttl_s!r}")


def exceeded(scope: str, limit: int, used: int, amount: int) -> BudgetExceededError:
    """The refusal for ``scope``; ``used`` is spent plus active reservations."""
    return BudgetExceededError(scope=scope, limit_usd=usd(limit), spent_usd=usd(used),
                               requested_usd=usd(amount))
