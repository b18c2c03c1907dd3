"""The router's Starlette app: door 3 (OpenAI-compatible API), door 2 (runtime API),
health, metrics and the OpenAPI document, around one in-process :class:`Runtime`."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iron_router.admin_api import routes as admin_routes
from iron_router.config import RouterConfig
from iron_router.metrics import CONTENT_TYPE, RouterMetrics
from iron_router.openai_api import RouterState
from iron_router.openai_api import routes as openai_routes
from iron_router.upstream import Upstream
from iron_sdk import __version__
from iron_sdk.runtime import Runtime

log = logging.getLogger("iron_router")

try:  # door 2, built alongside this module
    from iron_router.runtime_api import routes as runtime_routes
except ModuleNotFoundError as exc:
    if exc.name != "iron_router.runtime_api":
        raise
    runtime_routes: list[BaseRoute] = []


class RequestLog:
    """Outermost middleware: one log line and the request metrics per request, the
    in-flight count for a graceful shutdown, and the catch-all that turns an unexpected
    error into a clean OpenAI-shaped 500 (no traceback text leaves the process)."""

    def __init__(self, app: ASGIApp, metrics: RouterMetrics, tracker: InFlight) -> None:
        self.app = app
        self.metrics = metrics
        self.tracker = tracker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        info: dict[str, Any] = {}
        scope["iron.log"] = info
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.tracker.enter()
        try:
            await self.app(scope, receive, send_status)
        except ClientDisconnect:
            info["outcome"] = "client_gone"
        except Exception as exc:
            info["outcome"] = f"error {type(exc).__name__}"
            log.error("unexpected %s while serving %s %s", type(exc).__name__,
                      scope["method"], scope["path"], exc_info=log.isEnabledFor(logging.DEBUG))
            if not status:
                status = 500
                await _send_json(send, 500, {"error": {
                    "message": f"Internal router error ({type(exc).__name__}); the request "
                               "was not completed. The router log has the details.",
                    "type": "server_error", "code": "internal_error", "param": None}})
        finally:
            self.tracker.leave()
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            path = getattr(route, "path", "other")
            agent, model = info.get("agent", ""), info.get("model", "")
            self.metrics.request(path, status, agent, model, elapsed)
            if log.isEnabledFor(logging.INFO):
                cost = info.get("cost_micro")
                log.info("%s %s %d %.1fms agent=%s model=%s%s%s", scope["method"],
                         _printable(scope["path"][:200]), status, elapsed * 1000,
                         agent or "-", _printable(model) or "-",
                         "" if cost is None else f" cost_usd={cost / 1e6:.6f}",
                         f" outcome={info['outcome']}" if "outcome" in info else "")


def _printable(text: str) -> str:
    """Client-chosen text (a decoded path, a pass-through model name) cannot forge log
    lines: control characters come out escaped."""
    return text if text.isprintable() else repr(text)


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class InFlight:
    """Requests being served; shutdown waits for them (settlements follow)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout_s: float | None) -> bool:
        if self.count == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


_SCHEMA_BASE = {
    "openapi": "3.0.0",
    "info": {"title": "iron-sdk router", "version": __version__,
             "description": "OpenAI-compatible API and runtime API of iron-runtime, governed "
                            "by budgets, PII safety, reliability limits and audit."},
    "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                                      "description": "IC token"}}},
}


def openapi_schema(routes: list[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI document from the endpoints' docstring YAML (built on first request:
    it needs yaml, which start-up does not)."""
    from starlette.schemas import SchemaGenerator

    class Schemas(SchemaGenerator):
        def parse_docstring(self, func_or_method: Any) -> dict[str, Any]:
            try:
                return super().parse_docstring(func_or_method)
            except Exception:  # a docstring that is not YAML describes nothing
                return {}

    return Schemas(_SCHEMA_BASE).get_schema(routes=routes)


async def healthz(request: Request) -> Response:
    """Liveness: the router is up and serving.
    ---
    summary: Health check (no token needed)
    tags: [router]
    responses:
      200: {description: "{status: ok}"}
    """
    st: RouterState = request.app.state.router
    return JSONResponse({"status": "ok", "version": __version__,
                         "models": len(st.config.routes) or None,
                         "in_flight": request.app.state.in_flight.count})


async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, latency, spend, tokens and blocks per agent and model.
    ---
    summary: Prometheus metrics
    tags: [router]
    responses:
      200: {description: Prometheus text exposition format}
    """
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    schema = getattr(request.app.state, "openapi", None)
    if schema is None:
        schema = request.app.state.openapi = openapi_schema(request.app.routes)
    return JSONResponse(schema)


async def _http_error(request: Request, exc: Exception) -> Response:
    """404/405 and friends in the OpenAI error shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = (f"No endpoint {request.method} {request.url.path} on this router."
               if exc.status_code in (404, 405) else str(exc.detail))
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "code": code, "param": None}},
                        status_code=exc.status_code, headers=exc.headers)


def _warm_up(runtime: Runtime, config: RouterConfig) -> None:
    try:
        _load(runtime, config)
    except Exception as exc:  # the first request will load (and report) it instead
        log.debug("warm-up stopped early: %s", type(exc).__name__)


def _load(runtime: Runtime, config: RouterConfig) -> None:
    """Load what the first request would otherwise wait for (HTTP client, token verifier,
    price map, tokenizer) while the router already answers; name unpriced routes early."""
    import httpx  # noqa: F401 - the upstream client
    import jwt  # noqa: F401 - PyJWT pulls in cryptography (~0.3 s)

    from iron_sdk.errors import UnknownModelPriceError
    from iron_sdk.pricing import default_database
    from iron_sdk.tokens import count_text

    for name, rs in config.routes.items():
        for route in rs:
            try:
                runtime.price(route.model)
            except UnknownModelPriceError:
                log.warning("no price for %s (model_name %s): its calls are refused until "
                            "iron.prices or litellm_params input/output_cost_per_token "
                            "names one", route.model, name)
    if not config.routes:
        default_database().lookup("gpt-4o-mini")  # loads the price map
    count_text("gpt-4o-mini", "warm up")


def create_app(config: RouterConfig | None = None) -> Starlette:
    """The router app around a new :class:`Runtime` on ``config.runtime``'s ledger."""
    config = config or RouterConfig()
    router_metrics = RouterMetrics()
    runtime = Runtime(config.runtime, plugins=(router_metrics,))
    state = RouterState(runtime, config, Upstream(config.settings, config.secrets()))
    tracker = InFlight()
    router_metrics.in_flight.set_function(lambda: tracker.count)  # read at scrape time

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if config.needs_litellm:
            state.upstream.preload_litellm()
        threading.Thread(target=_warm_up, args=(runtime, config), name="iron-warm-up",
                         daemon=True).start()
        try:
            yield
        finally:
            # uvicorn has stopped accepting and waited for open connections; wait for
            # any request still running, then write every settlement and audit line.
            if not await tracker.wait_idle(config.settings.shutdown_timeout_s):
                log.warning("shutdown: %d request(s) still running", tracker.count)
            await state.upstream.aclose()
            runtime.close()

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
        *openai_routes,
        *runtime_routes,
        *admin_routes,
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(RequestLog, metrics=router_metrics, tracker=tracker)],
                    exception_handlers={HTTPException: _http_error})
    app.state.runtime = runtime
    app.state.config = config
    app.state.router = state
    app.state.metrics = router_metrics
    app.state.in_flight = tracker
    return app
