"""Entry point (group ``iron_sdk``): governs litellm once the user has imported it."""

from __future__ import annotations

import sys

from iron_sdk.integration import Session, hookimpl


@hookimpl
def iron_instrument() -> None:
    # A litellm call outside every protected function is governed too (in the runtime's
    # outside session); the callback is added at the first session.
    if "litellm" in sys.modules:
        import litellm  # noqa: F401 - see below

        from iron_litellm.sdk import instrument

        instrument()


@hookimpl
def iron_session_start(session: Session) -> None:
    # Checked per session (a dict lookup) so importing iron_sdk never imports litellm.
    if "litellm" in sys.modules:
        # litellm first: another thread may still be importing it (the router preloads
        # it), and its submodules must not be locked before the package is.
        import litellm  # noqa: F401

        from iron_litellm.callback import activate

        activate()
