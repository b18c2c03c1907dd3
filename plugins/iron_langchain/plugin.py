"""Entry point (group ``iron_sdk``): attaches the LangChain callback handler once the user
has imported LangChain."""

from __future__ import annotations

import sys

from iron_sdk.integration import Session, hookimpl


@hookimpl
def iron_session_start(session: Session) -> None:
    # Checked per session (a dict lookup) so importing iron_sdk never imports langchain.
    if "langchain_core" in sys.modules:
        from iron_langchain.callbacks import instrument

        instrument()
