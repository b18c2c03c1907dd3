"""Door 2: the runtime API, the HTTP face of :class:`iron_sdk.runtime.Runtime`.

The SDK with ``IRON_RUNTIME_URL`` set (:class:`iron_sdk.remote.RemoteRuntime`) drives
sessions, model calls and tool calls through these endpoints; the agent's own LLM
request still goes straight from the agent to its provider. Every decision (reserve,
redact, block) and every charge happens here, in the router's runtime, so spend lands
in the router's ledger and audit log.

    POST   /v1/runtime/sessions                  open
    DELETE /v1/runtime/sessions/{id}             close (body ``{"error": "TypeName"}`` optional)
    POST   /v1/runtime/calls                     begin_call: request policies, reservation
    POST   /v1/runtime/calls/{id}/settle         settle_call with the provider's usage
    POST   /v1/runtime/calls/{id}/fail           fail_call: release the reservation
    POST   /v1/runtime/tools                     begin_tool
    POST   /v1/runtime/tools/{id}/end            end_tool
    POST   /v1/runtime/events                    an SDK-side event into ``runtime.emit``
    POST   /v1/runtime/flush                     wait for write-behind settlements and audit
    GET    /v1/runtime/prices/{model}            the price the runtime charges for a model

Every request carries the agent's IC token (``Authorization: Bearer``); without one it
is a 401, unless the operator's router config says ``iron: {anonymous_sessions: true}``.
A session, and every call and tool call in it, belongs to the token that opened it:
with another token an id is a 404, like an unknown one (:mod:`iron_router.
runtime_registry`). What a client asks for may only tighten the operator's policy
(:meth:`BudgetConfig.tightened` and its peers); budget scopes come from the token and
the operator only. Usage reports are checked (non-negative integers within what the
model can bill) before anything is charged.

Bodies are parsed with ``json.loads`` and checked by hand (these are on every LLM call);
configs, once per session, go through the pydantic models. Errors use the OpenAI error
shape; a client's mistake is a 4xx, an unknown session or call a 404.

``begin``, ``settle`` and ``fail`` answer with the call's events (what the SDK replays
to its own ``iron_event`` plugins); a client with no such plugin sends ``"events":
false`` and gets none.

Handlers are ``async`` and call the runtime directly on the event loop: its work per call
is tens of microseconds, far less than a hop to a worker thread; only ``flush`` (which
waits for a commit) runs in the thread pool.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from iron_router.bodies import read_json
from iron_router.errors import error_response, invalid
from iron_router.runtime_registry import Entry, NotFound, owner_of, registry
from iron_sdk.call import LlmCall, Usage
from iron_sdk.errors import InvalidTokenError, IronCageError
from iron_sdk.policy.model import as_policy
from iron_sdk.request import read_request
from iron_sdk.runtime import collect_events
from iron_sdk.usage import usage_from_dict

log = logging.getLogger("iron_router.runtime_api")
MAX_TOKENS_PER_CALL = 10_000_000  # no model bills more tokens in one call


class _BadRequest(Exception):
    """A client mistake found while reading a body: answered 400 ``invalid_request``."""


# -- request reading --------------------------------------------------------------------
async def _body(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The strict JSON object of the request (:mod:`iron_router.bodies`)."""
    state = request.app.state
    config = getattr(state, "config", None)
    limit = config.settings.max_body_bytes if config is not None else 32 * 1024 * 1024
    return await read_json(request, limit, optional=optional,
                           offload=getattr(state, "offload", None))


def _str(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise _BadRequest(f"'{name}' must be a string.")
    return value


def _events_wanted(body: dict[str, Any]) -> bool:
    """False when the client said ``"events": false`` (checked before any work)."""
    wanted = body.get("events", True)
    if type(wanted) is not bool:
        raise _BadRequest("'events' must be a boolean.")
    return wanted


def _answer(payload: dict[str, Any], events: list[Any] | None) -> Response:
    """A call endpoint's answer, with the call's events when the client wants them."""
    if events is not None:
        payload["events"] = events
    return JSONResponse(payload)


def _state(entry: Entry) -> dict[str, Any]:
    entry.seq += 1
    s = entry.session
    return {"seq": entry.seq, "spent_micro": s.spent_micro, "reserved_micro": s.reserved_micro,
            "calls": s.calls}


_error_types: dict[tuple[str, bool], type[BaseException]] = {}


def _remote_error(body: dict[str, Any]) -> BaseException | None:
    """An exception standing for the SDK-side one: same type name and status, and an
    :class:`IronCageError` when it was a governance error, so policies (the circuit
    breaker) and audit events see it as they would in library mode."""
    name = body.get("error")
    if name is None:
        return None
    if not isinstance(name, str) or not name.isidentifier() or len(name) > 100:
        raise _BadRequest("'error' must be the exception's type name.")
    governance = body.get("governance") is True
    status = body.get("status")
    if status is not None and type(status) is not int:
        raise _BadRequest("'status' must be an integer HTTP status.")
    cls = _error_types.get((name, governance))
    if cls is None:
        builtin = getattr(builtins, name, None)
        if isinstance(builtin, type) and issubclass(builtin, BaseException) and not governance:
            cls = builtin
        else:
            cls = type(name, (IronCageError if governance else Exception,), {})
        if len(_error_types) < 1024:
            _error_types[(name, governance)] = cls
    try:
        error = cls("reported by the SDK")
    except Exception:  # a builtin with a different constructor
        error = type(name, (Exception,), {})("reported by the SDK")
    if status is not None:
        error.status_code = status  # type: ignore[attr-defined]
    return error


def _log(request: Request, entry: Entry, model: Any, call: LlmCall | None = None) -> None:
    """Agent, model and cost for the router's request log and metrics."""
    info = request.scope.get("iron.log")
    if info is not None:
        info["agent"] = entry.session.agent_id
        if isinstance(model, str):
            info["model"] = model
        if call is not None and call.outcome != "pending":
            info["cost_micro"], info["outcome"] = call.cost_micro, call.outcome


def _log_quietly(request: Request) -> None:
    """Log this request at DEBUG if it succeeds (a refusal is still logged at INFO)."""
    info = request.scope.get("iron.log")
    if info is not None:
        info["quiet"] = True


def _configs(body: dict[str, Any]) -> dict[str, Any]:
    from pydantic import ValidationError

    from iron_sdk.config import BudgetConfig, ReliabilityConfig, SafetyConfig

    out: dict[str, Any] = {}
    for name, model in (("budget", BudgetConfig), ("safety", SafetyConfig),
                        ("reliability", ReliabilityConfig)):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise _BadRequest(f"'{name}' must be an object.")
        try:
            out[name] = model.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise _BadRequest(f"'{name}.{where}': {first['msg']}") from None
    return out


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json")


# -- endpoints --------------------------------------------------------------------------
Handler = Callable[[Request], Awaitable[Response]]


def _endpoint(fn: Handler) -> Handler:
    """Errors in the OpenAI shape: governance errors with their status, client mistakes
    400, unknown ids 404; only a genuine fault of ours is a 500."""
    async def handle(request: Request) -> Response:
        try:
            return await fn(request)
        except IronCageError as exc:
            return error_response(exc)
        except _BadRequest as exc:
            return invalid(str(exc))
        except NotFound as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "invalid_request_error",
                                           "code": exc.code, "param": None}}, status_code=404)
        except Exception as exc:
            log.exception("runtime API %s %s failed", request.method, request.url.path)
            return error_response(IronCageError(
                f"The runtime failed on this request ({type(exc).__name__}); see the router log."))
    return functools.wraps(fn)(handle)


def _token(request: Request) -> str | None:
    """The IC token of the request (``Authorization: Bearer``), or None."""
    auth = request.headers.get("authorization")
    if not auth:
        return None
    scheme, _, token = auth.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidTokenError("Authorization must be 'Bearer <IC token>'.")
    return token


def _owner(request: Request) -> bytes | None:
    """Who asks: the digest of the request's IC token (checked against the session's
    owner by the registry)."""
    return owner_of(_token(request))


@_endpoint
async def open_session(request: Request) -> Response:
    """Open a session for the agent the IC token names.
    ---
    summary: Open a session for the agent the IC token names.
    tags: [runtime]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{session_id, agent_id, budget_usd, scopes, configs, session}"}
      400: {description: "OpenAI-shaped error (400, 401, 403 policy_violation)"}
    """
    body = await _body(request, optional=True)
    token = _token(request)
    reg = registry(request)
    config = getattr(request.app.state, "config", None)
    if token is None and not (config is not None and config.settings.anonymous_sessions):
        raise InvalidTokenError(
            "Missing IC token: the runtime API needs 'Authorization: Bearer <IC token>'. "
            "Pass ic_token=... to @protect_agent (or set IC_TOKEN); issue one with "
            "`iron-runtime token issue --agent NAME`.")
    agent_id = body.get("agent_id")
    if agent_id is not None and (not isinstance(agent_id, str) or not agent_id
                                 or len(agent_id) > 200 or not agent_id.isprintable()):
        raise _BadRequest("'agent_id' must be a non-empty printable string.")
    budget_usd = body.get("budget_usd")
    if budget_usd is not None and (type(budget_usd) not in (int, float)
                                   or not 0 < budget_usd < 1e12):
        raise _BadRequest("'budget_usd' must be a positive number.")
    policy = as_policy(body.get("policy"))  # InvalidRequestError (400) names a bad field
    session = reg.runtime.open_session(agent_id, ic_token=token, budget_usd=budget_usd,
                                       policy=policy, **_configs(body))
    entry = reg.add(session, owner_of(token))
    return JSONResponse({
        "session_id": session.session_id, "agent_id": session.agent_id,
        "budget_usd": session.budget_usd, "cap_micro": session.cap_micro,
        "scopes": list(session.scopes), "claims": _jsonable_claims(session.claims),
        "budget": _dump(session.budget), "safety": _dump(session.safety),
        "reliability": _dump(session.reliability), "session": _state(entry)})


def _jsonable_claims(claims: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in claims.items()}


@_endpoint
async def close_session(request: Request) -> Response:
    """Close a session; its calls in flight can still be settled.
    ---
    summary: Close a session; its calls in flight can still be settled.
    tags: [runtime]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{closed, session}"}
      404: {description: "OpenAI-shaped error (404)"}
    """
    body = await _body(request, optional=True)
    reg = registry(request)
    entry = reg.session(request.path_params["session_id"], _owner(request))
    reg.close(entry, _remote_error(body))
    return JSONResponse({"closed": True, "session": _state(entry)})


@_endpoint
async def begin_call(request: Request) -> Response:
    """Run the request policies for a model call and reserve its budget.
    ---
    summary: Run the request policies for a model call and reserve its budget.
    tags: [runtime]
    security: [{bearerAuth: []}]
    responses:
      200:
        description: "{call_id, redacted, edits (path, value) of the redactions,
          findings, reserved_micro, input_tokens_est, max_output_tokens, provider,
          session, events (unless the body says events: false)}"
      400: {description: "OpenAI-shaped error (400, 402, 403, 404, 429, 503)"}
    """
    body = await _body(request)
    reg = registry(request)
    entry = reg.session(body.get("session_id"), _owner(request))
    fields = body.get("request")
    if not isinstance(fields, dict):
        raise _BadRequest("'request' must be the object of the request's fields.")
    can_redact = body.get("can_redact", True)
    if not isinstance(can_redact, bool):
        raise _BadRequest("'can_redact' must be a boolean.")
    hint = body.get("redact_hint")
    if hint is not None and not isinstance(hint, str):
        raise _BadRequest("'redact_hint' must be a string.")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _BadRequest("'model' must be a string.")
    wanted = _events_wanted(body)
    llm_request = read_request(_str(body, "kind", "chat"), fields, owned=True)
    _log(request, entry, model or llm_request.model)
    with collect_events() as events:
        call = reg.runtime.begin_call(
            entry.session, llm_request, model=model, source=_str(body, "source", "sdk")[:64],
            provider=_str(body, "provider", "")[:64], can_redact=can_redact,
            redact_hint=hint[:500] if hint else None)
    call.remote = True
    entry.calls[call.call_id] = call
    reg.calls[call.call_id] = (entry, call)
    _log_quietly(request)  # allowed: the settle's line, with the cost, tells of the call
    return _answer({
        "call_id": call.call_id, "redacted": call.redacted,
        "edits": llm_request.edits, "fields": llm_request.fields, "findings": call.findings,
        "reserved_micro": call.reserved_micro, "input_tokens_est": call.input_tokens_est,
        "max_output_tokens": call.max_output_tokens, "provider": call.provider,
        "session": _state(entry)}, events if wanted else None)


def _usage(raw: Any, call: LlmCall) -> Usage:
    """A usage report, checked: integers within what one call of the model can bill."""
    if not isinstance(raw, dict):
        raise _BadRequest("'usage' must be an object of token counts.")
    usage = usage_from_dict(raw)
    limit = _billable(call)
    if usage.input_tokens + usage.output_tokens > limit:
        raise _BadRequest(f"'usage' reports more tokens than one call of {call.model} can "
                          f"bill ({limit}).")
    return usage


def _billable(call: LlmCall) -> int:
    """The most tokens one call can bill: the model's context window and maximum output
    (or the reservation's assumption × a margin), else a sane ceiling."""
    price = call.session.runtime.price(call.model)
    window = getattr(price, "max_input_tokens", None) or 0
    out = max(call.max_output_tokens, price.max_output_tokens or 0)
    if window:
        return window * call.request.choices + out
    return max(MAX_TOKENS_PER_CALL // 5, 4 * (call.input_tokens_est + out))


@_endpoint
async def settle_call(request: Request) -> Response:
    """Charge a call for the usage the provider reported.
    ---
    summary: Charge a call for the usage the provider reported.
    tags: [runtime]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{cost_micro, outcome, session, events unless declined}"}
      400: {description: "OpenAI-shaped error (400, 404)"}
    """
    body = await _body(request)
    reg = registry(request)
    entry, call = reg.call(request.path_params["call_id"], _owner(request))
    usage = _usage(body.get("usage"), call)
    wanted = _events_wanted(body)
    with collect_events() as events:
        reg.runtime.settle_call(call, usage)
    reg.done(entry, call)
    _log(request, entry, call.model, call)
    return _answer({"cost_micro": call.cost_micro, "outcome": call.outcome,
                    "session": _state(entry)}, events if wanted else None)


@_endpoint
async def fail_call(request: Request) -> Response:
    """The call failed after it was allowed; release its reservation.
    ---
    summary: The call failed after it was allowed; release its reservation.
    tags: [runtime]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{outcome, session, events unless declined}"}
      400: {description: "OpenAI-shaped error (400, 404)"}
    """
    body = await _body(request, optional=True)
    error = _remote_error(body) or RuntimeError("reported by the SDK")
    wanted = _events_wanted(body)
    reg = registry(request)
    entry, call = reg.call(request.path_params["call_id"], _owner(request))
    with collect_events() as events:
        reg.runtime.fail_call(call, error)
    reg.done(entry, call)
    _log(request, entry, call.model, call)
    return _answer({"outcome": call.outcome, "session": _state(entry)},
                   events if wanted else None)


@_endpoint
async def begin_tool(request: Request) -> Response:
    """A tool is about to run (audited; a plugin may refuse it).
    ---
    summary: A tool is about to run (audited; a plugin may refuse it).
    tags: [runtime]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{tool_id}"}
      400: {description: "OpenAI-shaped error (400, 404)"}
    """
    body = await _body(request)
    reg = registry(request)
    entry = reg.session(body.get("session_id"), _owner(request))
    name = _str(body, "name")
    if not name or len(name) > 200:
        raise _BadRequest("'name' must be a tool name of 1 to 200 characters.")
    tool = reg.runtime.begin_tool(entry.session, name, body.get("arguments"),
                                  source=_str(body, "source", "sdk")[:64])
    entry.tools[tool.call_id] = tool
    reg.tools[tool.call_id] = (entry, tool)
    return JSONResponse({"tool_id": tool.call_id})


@_endpoint
async def end_tool(request: Request) -> Response:
    """A tool finished (body: result, or error type name).
    ---
    summary: "A tool finished (body: result, or error type name)."
    tags: [runtime]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{ended}"}
      400: {description: "OpenAI-shaped error (400, 404)"}
    """
    body = await _body(request, optional=True)
    error = _remote_error(body)
    reg = registry(request)
    _, tool = reg.tool(request.path_params["tool_id"], _owner(request))
    reg.runtime.end_tool(tool, body.get("result"), error)
    return JSONResponse({"ended": True})


# Events an SDK may report (what only the agent's process sees), with their fields:
# name → type. Anything else is refused; nothing free-text is recorded.
_CLIENT_EVENTS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "usage_missing": {"call_id": str, "model": str},
    "proxy_request_ungoverned": {"call_type": str, "model": str},
    "plugin_failed": {"plugin": str, "hook": str, "error": str, "call_id": str},
    "outside_session": {"call_id": str, "model": str, "integration": str},
}
_MAX_EVENT_STR = 200


@_endpoint
async def emit(request: Request) -> Response:
    """Record an event an SDK-side integration saw (checked against the event schema).
    ---
    summary: Record an event an SDK-side integration saw (checked against the schema).
    tags: [runtime]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "{emitted}"}
      400: {description: "OpenAI-shaped error (400, 404)"}
    """
    event = await _body(request)
    kind = event.get("type")
    schema = _CLIENT_EVENTS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise _BadRequest(f"An SDK may report only these events: {sorted(_CLIENT_EVENTS)}.")
    reg = registry(request)
    entry = reg.session(event.get("session_id"), _owner(request))
    out: dict[str, Any] = {}
    for name, value in event.items():
        if name in ("type", "session_id", "event_id", "ts"):
            continue
        expected = schema.get(name)
        if expected is None:
            continue  # unknown fields are dropped, never recorded
        if not isinstance(value, expected) or (
                isinstance(value, str) and (len(value) > _MAX_EVENT_STR
                                            or not value.isprintable())):
            raise _BadRequest(f"Event field '{name}' is not a short {expected}.")
        out[name] = value
    from iron_sdk.events import make_event

    reg.runtime.emit(make_event(kind, source="client", session_id=entry.session.session_id,
                                agent_id=entry.session.agent_id, **out))
    return JSONResponse({"emitted": True})


@_endpoint
async def flush(request: Request) -> Response:
    """Wait until every settlement and audit line so far is written.
    ---
    summary: Wait until every settlement and audit line so far is written.
    tags: [runtime]
    responses:
      200: {description: "{flushed}"}
    """
    await run_in_threadpool(registry(request).runtime.flush)
    return JSONResponse({"flushed": True})


@_endpoint
async def price(request: Request) -> Response:
    """The price the runtime charges for a model, in pico-dollars per token.
    ---
    summary: The price the runtime charges for a model, in pico-dollars per token.
    tags: [runtime]
    responses:
      200: {description: "ModelPrice fields: input, output, cache_read, ..., provider"}
      400: {description: "OpenAI-shaped error (400)"}
    """
    model = request.path_params["model"]
    return JSONResponse(dataclasses.asdict(registry(request).runtime.price(model)))


routes: list[BaseRoute] = [
    Route("/v1/runtime/sessions", open_session, methods=["POST"]),
    Route("/v1/runtime/sessions/{session_id}", close_session, methods=["DELETE"]),
    Route("/v1/runtime/calls", begin_call, methods=["POST"]),
    Route("/v1/runtime/calls/{call_id}/settle", settle_call, methods=["POST"]),
    Route("/v1/runtime/calls/{call_id}/fail", fail_call, methods=["POST"]),
    Route("/v1/runtime/tools", begin_tool, methods=["POST"]),
    Route("/v1/runtime/tools/{tool_id}/end", end_tool, methods=["POST"]),
    Route("/v1/runtime/events", emit, methods=["POST"]),
    Route("/v1/runtime/flush", flush, methods=["POST"]),
    Route("/v1/runtime/prices/{model:path}", price, methods=["GET"]),
]
