"""Entry point (group ``iron_sdk``): instruments ``openai`` once the user has imported it
(``import iron_sdk`` never imports openai).

If openai is already imported, the resource classes are patched at once (when
``@protect_agent`` decorates a function, when the runtime starts, at a session start).
If it is imported later, the client classes' constructors are patched as it finishes
importing, and the first client built patches the resources: so a client used outside
every protected function, or a ``with_raw_response`` wrapper taken early, is governed.
"""

from __future__ import annotations

import functools
import sys
from types import ModuleType
from typing import Any

from iron_sdk.integration import Session, hookimpl, when_imported


def _instrument() -> None:
    if "openai" in sys.modules:
        from iron_openai.wrappers import instrument

        instrument()
    else:
        when_imported("openai", _on_import)


def _on_import(openai: ModuleType) -> None:
    """openai finished importing: patch only what it loaded (no imports here)."""
    for name in ("OpenAI", "AsyncOpenAI", "AzureOpenAI", "AsyncAzureOpenAI"):
        cls = getattr(openai, name, None)
        init = getattr(cls, "__init__", None)
        if cls is None or init is None or getattr(init, "__iron__", False):
            continue

        @functools.wraps(init)
        def governed_init(self: Any, *args: Any, __init: Any = init, **kwargs: Any) -> None:
            __init(self, *args, **kwargs)
            from iron_openai.wrappers import instrument

            instrument()

        governed_init.__iron__ = True  # type: ignore[attr-defined]
        cls.__init__ = governed_init


@hookimpl
def iron_instrument() -> None:
    _instrument()


@hookimpl
def iron_configure(runtime: Any) -> None:
    _instrument()


@hookimpl
def iron_session_start(session: Session) -> None:
    if "openai" in sys.modules:
        _instrument()
