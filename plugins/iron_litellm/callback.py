"""The callback users add to ``litellm.callbacks`` (and that the entry point adds inside
protected functions)."""

from __future__ import annotations

import threading
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from iron_litellm import sdk
from iron_sdk.config import BudgetConfig, ReliabilityConfig, SafetyConfig
from iron_sdk.integration import Session


class IronLiteLLM(CustomLogger):
    """Governs ``litellm.completion``/``acompletion`` (sync, async, streamed)::

        litellm.callbacks.append(IronLiteLLM())                 # inside @protect_agent
        litellm.callbacks.append(IronLiteLLM(agent_id="bot",    # everywhere, as "bot"
                                             budget_usd=5.0))

    Inside a protected function the call is governed by that function's session.
    Outside one, a callback given an ``agent_id`` or ``ic_token`` governs it as that
    agent: one session for the callback's lifetime, ``budget_usd`` capping it; the
    agent's budget in the ledger applies across processes as usual.

    litellm runs no callback that may refuse or rewrite a *sync* request, so creating
    the callback installs the governed ``litellm.completion``/``acompletion`` (see
    :mod:`iron_litellm.sdk`); the callback itself carries the identity.
    """

    def __init__(self, agent_id: str | None = None, *, ic_token: str | None = None,
                 budget_usd: float | None = None, budget: BudgetConfig | None = None,
                 safety: SafetyConfig | None = None,
                 reliability: ReliabilityConfig | None = None) -> None:
        super().__init__()
        if budget_usd is not None and budget_usd <= 0:
            raise ValueError("budget_usd must be positive")
        self.agent_id = agent_id
        self.options: dict[str, Any] = dict(ic_token=ic_token, budget_usd=budget_usd,
                                            budget=budget, safety=safety,
                                            reliability=reliability)
        self.has_identity = bool(agent_id or ic_token)
        self._session: Session | None = None
        self._lock = threading.Lock()
        sdk.instrument()
        if self.has_identity:
            sdk.register_explicit()

    def session(self) -> Session:
        """This callback's session on the current runtime (opened on first use)."""
        from iron_sdk.runtime import get_runtime

        runtime = get_runtime()
        session = self._session
        if session is None or session.runtime is not runtime:
            with self._lock:
                session = self._session
                if session is None or session.runtime is not runtime:
                    session = runtime.open_session(self.agent_id, **self.options)
                    self._session = session
        return session

    def close(self) -> None:
        """End this callback's session (a new one opens on the next call)."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.runtime.close_session(session)

    def __repr__(self) -> str:
        return f"IronLiteLLM(agent_id={self.agent_id!r})"


def activate() -> None:
    """What the entry point does inside a protected function: wrap litellm's entry
    points, and make sure an :class:`IronLiteLLM` is in ``litellm.callbacks``."""
    import litellm

    sdk.instrument()
    if any(isinstance(cb, IronLiteLLM) for cb in litellm.callbacks):
        return
    with _lock:
        if not any(isinstance(cb, IronLiteLLM) for cb in litellm.callbacks):
            litellm.callbacks.append(IronLiteLLM())


_lock = threading.Lock()
