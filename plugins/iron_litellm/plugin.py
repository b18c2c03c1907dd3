"""Entry point (group ``iron_sdk``): governs litellm once the user has imported it."""

from __future__ import annotations

import sys

from iron_sdk.integration import Session, hookimpl


@hookimpl
def iron_session_start(session: Session) -> None:
    # Checked per session (a dict lookup) so importing iron_sdk never imports litellm.
    if "litellm" in sys.modules:
        # litellm first: another thread may still be importing it (the router preloads
        # it), and its submodules must not be locked before the package is.
        import litellm  # noqa: F401

        from iron_litellm.callback import activate

        activate()
