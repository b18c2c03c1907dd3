"""The one runtime interface: what every door drives, in-process or over HTTP.

:class:`~iron_sdk.runtime.Runtime` (library mode, and the router's own) and
:class:`~iron_sdk.remote.RemoteRuntime` (the SDK with ``IRON_RUNTIME_URL``) both
implement it; :func:`~iron_sdk.runtime.get_runtime` returns one and
``Session.runtime`` holds one, so plugins never ask which mode they run in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pluggy

    from iron_sdk.call import LlmCall, ToolCall, Usage
    from iron_sdk.config import BudgetConfig, ReliabilityConfig, RuntimeConfig, SafetyConfig
    from iron_sdk.events import Event
    from iron_sdk.policy.model import Policy
    from iron_sdk.pricing import ModelPrice
    from iron_sdk.request import LlmRequest
    from iron_sdk.session import Session


class GovernanceRuntime(Protocol):
    """Sessions, the model-call pipeline, tools and the shared services."""

    config: RuntimeConfig
    pm: pluggy.PluginManager
    hook: Any

    def open_session(self, agent_id: str | None = None, *, ic_token: str | None = None,
                     budget_usd: float | None = None, budget: BudgetConfig | None = None,
                     safety: SafetyConfig | None = None,
                     reliability: ReliabilityConfig | None = None,
                     scopes: tuple[str, ...] = (), policy: Policy | None = None) -> Session: ...

    def close_session(self, session: Session, error: BaseException | None = None) -> None: ...

    def outside_session(self) -> Session: ...

    def begin_call(self, session: Session, request: LlmRequest, *, model: str | None = None,
                   source: str = "sdk", provider: str = "", can_redact: bool = True,
                   redact_hint: str | None = None) -> LlmCall: ...

    def settle_call(self, call: LlmCall, usage: Usage) -> LlmCall: ...

    def fail_call(self, call: LlmCall, error: BaseException) -> None: ...

    def begin_tool(self, session: Session, name: str, arguments: Any = None,
                   source: str = "sdk") -> ToolCall: ...

    def end_tool(self, call: ToolCall, result: Any = None,
                 error: BaseException | None = None) -> None: ...

    def price(self, model: str) -> ModelPrice: ...

    def emit(self, event: Event) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...
