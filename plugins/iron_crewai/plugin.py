"""Entry point (group ``iron_sdk``): governs CrewAI once the user has imported it.

Only ``sys.modules`` is checked, so importing iron_sdk never imports crewai.
"""

from __future__ import annotations

import sys

from iron_sdk.integration import Session, hookimpl


@hookimpl
def iron_session_start(session: Session) -> None:
    if "crewai" in sys.modules:
        install = sys.modules.get("iron_crewai.install")
        if install is None or not install.installed():
            from iron_crewai.install import instrument

            instrument()


@hookimpl
def iron_session_end(session: Session) -> None:
    install = sys.modules.get("iron_crewai.install")
    if install is not None:
        install.end_session(session)
