"""``iron-runtime dashboard``: the dashboard for library mode, on loopback, reading the
``$IRON_HOME`` ledger, policy store and audit log that the agents' processes write."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from iron_router.app import HostCheck
from iron_router.dashboard import mount
from iron_sdk.config import RuntimeConfig
from iron_sdk.runtime import Runtime

HOST = "127.0.0.1"  # loopback only: there is no option to serve it further


async def _home(request: Request) -> Response:
    return RedirectResponse("/ui/", 307)


def create_app(config: RuntimeConfig | None = None) -> Starlette:
    """A dashboard app around a runtime on ``config``'s home (its actions are audited in
    that home's audit log, like the router's)."""
    runtime = Runtime(config or RuntimeConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            runtime.close()

    app = Starlette(routes=[Route("/", _home, methods=["GET"]), mount("/ui")],
                    middleware=[Middleware(HostCheck)], lifespan=lifespan)
    app.state.runtime = runtime
    return app


def serve(port: int = 8090) -> int:
    """Serve until SIGINT/SIGTERM; the exit code."""
    import uvicorn

    app = create_app()
    print(f"iron dashboard on http://{HOST}:{port}/ui/", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, lifespan="on",
                                           access_log=False, log_level="warning",
                                           timeout_graceful_shutdown=5, server_header=False))
    server.run()
    return 0 if server.started else 1
