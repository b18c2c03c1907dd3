"""Entry point (group ``iron_sdk``): instruments ``anthropic`` once the user has imported
it (``import iron_sdk`` never imports anthropic): when the runtime starts, and at each
session start (a dict lookup) for an anthropic imported later."""

from __future__ import annotations

import sys
from typing import Any

from iron_sdk.integration import Session, hookimpl


def _instrument() -> None:
    if "anthropic" in sys.modules:
        from iron_anthropic.wrappers import instrument

        instrument()


@hookimpl
def iron_configure(runtime: Any) -> None:
    _instrument()


@hookimpl
def iron_session_start(session: Session) -> None:
    _instrument()
