"""Entry point (group ``iron_sdk``): instruments ``openai`` once the user has imported it
(``import iron_sdk`` never imports openai): when the runtime starts, and at each session
start (a dict lookup) for an openai imported later. Wrappers such as
``with_raw_response`` taken after the runtime started wrap the governed methods."""

from __future__ import annotations

import sys
from typing import Any

from iron_sdk.integration import Session, hookimpl


def _instrument() -> None:
    if "openai" in sys.modules:
        from iron_openai.wrappers import instrument

        instrument()


@hookimpl
def iron_configure(runtime: Any) -> None:
    _instrument()


@hookimpl
def iron_session_start(session: Session) -> None:
    _instrument()
