"""The plugin manager: built-in policies and entry-point plugins, loaded the same way."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

from iron_sdk import hookspecs

if TYPE_CHECKING:
    from iron_sdk.config import RuntimeConfig

ENTRY_POINT_GROUP = "iron_sdk"
log = logging.getLogger("iron_sdk")


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


_instrumented = False
_instrument_lock = threading.Lock()


def instrument_frameworks() -> None:
    """Let the entry-point plugins instrument the frameworks already imported (the
    ``iron_instrument`` hook), once per process, without creating a runtime."""
    global _instrumented
    if _instrumented:
        return
    with _instrument_lock:
        if _instrumented:
            return
        pm = pluggy.PluginManager("iron_sdk")
        pm.add_hookspecs(hookspecs)
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        call_each(pm, "iron_instrument", _log_failure)
        _instrumented = True


def _log_failure(plugin: str, hook: str, exc: BaseException, call: Any) -> None:
    log.warning("plugin %s failed in %s (%s)", plugin, hook, type(exc).__name__)


OnFailure = Callable[[str, str, BaseException, Any], None]


def call_in_order(pm: pluggy.PluginManager, name: str, **kwargs: Any) -> None:
    """Call every implementation of hook ``name`` in pluggy's order, as calling the hook
    does: the first that raises stops the rest, and its exception propagates. The loop
    is ours for the per-call hooks (``iron_llm_request``): a fifth of pluggy's cost with
    the built-in four plugins. A wrapper implementation present: pluggy calls them all."""
    hook = getattr(pm.hook, name)
    impls = hook.get_hookimpls()
    for impl in impls:
        if impl.wrapper or impl.hookwrapper:
            hook(**kwargs)
            return
    for impl in reversed(impls):
        impl.function(*[kwargs[arg] for arg in impl.argnames])


def call_each(pm: pluggy.PluginManager, name: str, on_failure: OnFailure,
              **kwargs: Any) -> None:
    """Call every implementation of hook ``name`` in pluggy's order, each on its own:
    one that raises is reported to ``on_failure(plugin, hook, error, call)`` and the rest
    still run. For the hooks after a provider answered (``iron_llm_response``,
    ``iron_llm_error``) and the event sinks, where a plugin's fault must not cost the
    charge, the release or the user's result. (Wrapper implementations are not
    supported on these hooks; they are called as plain ones.)"""
    for impl in reversed(getattr(pm.hook, name).get_hookimpls()):
        try:
            impl.function(*[kwargs[arg] for arg in impl.argnames])
        except Exception as exc:
            on_failure(impl.plugin_name, name, exc, kwargs.get("call"))
