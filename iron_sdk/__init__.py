"""iron-sdk: a local governance runtime for LLM agents.

``@protect_agent`` puts every LLM call a function makes under policy: budgets reserved
before and settled after each call, PII/secret redaction, reliability limits and an
audit trail, in-process by default or through ``iron-runtime --mode=router`` when
``IRON_RUNTIME_URL`` is set.

Names are imported on first use, so ``import iron_sdk`` stays light (the runtime, with
pydantic and pluggy, loads on the first protected call).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "protect_agent": "iron_sdk.protect",
    "current_session": "iron_sdk.session",
    "Session": "iron_sdk.session",
    "llm_call": "iron_sdk.guard",
    "hookimpl": "iron_sdk.hookspecs",
    "Runtime": "iron_sdk.runtime",
    "get_runtime": "iron_sdk.runtime",
    "set_runtime": "iron_sdk.runtime",
    "BudgetConfig": "iron_sdk.config",
    "SafetyConfig": "iron_sdk.config",
    "ReliabilityConfig": "iron_sdk.config",
    "RuntimeConfig": "iron_sdk.config",
    "Policy": "iron_sdk.policy.model",
    **{name: "iron_sdk.errors" for name in (
        "IronCageError", "BudgetExceededError", "SafetyViolationError", "InvalidTokenError",
        "InvalidRequestError", "RateLimitedError", "CircuitOpenError",
        "RuntimeUnavailableError", "UnknownModelPriceError", "ModelNotFoundError",
        "ModelNotAllowedError", "AgentDisabledError", "ToolNotAllowedError",
        "OutsideSessionError",
        "PolicyViolationError")},
}

__all__ = [
    "AgentDisabledError", "BudgetConfig", "BudgetExceededError", "CircuitOpenError",
    "InvalidRequestError", "InvalidTokenError", "IronCageError", "ModelNotAllowedError",
    "ModelNotFoundError", "OutsideSessionError", "Policy", "PolicyViolationError",
    "RateLimitedError",
    "ReliabilityConfig", "Runtime", "RuntimeConfig", "RuntimeUnavailableError",
    "SafetyConfig", "SafetyViolationError", "Session", "ToolNotAllowedError",
    "UnknownModelPriceError", "current_session", "get_runtime", "hookimpl", "llm_call",
    "protect_agent", "set_runtime",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'iron_sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from iron_sdk.config import BudgetConfig, ReliabilityConfig, RuntimeConfig, SafetyConfig
    from iron_sdk.errors import (
        AgentDisabledError,
        BudgetExceededError,
        CircuitOpenError,
        InvalidRequestError,
        InvalidTokenError,
        IronCageError,
        ModelNotAllowedError,
        ModelNotFoundError,
        OutsideSessionError,
        PolicyViolationError,
        RateLimitedError,
        RuntimeUnavailableError,
        SafetyViolationError,
        ToolNotAllowedError,
        UnknownModelPriceError,
    )
    from iron_sdk.guard import llm_call
    from iron_sdk.hookspecs import hookimpl
    from iron_sdk.policy.model import Policy
    from iron_sdk.protect import protect_agent
    from iron_sdk.runtime import Runtime, get_runtime, set_runtime
    from iron_sdk.session import Session, current_session
