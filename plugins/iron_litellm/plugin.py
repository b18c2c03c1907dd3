"""Entry point (group ``iron_sdk``): governs litellm once the user has imported it."""

from __future__ import annotations

import sys

from iron_sdk.hookspecs import hookimpl
from iron_sdk.session import Session


@hookimpl
def iron_session_start(session: Session) -> None:
    # Checked per session (a dict lookup) so importing iron_sdk never imports litellm.
    if "litellm" in sys.modules:
        from iron_litellm.sdk import activate

        activate()
