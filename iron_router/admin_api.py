"""The admin API: what ``iron-runtime policy/agent/token/budget`` do, over HTTP.

Authorized only by an admin token (``iron-runtime token issue --agent NAME --admin``, the
``adm`` claim), never by an agent's token: no or a bad token is 401 ``invalid_ic_token``,
an agent token 403 ``admin_required``. Every change is an ``admin_change`` audit event
naming who made it (the admin token's agent and id). Errors use the OpenAI error shape.

    GET    /v1/admin/policies                     every stored record, with what applies
    GET    /v1/admin/policies/{name}              one scope: stored record, effective policy
    PATCH  /v1/admin/policies/{name}              set fields   {"models": [...], "rpm": 10}
    DELETE /v1/admin/policies/{name}              clear fields {"fields": ["rpm"]} (all: none)
    POST   /v1/admin/agents/{name}/disable        the kill switch (and /enable)
    GET    /v1/admin/tokens[?agent=NAME]          tokens issued, with when they were revoked
    POST   /v1/admin/tokens/revoke                {"token": "ID or token"} | {"agent": "NAME"}
    GET    /v1/admin/budgets[/{name}]             the ledger's state of scopes
    PUT    /v1/admin/budgets/{name}               {"usd": 5, "period": "daily", "tz": "UTC"}

``name`` is an agent name, ``team:NAME`` or ``global``. Store and ledger work runs in the
thread pool, never on the event loop.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from iron_router.errors import error_response
from iron_sdk.errors import (
    InvalidRequestError,
    InvalidTokenError,
    IronCageError,
    usd,
)
from iron_sdk.events import make_event
from iron_sdk.policy import PolicyStore, scope_of
from iron_sdk.policy import operations as ops
from iron_sdk.runtime import Runtime

log = logging.getLogger("iron_router.admin_api")
MAX_BODY = 64 * 1024


class AdminRequiredError(IronCageError):
    """A valid token without the admin claim asked for an admin operation."""

    status = 403
    code = "admin_required"
    type = "permission_error"


class _Admin:
    """Who is asking (from a verified admin token)."""

    def __init__(self, claims: dict[str, Any]) -> None:
        self.agent: str = claims["sub"]
        self.token_id: str | None = claims.get("jti")


Handler = Callable[[Request, _Admin], Awaitable[Response]]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def operator_store(runtime: Runtime) -> PolicyStore:
    """The policy store of the runtime's operator plugin."""
    plugin = runtime.pm.get_plugin("iron.operator")
    if plugin is None or plugin.store is None:
        raise IronCageError("The operator policy plugin is not loaded in this router.")
    store: PolicyStore = plugin.store
    return store


def _store(request: Request) -> PolicyStore:
    return operator_store(_runtime(request))


def _authorize(request: Request) -> _Admin:
    auth = request.headers.get("authorization") or ""
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidTokenError("The admin API needs an admin token: 'Authorization: Bearer "
                                "<token>' from `iron-runtime token issue --agent NAME --admin`.")
    return authorize_admin(_runtime(request), token.strip())


def authorize_admin(runtime: Runtime, token: str) -> _Admin:
    """Who an admin token names; InvalidTokenError (bad, expired, revoked) or
    AdminRequiredError (an agent's token). Blocking: call it off the event loop."""
    claims = runtime.tokens.verify(token)
    reason = operator_store(runtime).is_revoked(claims)
    if reason:
        raise InvalidTokenError(reason)
    if claims.get("adm") is not True:
        raise AdminRequiredError("This is an agent token; the admin API takes only an admin "
                                 "token (`iron-runtime token issue --agent NAME --admin`).")
    return _Admin(claims)


def _admin(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Authorize, then run; every error in the OpenAI shape (a client mistake is a 4xx)."""
    async def handle(request: Request) -> Response:
        try:
            admin = await run_in_threadpool(_authorize, request)
            return await fn(request, admin)
        except IronCageError as exc:
            return error_response(exc)
        except Exception as exc:
            log.exception("admin API %s %s failed", request.method, request.url.path)
            return error_response(IronCageError(
                f"The admin API failed on this request ({type(exc).__name__}); "
                "see the router log."))
    return functools.wraps(fn)(handle)


async def _body(request: Request, *, optional: bool = False) -> dict[str, Any]:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise _TooLarge(f"The admin API takes bodies up to {MAX_BODY} bytes.")
    if not raw.strip():
        if optional:
            return {}
        raise InvalidRequestError("The request needs a JSON object body.")
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise InvalidRequestError("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The body must be a JSON object.")
    return body


def _no_constant(name: str) -> Any:
    raise InvalidRequestError(f"{name} is not a number the admin API takes.")


class _TooLarge(InvalidRequestError):
    status = 413
    code = "request_too_large"


def _audit(request: Request, admin: _Admin, action: str, **fields: Any) -> None:
    audit_change(_runtime(request), admin, action, **fields)


def audit_change(runtime: Runtime, admin: _Admin, action: str, **fields: Any) -> None:
    """The ``admin_change`` audit event of one operator action."""
    runtime.emit(make_event("admin_change", action=action, actor=admin.agent,
                            actor_token_id=admin.token_id, **fields))


def _name(request: Request) -> str:
    return scope_of(request.path_params["name"])


# -- policy ------------------------------------------------------------------------------
@_admin
async def list_policies(request: Request, admin: _Admin) -> Response:
    """Every stored policy record with the effective policy and its sources.
    ---
    summary: List operator policies (admin token)
    tags: [admin]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{policies: [{scope, stored, effective}]}"}
      401: {description: "OpenAI-shaped error (401, 403)"}
    """
    views = await run_in_threadpool(ops.show, _store(request), [], _defaults(request))
    return JSONResponse({"policies": views})


@_admin
async def get_policy(request: Request, admin: _Admin) -> Response:
    """One scope's stored record and the effective policy, each value with its source.
    ---
    summary: Show one scope's policy (admin token)
    tags: [admin]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{scope, stored, effective}"}
      400: {description: "OpenAI-shaped error (400, 401, 403)"}
    """
    view = await run_in_threadpool(ops.policy_view, _store(request),
                                   request.path_params["name"], _defaults(request))
    return JSONResponse(view)


@_admin
async def set_policy(request: Request, admin: _Admin) -> Response:
    """Set policy fields of a scope (fields not named are kept).
    ---
    summary: Set policy fields (admin token)
    tags: [admin]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{scope, stored}"}
      400: {description: "OpenAI-shaped error (400, 401, 403)"}
    """
    scope = _name(request)
    body = await _body(request)
    if any(v is None for v in body.values()):
        raise InvalidRequestError("null is not a policy value; DELETE clears fields.")
    result = await run_in_threadpool(ops.set_policy, _store(request), scope, body)
    _audit(request, admin, "policy_set", scope=scope, values=result["stored"],
           fields=sorted(body))
    return JSONResponse(result)


@_admin
async def clear_policy(request: Request, admin: _Admin) -> Response:
    """Clear fields of a scope's policy (``{"fields": [...]}``; every field without it).
    ---
    summary: Clear policy fields (admin token)
    tags: [admin]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{scope, stored}"}
      400: {description: "OpenAI-shaped error (400, 401, 403)"}
    """
    scope = _name(request)
    body = await _body(request, optional=True)
    fields = body.get("fields")
    if fields is not None and (not isinstance(fields, list)
                               or not all(isinstance(f, str) for f in fields)):
        raise InvalidRequestError("'fields' must be a list of policy field names.")
    result = await run_in_threadpool(ops.clear_policy, _store(request), scope, fields)
    _audit(request, admin, "policy_clear", scope=scope, fields=fields or "all")
    return JSONResponse(result)


def _defaults(request: Request) -> Any:
    return getattr(_runtime(request).config, "policy", None)


# -- kill switch -----------------------------------------------------------------------
async def _switch(request: Request, admin: _Admin, disabled: bool) -> Response:
    scope = _name(request)
    result = await run_in_threadpool(ops.set_disabled, _store(request), scope, disabled)
    _audit(request, admin, "agent_disable" if disabled else "agent_enable", scope=scope)
    return JSONResponse(result)


@_admin
async def disable_agent(request: Request, admin: _Admin) -> Response:
    """Switch an agent (or a team, or everything) off: its next call is refused.
    ---
    summary: Disable an agent (admin token)
    tags: [admin]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{scope, disabled}"}
      400: {description: "OpenAI-shaped error (400, 401, 403)"}
    """
    return await _switch(request, admin, True)


@_admin
async def enable_agent(request: Request, admin: _Admin) -> Response:
    """Switch an agent back on.
    ---
    summary: Enable an agent (admin token)
    tags: [admin]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{scope, disabled}"}
      400: {description: "OpenAI-shaped error (400, 401, 403)"}
    """
    return await _switch(request, admin, False)


# -- tokens ----------------------------------------------------------------------------
@_admin
async def list_tokens(request: Request, admin: _Admin) -> Response:
    """Tokens issued (id, agent, scopes, issued, expires, admin, revoked).
    ---
    summary: List IC tokens (admin token)
    tags: [admin]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{tokens: [...]}"}
      400: {description: "OpenAI-shaped error (400, 401, 403)"}
    """
    agent = request.query_params.get("agent")
    tokens = await run_in_threadpool(ops.list_tokens, _store(request), agent)
    return JSONResponse({"tokens": tokens})


@_admin
async def revoke_tokens(request: Request, admin: _Admin) -> Response:
    """Revoke one token (``{"token": id or token}``) or every token of an agent issued
    until now (``{"agent": NAME}``).
    ---
    summary: Revoke IC tokens (admin token)
    tags: [admin]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{revoked, id | agent, ...}"}
      400: {description: "OpenAI-shaped error (400, 401, 403)"}
    """
    body = await _body(request)
    token, agent = body.get("token"), body.get("agent")
    for key, value in (("token", token), ("agent", agent)):
        if value is not None and not isinstance(value, str):
            raise InvalidRequestError(f"'{key}' must be a string.")
    result = await run_in_threadpool(ops.revoke, _store(request), time.time(), token=token,
                                     agent=agent)
    _audit(request, admin, "token_revoke",
           **{k: v for k, v in result.items() if k in ("id", "agent")})
    return JSONResponse(result)


# -- budgets ---------------------------------------------------------------------------
def _state_json(state: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dataclasses.asdict(state).items():
        if isinstance(value, datetime | date):
            value = value.isoformat()
        out[key] = value
        if key.endswith("_micro"):
            out[key[:-len("_micro")] + "_usd"] = None if value is None else usd(value)
    return out


@_admin
async def list_budgets(request: Request, admin: _Admin) -> Response:
    """Every scope the ledger knows, with its limit, spend and reservations.
    ---
    summary: Show budgets (admin token)
    tags: [admin]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{budgets: [...]}"}
      401: {description: "OpenAI-shaped error (401, 403)"}
    """
    ledger = _runtime(request).ledger

    def states() -> list[dict[str, Any]]:
        return [_state_json(ledger.state(s)) for s in ledger.scopes()]

    return JSONResponse({"budgets": await run_in_threadpool(states)})


@_admin
async def get_budget(request: Request, admin: _Admin) -> Response:
    """One scope's budget state.
    ---
    summary: Show one budget (admin token)
    tags: [admin]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{scope, limit_micro, spent_micro, ...}"}
      400: {description: "OpenAI-shaped error (400, 401, 403)"}
    """
    state = await run_in_threadpool(_runtime(request).ledger.state, _name(request))
    return JSONResponse(_state_json(state))


@_admin
async def set_budget(request: Request, admin: _Admin) -> Response:
    """Set a scope's budget: ``{"usd": X}`` (0 or less removes it), optionally
    ``"period"`` (total, daily, weekly, monthly) and ``"tz"``.
    ---
    summary: Set a budget (admin token)
    tags: [admin]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "the scope's state after the change"}
      400: {description: "OpenAI-shaped error (400, 401, 403)"}
    """
    scope = _name(request)
    body = await _body(request)
    unknown = set(body) - {"usd", "period", "tz"}
    if unknown:
        raise InvalidRequestError(f"unknown budget field(s): {', '.join(sorted(unknown))}")
    ledger = _runtime(request).ledger
    limit, extra, state = await run_in_threadpool(
        ops.set_budget, ledger, scope, body.get("usd"), period=body.get("period"),
        tz=body.get("tz"))
    _audit(request, admin, "budget_set", scope=scope, limit_micro=limit, **extra)
    return JSONResponse(_state_json(state))


routes: list[BaseRoute] = [
    Route("/v1/admin/policies", list_policies, methods=["GET"]),
    Route("/v1/admin/policies/{name}", get_policy, methods=["GET"]),
    Route("/v1/admin/policies/{name}", set_policy, methods=["PATCH"]),
    Route("/v1/admin/policies/{name}", clear_policy, methods=["DELETE"]),
    Route("/v1/admin/agents/{name}/disable", disable_agent, methods=["POST"]),
    Route("/v1/admin/agents/{name}/enable", enable_agent, methods=["POST"]),
    Route("/v1/admin/tokens", list_tokens, methods=["GET"]),
    Route("/v1/admin/tokens/revoke", revoke_tokens, methods=["POST"]),
    Route("/v1/admin/budgets", list_budgets, methods=["GET"]),
    Route("/v1/admin/budgets/{name}", get_budget, methods=["GET"]),
    Route("/v1/admin/budgets/{name}", set_budget, methods=["PUT"]),
]
