"""Door 2: the runtime API, the HTTP face of :class:`iron_sdk.runtime.Runtime`.

The SDK with ``IRON_RUNTIME_URL`` set (:class:`iron_sdk.remote.RemoteRuntime`) drives
sessions, model calls and tool calls through these endpoints; the agent's own LLM
request still goes straight from the agent to its provider. Every decision (reserve,
redact, block) and every charge happens here, in the router's runtime, so spend lands
in the router's ledger and audit log.

    POST   /v1/runtime/sessions                  open (IC token as ``Authorization: Bearer``)
    DELETE /v1/runtime/sessions/{id}             close (body ``{"error": "TypeName"}`` optional)
    POST   /v1/runtime/calls                     begin_call: request policies, reservation
    POST   /v1/runtime/calls/{id}/settle         settle_call with the provider's usage
    POST   /v1/runtime/calls/{id}/fail           fail_call: release the reservation
    POST   /v1/runtime/tools                     begin_tool
    POST   /v1/runtime/tools/{id}/end            end_tool
    POST   /v1/runtime/events                    an SDK-side event into ``runtime.emit``
    POST   /v1/runtime/flush                     wait for write-behind settlements and audit
    GET    /v1/runtime/prices/{model}            the price the runtime charges for a model

Bodies are parsed with ``json.loads`` and checked by hand (these are on every LLM call);
configs, once per session, go through the pydantic models. Errors use the OpenAI error
shape; a client's mistake is a 4xx, an unknown session or call a 404.

Handlers are ``async`` and call the runtime directly on the event loop: its work per call
is tens of microseconds, far less than a hop to a worker thread; only ``flush`` (which
waits for a commit) runs in the thread pool.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from iron_router.errors import error_response, invalid
from iron_sdk.call import LlmCall, ToolCall, Usage
from iron_sdk.errors import IronCageError, RuntimeUnavailableError
from iron_sdk.runtime import Runtime
from iron_sdk.session import Session

log = logging.getLogger("iron_router.runtime_api")

IDLE_S = 3600.0  # sessions untouched this long are dropped (override: app.state)
SWEEP_EVERY_S = 60.0
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens",
                 "cache_creation_tokens", "reasoning_tokens")


class _BadRequest(Exception):
    """A client mistake found while reading a body: answered 400 ``invalid_request``."""


class _NotFound(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(slots=True, eq=False)
class _Entry:
    """A session the router holds for a remote SDK, with its calls still in flight."""

    session: Session
    last: float
    seq: int = 0  # bumped on every change, so the SDK applies states in order
    calls: dict[str, LlmCall] = dataclasses.field(default_factory=dict)
    tools: dict[str, ToolCall] = dataclasses.field(default_factory=dict)


class Registry:
    """Open sessions and in-flight calls of one app. Used only from the event loop
    thread (every handler is ``async``), so plain dicts suffice.

    A closed session's calls still in flight stay settle-able (an abandoned stream is
    settled when the SDK drops it, possibly after the session returned) until they are
    idle for ``idle_s``; then, like an idle open session's, they are released.
    """

    def __init__(self, runtime: Runtime, idle_s: float = IDLE_S) -> None:
        self.runtime = runtime
        self.idle_s = idle_s
        self.sessions: dict[str, _Entry] = {}
        self.lingering: dict[str, _Entry] = {}  # closed, with calls in flight
        self.calls: dict[str, tuple[_Entry, LlmCall]] = {}
        self.tools: dict[str, tuple[_Entry, ToolCall]] = {}
        self._swept = time.monotonic()

    def add(self, session: Session) -> _Entry:
        now = time.monotonic()
        if now - self._swept >= min(SWEEP_EVERY_S, self.idle_s):
            self.sweep(now)
        entry = self.sessions[session.session_id] = _Entry(session, now)
        return entry

    def session(self, session_id: Any) -> _Entry:
        entry = self.sessions.get(session_id) if isinstance(session_id, str) else None
        if entry is None:
            raise _NotFound("session_not_found", (
                f"No open session '{session_id}' in this runtime: it was closed, idle for "
                f"over {self.idle_s:.0f}s, or the router restarted."))
        entry.last = time.monotonic()
        return entry

    def call(self, call_id: str) -> tuple[_Entry, LlmCall]:
        found = self.calls.get(call_id)
        if found is None:
            raise _NotFound("call_not_found", (
                f"No call '{call_id}' in flight: it was settled or failed already, or it "
                f"was idle for over {self.idle_s:.0f}s."))
        found[0].last = time.monotonic()
        return found

    def done(self, entry: _Entry, call: LlmCall) -> None:
        """``call`` was settled or failed: forget it."""
        del self.calls[call.call_id], entry.calls[call.call_id]
        if not entry.calls and entry.session.session_id in self.lingering:
            del self.lingering[entry.session.session_id]

    def tool(self, tool_id: str) -> tuple[_Entry, ToolCall]:
        found = self.tools.get(tool_id)
        if found is None:
            raise _NotFound("tool_call_not_found", f"No tool call '{tool_id}' in flight.")
        del self.tools[tool_id], found[0].tools[tool_id]
        return found

    def close(self, entry: _Entry, error: BaseException | None) -> None:
        sid = entry.session.session_id
        if self.sessions.pop(sid, None) is None:
            return
        for tool_id in entry.tools:
            self.tools.pop(tool_id, None)
        entry.tools.clear()
        if entry.calls:
            self.lingering[sid] = entry
        self.runtime.close_session(entry.session, error)

    def sweep(self, now: float) -> None:
        """Release what idle sessions (open or closed) still hold, and close them."""
        self._swept = now
        for entry in [e for e in (*self.sessions.values(), *self.lingering.values())
                      if now - e.last >= self.idle_s]:
            log.info("dropping session %s of agent %s: idle for %.0fs",
                     entry.session.session_id, entry.session.agent_id, now - entry.last)
            self.release(entry, RuntimeUnavailableError("session idle for too long"))

    def release(self, entry: _Entry, error: IronCageError) -> None:
        for call in list(entry.calls.values()):
            self.runtime.fail_call(call, error)
            self.done(entry, call)
        self.close(entry, error)
        self.lingering.pop(entry.session.session_id, None)


def registry(request: Request) -> Registry:
    """The app's registry, created on first use from ``app.state.runtime``."""
    state = request.app.state
    reg = getattr(state, "runtime_registry", None)
    if reg is None:
        reg = state.runtime_registry = Registry(
            state.runtime, getattr(state, "runtime_session_idle_s", IDLE_S))
    return reg


# -- request reading --------------------------------------------------------------------
async def _body(request: Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.body()
    if not raw and optional:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    return body


def _str(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise _BadRequest(f"'{name}' must be a string.")
    return value


def _count(value: Any, name: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if type(value) is not int or value < 0:
        raise _BadRequest(f"'{name}' must be a non-negative integer.")
    return value


def _state(entry: _Entry) -> dict[str, Any]:
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


def _log(request: Request, entry: _Entry, model: Any, call: LlmCall | None = None) -> None:
    """Agent, model and cost for the router's request log and metrics."""
    info = request.scope.get("iron.log")
    if info is not None:
        info["agent"] = entry.session.agent_id
        if isinstance(model, str):
            info["model"] = model
        if call is not None and call.outcome != "pending":
            info["cost_micro"], info["outcome"] = call.cost_micro, call.outcome


# Events the runtime records itself: an SDK may not forward them (no double counting).
_RUNTIME_EVENTS = frozenset({"call_completed", "call_failed", "call_blocked", "pii_detected",
                             "budget_threshold", "ledger_error", "tool_called"})


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
        except _NotFound as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "invalid_request_error",
                                           "code": exc.code, "param": None}}, status_code=404)
        except Exception as exc:
            log.exception("runtime API %s %s failed", request.method, request.url.path)
            return error_response(IronCageError(
                f"The runtime failed on this request ({type(exc).__name__}); see the router log."))
    return functools.wraps(fn)(handle)


@_endpoint
async def open_session(request: Request) -> Response:
    """Open a session (the IC token, if any, names the agent).
    ---
    summary: Open a session (the IC token, if any, names the agent).
    tags: [runtime]
    responses:
      200: {description: "{session_id, agent_id, budget_usd, scopes, configs, session}"}
      400: {description: "OpenAI-shaped error (400, 401)"}
    """
    body = await _body(request, optional=True)
    auth = request.headers.get("authorization")
    token = None
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _BadRequest("Authorization must be 'Bearer <IC token>'.")
        token = token.strip()
    agent_id = body.get("agent_id")
    if agent_id is not None and (not isinstance(agent_id, str) or not agent_id):
        raise _BadRequest("'agent_id' must be a non-empty string.")
    budget_usd = body.get("budget_usd")
    if budget_usd is not None and (type(budget_usd) not in (int, float) or budget_usd <= 0):
        raise _BadRequest("'budget_usd' must be a positive number.")
    reg = registry(request)
    session = reg.runtime.open_session(agent_id, ic_token=token, budget_usd=budget_usd,
                                       **_configs(body))
    entry = reg.add(session)
    return JSONResponse({
        "session_id": session.session_id, "agent_id": session.agent_id,
        "budget_usd": session.budget_usd, "cap_micro": session.cap_micro,
        "scopes": list(session.scopes), "claims": session.claims,
        "budget": _dump(session.budget), "safety": _dump(session.safety),
        "reliability": _dump(session.reliability), "session": _state(entry)})


@_endpoint
async def close_session(request: Request) -> Response:
    """Close a session; its calls in flight can still be settled.
    ---
    summary: Close a session; its calls in flight can still be settled.
    tags: [runtime]
    responses:
      200: {description: "{closed, session}"}
      404: {description: "OpenAI-shaped error (404)"}
    """
    body = await _body(request, optional=True)
    reg = registry(request)
    entry = reg.session(request.path_params["session_id"])
    reg.close(entry, _remote_error(body))
    return JSONResponse({"closed": True, "session": _state(entry)})


@_endpoint
async def begin_call(request: Request) -> Response:
    """Run the request policies for a model call and reserve its budget.
    ---
    summary: Run the request policies for a model call and reserve its budget.
    tags: [runtime]
    responses:
      200:
        description: "{call_id, redacted, messages (when redacted), findings,
          reserved_micro, input_tokens_est, max_output_tokens, provider, session}"
      400: {description: "OpenAI-shaped error (400, 402, 403, 404, 429, 503)"}
    """
    body = await _body(request)
    reg = registry(request)
    entry = reg.session(body.get("session_id"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _BadRequest("'messages' must be a list of message objects.")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _BadRequest("'metadata' must be an object.")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _BadRequest("'stream' must be a boolean.")
    _log(request, entry, body.get("model"))
    call = reg.runtime.begin_call(
        entry.session, model=body.get("model"), messages=messages,
        max_tokens=_count(body.get("max_tokens"), "max_tokens", optional=True),
        stream=stream, kind=_str(body, "kind", "chat"), source=_str(body, "source", "sdk"),
        provider=_str(body, "provider", ""), metadata=metadata)
    entry.calls[call.call_id] = call
    reg.calls[call.call_id] = (entry, call)
    reply: dict[str, Any] = {
        "call_id": call.call_id, "redacted": call.redacted, "findings": call.findings,
        "reserved_micro": call.reserved_micro, "input_tokens_est": call.input_tokens_est,
        "max_output_tokens": call.max_output_tokens, "provider": call.provider,
        "session": _state(entry)}
    if call.redacted:  # otherwise the SDK keeps its own messages
        reply["messages"] = call.messages
    return JSONResponse(reply)


@_endpoint
async def settle_call(request: Request) -> Response:
    """Charge a call for the usage the provider reported.
    ---
    summary: Charge a call for the usage the provider reported.
    tags: [runtime]
    responses:
      200: {description: "{cost_micro, outcome, session}"}
      400: {description: "OpenAI-shaped error (400, 404)"}
    """
    body = await _body(request)
    raw = body.get("usage")
    if not isinstance(raw, dict):
        raise _BadRequest("'usage' must be an object of token counts.")
    counted = raw.get("counted", False)
    if not isinstance(counted, bool):
        raise _BadRequest("'usage.counted' must be a boolean.")
    usage = Usage(*(_count(raw.get(f, 0), f"usage.{f}") for f in _USAGE_FIELDS),
                  counted=counted)
    reg = registry(request)
    entry, call = reg.call(request.path_params["call_id"])
    reg.runtime.settle_call(call, usage)
    reg.done(entry, call)
    _log(request, entry, call.model, call)
    return JSONResponse({"cost_micro": call.cost_micro, "outcome": call.outcome,
                         "session": _state(entry)})


@_endpoint
async def fail_call(request: Request) -> Response:
    """The call failed after it was allowed; release its reservation.
    ---
    summary: The call failed after it was allowed; release its reservation.
    tags: [runtime]
    responses:
      200: {description: "{outcome, session}"}
      400: {description: "OpenAI-shaped error (400, 404)"}
    """
    body = await _body(request, optional=True)
    error = _remote_error(body) or RuntimeError("reported by the SDK")
    reg = registry(request)
    entry, call = reg.call(request.path_params["call_id"])
    reg.runtime.fail_call(call, error)
    reg.done(entry, call)
    _log(request, entry, call.model, call)
    return JSONResponse({"outcome": call.outcome, "session": _state(entry)})


@_endpoint
async def begin_tool(request: Request) -> Response:
    """A tool is about to run (audited; a plugin may refuse it).
    ---
    summary: A tool is about to run (audited; a plugin may refuse it).
    tags: [runtime]
    responses:
      200: {description: "{tool_id}"}
      400: {description: "OpenAI-shaped error (400, 404)"}
    """
    body = await _body(request)
    reg = registry(request)
    entry = reg.session(body.get("session_id"))
    name = _str(body, "name")
    tool = reg.runtime.begin_tool(entry.session, name, body.get("arguments"),
                                  source=_str(body, "source", "sdk"))
    entry.tools[tool.call_id] = tool
    reg.tools[tool.call_id] = (entry, tool)
    return JSONResponse({"tool_id": tool.call_id})


@_endpoint
async def end_tool(request: Request) -> Response:
    """A tool finished (body: result, or error type name).
    ---
    summary: "A tool finished (body: result, or error type name)."
    tags: [runtime]
    responses:
      200: {description: "{ended}"}
      400: {description: "OpenAI-shaped error (400, 404)"}
    """
    body = await _body(request, optional=True)
    error = _remote_error(body)
    reg = registry(request)
    _, tool = reg.tool(request.path_params["tool_id"])
    reg.runtime.end_tool(tool, body.get("result"), error)
    return JSONResponse({"ended": True})


@_endpoint
async def emit(request: Request) -> Response:
    """Record an event emitted by an SDK-side integration (e.g. usage_missing).
    ---
    summary: Record an event emitted by an SDK-side integration (e.g. usage_missing).
    tags: [runtime]
    responses:
      200: {description: "{emitted}"}
      400: {description: "OpenAI-shaped error (400)"}
    """
    event = await _body(request)
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        raise _BadRequest("An event needs a string 'type'.")
    if kind in _RUNTIME_EVENTS:
        raise _BadRequest(f"'{kind}' events are recorded by the runtime itself.")
    registry(request).runtime.emit(event)
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
