"""The dashboard: agents and their budgets, spend over time, live calls, blocked calls and
tokens, as server-rendered pages (inline SVG charts, a little JavaScript for the live
view), with the operator's actions behind an admin token.

The router mounts it at ``/ui`` (:func:`mount`); ``iron-runtime dashboard`` serves it
for library mode (:mod:`iron_router.dashboard.standalone`). It reads the app's
``state.runtime``: its ledger, its policy store and its audit log.
"""

from __future__ import annotations

from starlette.routing import Mount


def mount(path: str = "/ui") -> Mount:
    """The dashboard's routes under ``path``."""
    from iron_router.dashboard.views import routes

    return Mount(path, routes=routes())


__all__ = ["mount"]
