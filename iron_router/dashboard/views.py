"""The dashboard's pages, its live stream and its actions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from iron_router.admin_api import audit_change, operator_store
from iron_router.dashboard import access, data
from iron_router.dashboard.auditlog import AuditTail
from iron_router.dashboard.charts import line_chart
from iron_router.dashboard.format import ago, money, stamp
from iron_sdk.errors import InvalidRequestError, IronCageError
from iron_sdk.policy import operations as ops
from iron_sdk.runtime import Runtime

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(money=money, ago=ago, stamp=stamp)
STREAM_S = 15.0  # an event stream ends after this (the browser reconnects): shutdown waits
POLL_S = 0.4
MAX_FORM = 16 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    # not no-referrer: a form's POST would then carry "Origin: null", which HostCheck refuses
    "Referrer-Policy": "same-origin", "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store", "X-Frame-Options": "DENY",
}
NAV = (("agents", "", "Agents"), ("spend", "/spend", "Spend"), ("live", "/live", "Live calls"),
       ("blocked", "/blocked", "Blocked"), ("tokens", "/tokens", "Tokens"))


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _tail(request: Request) -> AuditTail:
    """One tail per app, on the runtime's audit log."""
    state = request.app.state
    tail = getattr(state, "dashboard_tail", None)
    if tail is None:
        plugin = _runtime(request).pm.get_plugin("iron.audit")
        path = plugin.path if plugin is not None else _runtime(request).config.home / "audit.jsonl"
        tail = state.dashboard_tail = AuditTail(Path(path))
    return tail


async def _render(request: Request, page: str, admin: access.Admin | None,
                  status: int = 200, **context: Any) -> Response:
    sid = access.session_id(request) or access.new_session_id()
    response = templates.TemplateResponse(request, f"{page}.html", {
        "base": access.base(request), "page": page, "nav": NAV, "admin": admin,
        "csrf": access.csrf_token(sid), "msg": request.query_params.get("msg", "")[:300],
        "err": request.query_params.get("err", "")[:300], **context}, status_code=status)
    if sid != access.session_id(request):
        access.set_cookie(response, request, access.SESSION_COOKIE, sid)
    response.headers.update(SECURITY_HEADERS)
    return response


Page = Callable[[Request, "access.Admin | None"], Awaitable[Response]]


def _page(fn: Page) -> Callable[[Request], Awaitable[Response]]:
    """Readable without signing in only where :func:`access.reading_open` says so."""
    async def handle(request: Request) -> Response:
        admin = await access.signed_in(request)
        if admin is None and not access.reading_open(request):
            target = quote(request.url.path + (f"?{request.url.query}" if request.url.query
                                               else ""))
            return RedirectResponse(f"{access.base(request)}/login?next={target}", 303)
        try:
            return await fn(request, admin)
        except IronCageError as exc:  # e.g. the ledger cannot answer: say so, never a 500
            return await _render(request, "error", admin, status=exc.status,
                                 message=str(exc)[:300])
    return handle


@_page
async def agents_page(request: Request, admin: access.Admin | None) -> Response:
    rows, others = await run_in_threadpool(data.budget_rows, _runtime(request), _tail(request))
    return await _render(request, "agents", admin, rows=rows, others=others)


@_page
async def spend_page(request: Request, admin: access.Admin | None) -> Response:
    window = request.query_params.get("window", "day")
    if window not in data.WINDOWS:
        window = "day"
    labels, series = await run_in_threadpool(data.spend_charts, _tail(request), window)
    charts = {by: line_chart(s, labels, title=f"Spend per {by}, last {window}")
              for by, s in series.items()}
    return await _render(request, "spend", admin, window=window, windows=list(data.WINDOWS),
                         charts=charts, series=series)


@_page
async def live_page(request: Request, admin: access.Admin | None) -> Response:
    tail = _tail(request)
    await run_in_threadpool(tail.refresh)
    seen = tail.seq  # the stream starts after it (a row shown twice is dropped by live.js)
    events = tail.after(0)[-100:]
    return await _render(request, "live", admin, rows=[data.live_row(e) for e in
                                                       reversed(events)], after=seen)


@_page
async def blocked_page(request: Request, admin: access.Admin | None) -> Response:
    tail = _tail(request)
    await run_in_threadpool(tail.refresh)
    rows = [data.blocked_row(e) for e in reversed(tail.blocked)]
    return await _render(request, "blocked", admin, rows=rows)


@_page
async def tokens_page(request: Request, admin: access.Admin | None) -> Response:
    rows = await run_in_threadpool(data.token_rows, _runtime(request))
    return await _render(request, "tokens", admin, rows=rows, now=time.time())


@_page
async def events(request: Request, admin: access.Admin | None) -> Response:
    """Server-sent events: each new call (display fields only), for ``STREAM_S``; the
    browser reconnects and resumes after the last id it saw."""
    tail = _tail(request)
    after = request.headers.get("last-event-id") or request.query_params.get("after") or ""
    cursor = int(after) if after.isdigit() and len(after) <= 18 else None

    async def stream() -> AsyncIterator[str]:
        nonlocal cursor
        if cursor is None:
            await run_in_threadpool(tail.refresh)
            cursor = tail.seq
        yield "retry: 1000\n\n"
        end = time.monotonic() + STREAM_S
        while time.monotonic() < end:
            await run_in_threadpool(tail.refresh)
            for event in tail.after(cursor):
                cursor = event.seq
                yield f"id: {event.seq}\nevent: call\ndata: {json.dumps(data.live_row(event))}\n\n"
            await asyncio.sleep(POLL_S)
        yield ": bye\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def login_page(request: Request) -> Response:
    return await _render(request, "login", await access.signed_in(request),
                         next=_next(request, request.query_params.get("next")))


def _next(request: Request, target: object) -> str:
    """Only a path inside the dashboard (never another site)."""
    root = access.base(request)
    if isinstance(target, str) and target.startswith(root + "/") and "//" not in target \
            and "\\" not in target:
        return target
    return root + "/"


async def login(request: Request) -> Response:
    form = await _form(request)
    if not access.csrf_ok(request, form.get("csrf")):
        return await _forbidden(request, "The form expired; reload the page and try again.")
    token = str(form.get("token") or "").strip()
    try:
        admin = await run_in_threadpool(access.verify, _runtime(request), token)
    except IronCageError as exc:
        return await _render(request, "login", None, status=401, next=_next(
            request, form.get("next")), error=str(exc)[:300])
    audit_change(_runtime(request), admin.handle, "dashboard_sign_in")
    response = RedirectResponse(_next(request, form.get("next")), 303)
    access.set_cookie(response, request, access.TOKEN_COOKIE, token)
    return response


async def logout(request: Request) -> Response:
    form = await _form(request)
    if not access.csrf_ok(request, form.get("csrf")):
        return await _forbidden(request, "The form expired; reload the page and try again.")
    response = RedirectResponse(f"{access.base(request)}/", 303)
    access.clear_cookie(response, request, access.TOKEN_COOKIE)
    return response


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (what the dashboard's forms send), up to ``MAX_FORM`` bytes."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_FORM:
            return {}
    try:
        return dict(parse_qsl(raw.decode(), max_num_fields=20))
    except (UnicodeDecodeError, ValueError):
        return {}


async def _forbidden(request: Request, message: str) -> Response:
    return await _render(request, "error", None, status=403, message=message)


Action = Callable[[Runtime, dict[str, str]], tuple[str, dict[str, Any], str]]


def _action(fn: Action) -> Callable[[Request], Awaitable[Response]]:
    """Signed in with an admin token, a valid CSRF token, then the operation (blocking, in
    the thread pool), its ``admin_change`` audit event, and back to the page."""
    async def handle(request: Request) -> Response:
        admin = await access.signed_in(request)
        if admin is None:
            return await _forbidden(request, "Sign in with an admin token to change things.")
        form = await _form(request)
        if not access.csrf_ok(request, form.get("csrf")):
            return await _forbidden(request, "The form expired; reload the page and try again.")
        fields = {k: v for k, v in form.items() if k != "csrf"}
        back = _next(request, fields.get("next"))
        runtime = _runtime(request)
        try:
            action, audit, done = await run_in_threadpool(fn, runtime, fields)
        except IronCageError as exc:
            return RedirectResponse(f"{back}{'&' if '?' in back else '?'}err="
                                    f"{quote(str(exc)[:300])}", 303)
        audit_change(runtime, admin.handle, action, via="dashboard", **audit)
        return RedirectResponse(f"{back}{'&' if '?' in back else '?'}msg={quote(done)}", 303)
    return handle


@_action
def set_budget(runtime: Runtime, form: dict[str, str]) -> tuple[str, dict[str, Any], str]:
    try:
        amount = float(form.get("usd", "").strip().lstrip("$") or "nan")
    except ValueError:
        raise InvalidRequestError("The budget must be a number of USD.") from None
    period = form.get("period") or None
    limit, extra, state = ops.set_budget(runtime.ledger, form.get("scope", ""), amount,
                                         period=None if period == "total" else period)
    shown = "removed" if limit is None else money(limit)
    return "budget_set", {"scope": state.scope, "limit_micro": limit, **extra}, \
        f"Budget of {state.scope}: {shown}"


@_action
def switch_agent(runtime: Runtime, form: dict[str, str]) -> tuple[str, dict[str, Any], str]:
    disabled = form.get("action") == "disable"
    result = ops.set_disabled(operator_store(runtime), form.get("scope", ""), disabled)
    return ("agent_disable" if disabled else "agent_enable"), {"scope": result["scope"]}, \
        f"{result['scope']} {'disabled' if disabled else 'enabled'}"


@_action
def revoke_token(runtime: Runtime, form: dict[str, str]) -> tuple[str, dict[str, Any], str]:
    token = form.get("token", "").strip()
    if not token:
        raise InvalidRequestError("Name the token to revoke.")
    result = ops.revoke(operator_store(runtime), time.time(), token=token)
    return "token_revoke", {"id": result["id"]}, f"Token {result['id']} revoked"


def routes() -> list[BaseRoute]:
    return [
        Route("/", agents_page, methods=["GET"], include_in_schema=False),
        Route("/spend", spend_page, methods=["GET"], include_in_schema=False),
        Route("/live", live_page, methods=["GET"], include_in_schema=False),
        Route("/blocked", blocked_page, methods=["GET"], include_in_schema=False),
        Route("/tokens", tokens_page, methods=["GET"], include_in_schema=False),
        Route("/events", events, methods=["GET"], include_in_schema=False),
        Route("/login", login_page, methods=["GET"], include_in_schema=False),
        Route("/login", login, methods=["POST"], include_in_schema=False),
        Route("/logout", logout, methods=["POST"], include_in_schema=False),
        Route("/actions/budget", set_budget, methods=["POST"], include_in_schema=False),
        Route("/actions/agent", switch_agent, methods=["POST"], include_in_schema=False),
        Route("/actions/revoke", revoke_token, methods=["POST"], include_in_schema=False),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="dashboard-static"),
    ]
