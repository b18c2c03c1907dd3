"""The router's Starlette app: door 3 (OpenAI-compatible API), door 2 (runtime API),
health, metrics and the OpenAPI document, around one in-process :class:`Runtime`."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
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
from iron_router.dashboard import mount as dashboard
from iron_router.hot_routes import HotRoutes
from iron_router.metrics import CONTENT_TYPE, RouterMetrics
from iron_router.offload import Offload
from iron_router.openai_api import RouterState
from iron_router.openai_api import routes as openai_routes
from iron_router.upstream import Upstream
from iron_sdk import __version__
from iron_sdk.home import secure_home_files
from iron_sdk.ledger import Ledger, SQLiteLedger, open_ledger
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
    error into a clean OpenAI-shaped 500 (no traceback text leaves the process).

    A handler may mark its request ``quiet`` (``scope["iron.log"]["quiet"] = True``): if
    it succeeds, its line is logged at DEBUG. The runtime API does so for an allowed
    ``begin``, whose ``settle`` or ``fail`` line reports the call with its cost: one INFO
    line per LLM call in SDK mode, as through the OpenAI door, and one ``write`` less per
    call on the SDK's round trip."""

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
            level = logging.DEBUG if status < 400 and info.get("quiet") else logging.INFO
            if log.isEnabledFor(level):
                cost = info.get("cost_micro")
                log.log(level, "%s %s %d %.1fms agent=%s model=%s%s%s", scope["method"],
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


def is_loopback_host(host: str) -> bool:
    """``localhost``, ``*.localhost``, 127.0.0.0/8, ``::1`` (and ``::ffff:127.x``)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def host_name(value: str) -> str:
    """The host of a ``Host`` header or an ``Origin``'s authority, lower case, without
    port, brackets or trailing dot (``[::1]:8080`` → ``::1``)."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        value = value[1:end] if end > 0 else value
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


class HostCheck:
    """Defeats DNS rebinding: a connection that arrived on a loopback address (a
    router bound to 127.0.0.1, or to 0.0.0.0 and reached through loopback) is only
    answered when its ``Host`` names a loopback host or one of ``allowed_hosts``; else
    421 ``misdirected_request``. With ``allowed_hosts`` set, every connection is checked.
    A browser page from another origin is refused too (403 ``cross_origin_request``):
    OpenAI clients send no ``Origin`` header, browsers always do on cross-site calls.
    ``allowed_hosts: ["*"]`` turns both checks off."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...] = ()) -> None:
        self.app = app
        self.off = "*" in allowed_hosts
        self.exact = frozenset(host_name(h) for h in allowed_hosts if not h.startswith("*."))
        self.suffixes = tuple(h[1:].lower() for h in allowed_hosts if h.startswith("*."))
        self.everywhere = bool(allowed_hosts)
        self._verdicts: dict[bytes, bool] = {}
        self._local: dict[str, bool] = {}

    def _via_loopback(self, server: tuple[str, int] | None) -> bool:
        if not server:
            return False
        ok = self._local.get(server[0])
        if ok is None:  # the router's own addresses: a handful
            ok = self._local[server[0]] = is_loopback_host(str(server[0]))
        return ok

    def allowed(self, raw: bytes) -> bool:
        ok = self._verdicts.get(raw)
        if ok is None:
            host = host_name(raw.decode("latin-1"))
            ok = (is_loopback_host(host) or host in self.exact
                  or (bool(self.suffixes) and host.endswith(self.suffixes)))
            if len(self._verdicts) < 1024:  # client-chosen: bounded
                self._verdicts[raw] = ok
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.off:
            await self.app(scope, receive, send)
            return
        if not self.everywhere and not self._via_loopback(scope.get("server")):
            await self.app(scope, receive, send)
            return
        host = origin = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
        if host is not None and not self.allowed(host):
            await _send_json(send, 421, {"error": {
                "message": "This router only answers requests addressed to it by a "
                           "loopback name (localhost, 127.0.0.1, [::1]); add the host to "
                           "iron: allowed_hosts in the router config to serve it.",
                "type": "invalid_request_error", "code": "misdirected_request",
                "param": None}})
            return
        if origin is not None and not self.allowed(origin.partition(b"://")[2] or b"null"):
            await _send_json(send, 403, {"error": {
                "message": "Requests from a web page of another origin are refused; "
                           "add its host to iron: allowed_hosts to allow them.",
                "type": "invalid_request_error", "code": "cross_origin_request",
                "param": None}})
            return
        await self.app(scope, receive, send)


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
      200: {description: "{status: ok | degraded, deployments: breaker state per model
        name and deployment, degraded: model names with no usable deployment}"}
    """
    st: RouterState = request.app.state.router
    health = st.deployments.health()
    return JSONResponse({"status": "degraded" if health["degraded"] else "ok",
                         "version": __version__,
                         "models": len(st.config.routes) or None,
                         "in_flight": request.app.state.in_flight.count, **health})


async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, latency, spend, tokens and blocks per agent and model.
    ---
    summary: Prometheus metrics
    tags: [router]
    responses:
      200: {description: Prometheus text exposition format}
    """
    metrics: RouterMetrics = request.app.state.metrics
    metrics.deployments(request.app.state.router.deployments.health())
    return Response(metrics.render(), media_type=CONTENT_TYPE)


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
    import aiohttp  # noqa: F401 - the upstream client
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


def _open_ledger(config: RouterConfig) -> Ledger:
    """The runtime's ledger; an SQLite one waits at most ``ledger_timeout_s`` for a lock
    another process holds (then the call is refused: 503 ``ledger_unavailable``, or let
    through when the operator set ``on_ledger_error: open``)."""
    url = config.runtime.ledger_url()
    path = url[len("sqlite://"):] if url.startswith("sqlite://") else (
        None if "://" in url or url in ("memory", "", ":memory:") else os.path.expanduser(url))
    if path is None:
        return open_ledger(url)
    return ReserveBoundedLedger(path, config.settings.ledger_timeout_s)


class ReserveBoundedLedger(SQLiteLedger):
    """An SQLite ledger whose reservations wait at most ``reserve_timeout_s`` for a
    lock (the call is refused then), while settlements and releases keep the usual
    long wait: an answer already paid for is never dropped for a busy lock."""

    def __init__(self, path: str, reserve_timeout_s: float) -> None:
        super().__init__(path)
        self._reserver = SQLiteLedger(path, busy_timeout_s=reserve_timeout_s)

    def reserve(self, reservation_id: str, scopes: Sequence[str], amount_micro: int,
                ttl_s: float, *, agent_id: str = "", model: str = "") -> bool:
        return self._reserver.reserve(reservation_id, scopes, amount_micro, ttl_s,
                                      agent_id=agent_id, model=model)

    def close(self) -> None:
        self._reserver.close()
        super().close()


def create_app(config: RouterConfig | None = None) -> Starlette:
    """The router app around a new :class:`Runtime` on ``config.runtime``'s ledger."""
    config = config or RouterConfig()
    settings = config.settings
    known = tuple({n for n in config.routes} | {r.model for rs in config.routes.values()
                                                for r in rs})
    router_metrics = RouterMetrics(max_agents=settings.metrics_max_agents,
                                   max_models=settings.metrics_max_models, known_models=known)
    config.runtime.ensure_home()  # 0700 if we make it
    runtime = Runtime(config.runtime, ledger=_open_ledger(config),
                      plugins=(router_metrics,))
    secure_home_files(config.runtime.home)  # ledger (+ WAL), keys, audit log: 0600
    offload = Offload()  # blocking work off the loop (iron_router.offload)
    state = RouterState(runtime, config, Upstream(config.settings, config.secrets()),
                        offload)
    tracker = InFlight()
    router_metrics.in_flight.set_function(lambda: tracker.count)  # read at scrape time

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if config.needs_litellm:
            state.upstream.preload_litellm()
        threading.Thread(target=_warm_up, args=(runtime, config), name="iron-warm-up",
                         daemon=True).start()
        state.deployments.start()  # shared breakers: kept in step in the background
        try:
            yield
        finally:
            # uvicorn has stopped accepting and waited for open connections; wait for
            # any request still running, then write every settlement and audit line.
            if not await tracker.wait_idle(config.settings.shutdown_timeout_s):
                log.warning("shutdown: %d request(s) still running", tracker.count)
            await state.upstream.aclose()
            state.deployments.close()
            runtime.close()

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
        *openai_routes,
        *runtime_routes,
        *admin_routes,
        dashboard("/ui"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(RequestLog, metrics=router_metrics, tracker=tracker),
                                Middleware(HostCheck, allowed_hosts=settings.allowed_hosts),
                                Middleware(HotRoutes, routes=[*openai_routes, *runtime_routes],
                                           on_http_error=_http_error)],
                    exception_handlers={HTTPException: _http_error})
    app.state.runtime = runtime
    app.state.config = config
    app.state.router = state
    app.state.metrics = router_metrics
    app.state.in_flight = tracker
    app.state.offload = offload
    return app
