"""A session is one invocation of a protected function (or one router client session)."""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from iron_sdk.call import new_id
from iron_sdk.errors import IronCageError, usd

if TYPE_CHECKING:
    from iron_sdk.config import BudgetConfig, ReliabilityConfig, SafetyConfig
    from iron_sdk.interface import GovernanceRuntime
    from iron_sdk.policy.model import Policy

_current: ContextVar[Session | None] = ContextVar("iron_session", default=None)


@dataclass(eq=False)
class Session:
    """Budget state of one protected invocation, readable through ``current_session()``."""

    agent_id: str
    runtime: GovernanceRuntime
    budget: BudgetConfig
    safety: SafetyConfig
    reliability: ReliabilityConfig
    scopes: tuple[str, ...] = ()  # ledger scopes this session's calls are charged to
    cap_micro: int | None = None
    session_id: str = field(default_factory=new_id)
    spent_micro: int = 0
    reserved_micro: int = 0
    calls: int = 0
    claims: dict[str, Any] = field(default_factory=dict)
    token: str | None = field(default=None, repr=False)  # the IC token (HTTP mode sends it)
    policy: Policy | None = None  # what the agent's code asked for (only ever tightens)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def spent_usd(self) -> float:
        return usd(self.spent_micro)

    @property
    def budget_usd(self) -> float | None:
        return None if self.cap_micro is None else usd(self.cap_micro)

    @property
    def remaining_usd(self) -> float | None:
        """What this invocation may still spend (None when it has no cap)."""
        if self.cap_micro is None:
            return None
        return usd(max(self.cap_micro - self.spent_micro - self.reserved_micro, 0))


def current_session() -> Session:
    """The session of the protected function running in this context.

    Raises :class:`IronCageError` outside a protected function.
    """
    session = _current.get()
    if session is None:
        raise IronCageError("current_session() called outside a @protect_agent function.")
    return session


def active_session() -> Session | None:
    """The current session or None (what plugins check on their hot path)."""
    return _current.get()
