"""The plugin manager: built-in policies and entry-point plugins, loaded the same way."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from iron_sdk import hookspecs

if TYPE_CHECKING:
    from iron_sdk.config import RuntimeConfig

ENTRY_POINT_GROUP = "iron_sdk"


def make_manager(config: RuntimeConfig) -> pluggy.PluginManager:
    from iron_sdk.policies.audit import AuditLog
    from iron_sdk.policies.budget import BudgetPolicy
    from iron_sdk.policies.operator import OperatorPolicy
    from iron_sdk.policies.pricing import ConfiguredPrices, PriceDatabasePlugin
    from iron_sdk.policies.reliability import ReliabilityPolicy
    from iron_sdk.policies.safety import SafetyPolicy

    pm = pluggy.PluginManager("iron_sdk")
    pm.add_hookspecs(hookspecs)
    pm.register(PriceDatabasePlugin(), name="iron.prices.database")
    pm.register(ConfiguredPrices(config.prices), name="iron.prices.configured")
    pm.register(SafetyPolicy(), name="iron.safety")
    pm.register(ReliabilityPolicy(), name="iron.reliability")
    pm.register(BudgetPolicy(), name="iron.budget")
    pm.register(OperatorPolicy(), name="iron.operator")  # tryfirst, after safety: runs first
    if config.audit:
        pm.register(AuditLog(config.home / "audit.jsonl"), name="iron.audit")
    if config.load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm
