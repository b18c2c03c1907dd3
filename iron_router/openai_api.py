"""Door 3: the OpenAI-compatible API (``/v1/chat/completions``, ``/v1/embeddings``,
``/v1/models``).

Each request runs the same pipeline as library mode: open a session for the IC token's
agent, ``begin_call`` (reserve, redact, block), forward, settle with the upstream's
usage (or fail and release), close the session. Opening the session and ``begin_call``
(token check, policy store, PII scan, ledger reservation: anything that may wait on a
lock or scan megabytes) run in the offload pool, never on the event loop. The hot path
parses the body once, and forwards the client's bytes as they came unless the policies
changed the request.

A gateway, too (:mod:`iron_router.deployments`): an attempt that fails before any byte
reached the client (no answer, a timeout, 429, 5xx, a stream whose first event never
came) is retried on another healthy deployment of the name, then on its fallback models
in order. The reservation follows the call: same model, same reservation; another model
is re-priced (released, then reserved anew: 402 if the budget cannot cover it). Each
failed attempt is an audit event (``upstream_attempt_failed``) and counts against its
deployment's breaker. Once a streamed byte has left, a failure is the client's, with
what was generated charged. A stream is watched: a gap longer than ``idle_timeout_s``,
the total ``upstream_timeout_s``, or the operator disabling the agent (or revoking its
token: polled every ``KILL_POLL_S``) ends it with an error event, settled for what was
generated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as HttpRoute

from iron_router.bodies import parse_json, read_body
from iron_router.config import Route, RouterConfig
from iron_router.deployments import Deployments, Plan, deployment_label
from iron_router.errors import error_response
from iron_router.sse import relay_litellm, relay_sse
from iron_router.upstream import (
    Upstream,
    UpstreamError,
    UpstreamUnreachable,
    cause_of,
    litellm_error,
)
from iron_sdk.call import LlmCall
from iron_sdk.errors import (
    CircuitOpenError,
    InvalidTokenError,
    IronCageError,
    RuntimeUnavailableError,
    SafetyViolationError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from iron_sdk.events import make_event
from iron_sdk.meter import Meter, ask_for_usage, settle_reserved
from iron_sdk.request import read_request
from iron_sdk.runtime import Runtime
from iron_sdk.session import Session

if TYPE_CHECKING:
    from iron_router.offload import Offload
    from iron_router.upstream import UpstreamResponse
    from iron_sdk.policies.operator import OperatorPolicy

JSON = "application/json"
KILL_POLL_S = 0.5  # how often a running stream asks whether its agent was switched off
_RETRY_STATUS = frozenset({408, 409, 429})  # plus every 5xx
_CONTEXT_WINDOW = (b"context_length_exceeded", b"maximum context length",
                   b"context window", b"too many tokens")


class RouterState:
    """What every request handler shares (``app.state.router``)."""

    def __init__(self, runtime: Runtime, config: RouterConfig, upstream: Upstream,
                 offload: Offload | None = None) -> None:
        from iron_router.offload import Offload

        self.runtime = runtime
        self.config = config
        self.settings = config.settings
        self.upstream = upstream
        self.offload = offload or Offload()
        self.deployments = Deployments(config)
        self.operator: OperatorPolicy | None = runtime.pm.get_plugin("iron.operator")

    def open_session(self, request: Request) -> Session:
        """The session of the request's agent (401 without a valid IC token)."""
        return self.session_for(bearer_token(request))

    def session_for(self, token: str | None) -> Session:
        if token:
            return self.runtime.open_session(ic_token=token)
        if self.settings.require_token:
            raise InvalidTokenError(
                "Missing IC token: send it as 'Authorization: Bearer <token>' (an OpenAI "
                "client's api_key) or as 'x-api-key'. Issue one with "
                "`iron-runtime token issue --agent NAME`.")
        return self.runtime.open_session(self.settings.default_agent)

    def route(self, model: str) -> Route:
        """A deployment of ``model`` (ModelNotFoundError when the name is unknown)."""
        return self.deployments.group(model)[0]


def bearer_token(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-api-key") or None


class Exchange:
    """One governed request: settles or fails its call and closes its session once."""

    __slots__ = ("runtime", "session", "call", "info", "closed", "plan", "route", "attempt")

    def __init__(self, runtime: Runtime, session: Session, call: LlmCall,
                 info: dict[str, Any], plan: Plan, route: Route) -> None:
        self.runtime, self.session, self.call, self.info = runtime, session, call, info
        self.plan, self.route = plan, route
        self.closed = False
        self.attempt = 1

    def finish(self, meter: Meter) -> None:
        meter.finish()
        self.close(None)

    def fail(self, error: BaseException) -> None:
        self.runtime.fail_call(self.call, error)
        self.close(error)

    def close(self, error: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.info["cost_micro"] = self.call.cost_micro
        self.info["outcome"] = self.call.outcome
        if self.attempt > 1:
            self.info["attempts"] = self.attempt
        self.runtime.close_session(self.session, error)


def _info(request: Request) -> dict[str, Any]:
    info = request.scope.get("iron.log")
    if info is None:
        info = request.scope["iron.log"] = {}
    return info


Handler = Callable[[RouterState, Exchange, bytes], Awaitable[Response]]


def _begin(st: RouterState, token: str | None, kind: str, raw: bytes,
           info: dict[str, Any]) -> Exchange:
    """Open the session, read the request, pick the first deployment, begin the call
    (runs in the offload pool: it may scan megabytes or wait on the ledger)."""
    session = st.session_for(token)
    info["agent"] = session.agent_id
    runtime = st.runtime
    try:
        request_model = read_request(kind, parse_json(raw), owned=True)
        plan = st.deployments.plan(request_model.model)
        try:
            route = plan.first()
        except CircuitOpenError as exc:  # on the record like any refused call
            runtime.emit(make_event("call_blocked", session_id=session.session_id,
                                    agent_id=session.agent_id, model=plan.name,
                                    source="router", reason=exc.code))
            raise
        info["model"] = route.model
        try:
            call = runtime.begin_call(session, request_model, model=route.model,
                                      source="router", provider=route.provider)
        except BaseException:
            plan.abandon(route)
            raise
    except BaseException as exc:
        runtime.close_session(session, exc)
        raise
    return Exchange(runtime, session, call, info, plan, route)


async def _governed(request: Request, kind: str, handler: Handler) -> Response:
    """Read, authenticate, validate, begin the call, then run ``handler`` with it."""
    st: RouterState = request.app.state.router
    info = _info(request)
    try:
        raw = await read_body(request, st.settings.max_body_bytes)
        ex = await st.offload.run(_begin, st, bearer_token(request), kind, raw, info, size=len(raw))
    except IronCageError as exc:
        return error_response(exc)
    try:
        return await handler(st, ex, raw)
    except BaseException as exc:  # a bug or cancellation: never keep the reservation
        ex.fail(exc)
        raise


# -- attempts ---------------------------------------------------------------------------
class AttemptFailed(Exception):
    """An attempt failed before any byte reached the client. ``answer`` is what the
    client gets if no attempt is left; ``retry``: another deployment may do better;
    ``counts``: the failure counts against the deployment's breaker."""

    def __init__(self, error: UpstreamError, answer: Response, *, retry: bool = True,
                 counts: bool = True, context_window: bool = False) -> None:
        super().__init__(str(error))
        self.error, self.answer = error, answer
        self.retry, self.counts, self.context_window = retry, counts, context_window


async def _attempts(st: RouterState, ex: Exchange, raw: bytes, hide_usage: bool,
                    attempt: Callable[[RouterState, Exchange, Route, bytes, Meter],
                                      Awaitable[Response]]) -> Response:
    """Run ``attempt`` on the plan's routes until one answers (see the module docstring)."""
    route = ex.route
    while True:
        meter = Meter(ex.call, hide_usage=hide_usage)
        try:
            return await attempt(st, ex, route, raw, meter)
        except BaseException as exc:
            if not isinstance(exc, AttemptFailed):
                ex.plan.abandon(route)  # cancelled (client gone) or a bug: no verdict
                raise
            failed = exc
            if failed.counts:
                ex.plan.failed(route)
            else:
                ex.plan.abandon(route)
            error = failed.error
            st.runtime.emit(make_event(
                "upstream_attempt_failed", call_id=ex.call.call_id,
                session_id=ex.session.session_id, agent_id=ex.session.agent_id,
                model=ex.call.model, deployment=error.deployment, attempt=ex.attempt,
                status=error.status_code, error=str(error)[:200]))
            nxt = ex.plan.next(context_window=failed.context_window) if failed.retry else None
            if nxt is None:
                ex.fail(error)
                return failed.answer
        ex.attempt += 1
        if nxt.model != ex.call.model:
            try:  # re-priced: this reservation is released, the fallback's is made
                await st.offload.run(_reprice, st, ex, nxt, error)
            except IronCageError as exc:
                ex.plan.abandon(nxt)
                ex.close(exc)
                return error_response(exc)
        ex.route = route = nxt
        ex.info["model"] = route.model


def _reprice(st: RouterState, ex: Exchange, route: Route, error: UpstreamError) -> None:
    runtime = st.runtime
    runtime.fail_call(ex.call, error)
    ex.call = runtime.begin_call(ex.session, ex.call.request, model=route.model,
                                 source="router", provider=route.provider)


def _upstream_answer(st: RouterState, route: Route, response: UpstreamResponse) -> AttemptFailed:
    """An error status from the upstream, as an attempt outcome."""
    status = response.status_code
    content = response.content
    answer = Response(st.upstream.scrub(content), status_code=status,
                      media_type=response.headers.get("content-type", JSON))
    error = UpstreamError(status, f"upstream answered {status}", deployment_label(route))
    if status >= 500 or status in _RETRY_STATUS:
        return AttemptFailed(error, answer)
    low = content[:4096].lower()
    context_window = status in (400, 413) and any(m in low for m in _CONTEXT_WINDOW)
    return AttemptFailed(error, answer, retry=context_window, counts=False,
                         context_window=context_window)


def _unreachable(route: Route, exc: UpstreamUnreachable) -> AttemptFailed:
    """No answer from the upstream: the reservation is released if nothing else answers."""
    error = UpstreamError(None, exc.cause, deployment_label(route))
    if exc.timeout:
        answer = error_response(UpstreamTimeoutError(
            f"The upstream for model '{route.model_name}' did not answer in time "
            f"({exc.cause}); the reservation was released."))
    else:
        answer = error_response(UpstreamUnreachableError(
            f"The upstream for model '{route.model_name}' could not be reached "
            f"({exc.cause}); the reservation was released."))
    return AttemptFailed(error, answer)


def _body(ex: Exchange, route: Route, raw: bytes) -> bytes:
    """The bytes to send: the client's as they came, unless a policy or the route
    changed the request."""
    request = ex.call.request
    if request.body["model"] != route.upstream_model:
        request.set_field("model", route.upstream_model)
    return json.dumps(request.body, ensure_ascii=False).encode() if request.changed else raw


# -- chat completions -------------------------------------------------------------------
async def chat_completions(request: Request) -> Response:
    """Create a chat completion (OpenAI-compatible), governed by the runtime.
    ---
    summary: Chat completion (plain or streamed), governed by budget, safety and audit
    tags: [openai]
    security: [{bearerAuth: []}]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [model, messages]
            properties:
              model: {type: string}
              messages: {type: array, items: {type: object}}
              stream: {type: boolean}
              max_tokens: {type: integer}
    responses:
      200: {description: "chat.completion object, or an SSE stream of chunks"}
      400: {description: invalid_request / unknown_model_price}
      401: {description: invalid_ic_token}
      402: {description: budget_exceeded (the provider was not contacted)}
      403: {description: safety_violation}
      404: {description: model_not_found}
      413: {description: payload_too_large}
      429: {description: rate_limited (Retry-After header)}
      503: {description: circuit_open / runtime_unavailable / ledger_unavailable}
    """
    return await _governed(request, "chat", _chat)


async def _chat(st: RouterState, ex: Exchange, raw: bytes) -> Response:
    return await _attempts(st, ex, raw, ask_for_usage(ex.call.request), _chat_attempt)


async def _chat_attempt(st: RouterState, ex: Exchange, route: Route, raw: bytes,
                        meter: Meter) -> Response:
    if route.translate:
        return await _litellm_chat(st, ex, route, meter)
    call = ex.call
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        response = await st.upstream.send(route.chat_url, _body(ex, route, raw),
                                          route.api_key, stream=call.stream)
    except UpstreamUnreachable as exc:
        raise _unreachable(route, exc) from None
    if response.status_code >= 300:
        raise _upstream_answer(st, route, response)
    if not call.stream:
        ex.plan.succeeded(route)
        return _plain(ex, meter, response)
    # Nothing has reached the client yet: wait for the first event before committing,
    # so a deployment that answers with headers and then nothing can still be retried.
    chunks = relay_sse(response, meter).__aiter__()
    first_by = started + min(st.settings.first_byte_timeout_s, st.settings.upstream_timeout_s)
    try:
        first: bytes | None = await asyncio.wait_for(chunks.__anext__(),
                                                     max(first_by - loop.time(), 0.0))
    except StopAsyncIteration:
        first = None
    except asyncio.CancelledError:
        await _close_quietly(response.aclose)
        raise
    except Exception as exc:  # nothing was metered: the first event never came whole
        await _close_quietly(response.aclose)
        cause = "FirstByteTimeout" if isinstance(exc, TimeoutError) else cause_of(exc)
        raise _unreachable(route, UpstreamUnreachable(cause)) from None
    ex.plan.succeeded(route)
    deadline = started + st.settings.upstream_timeout_s
    watched = _watched(st, ex, route, first, chunks, deadline)
    return _sse(ex, meter, watched, response.aclose)



async def _close_quietly(close: Callable[[], Awaitable[None]]) -> None:
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await close()


def _plain(ex: Exchange, meter: Meter, response: UpstreamResponse) -> Response:
    """Pass a complete upstream answer through; settle with it."""
    content = response.content
    try:
        obj = json.loads(content)
    except ValueError:
        obj = None
    try:
        if not isinstance(obj, dict):  # an answer we cannot read: charge the reservation
            meter.done = True
            settle_reserved(ex.call)
        elif meter.settle(obj):  # the response policy redacted it
            content = json.dumps(obj, ensure_ascii=False).encode()
    except SafetyViolationError as exc:  # the response policy blocks it (it is paid)
        ex.close(exc)
        return error_response(exc)
    ex.close(None)
    return Response(content, status_code=response.status_code,
                    media_type=response.headers.get("content-type", JSON),
                    headers=_capped(ex.call))


# -- streams ----------------------------------------------------------------------------
class StreamStopped(Exception):
    """The router ended a stream (idle gap, total timeout, kill switch): the client gets
    an error event, the call is settled for what was generated (released if nothing)."""

    def __init__(self, error: IronCageError) -> None:
        super().__init__(str(error))
        self.error = error


async def _watched(st: RouterState, ex: Exchange, route: Route, first: bytes | None,
                   chunks: AsyncIterator[bytes], deadline: float) -> AsyncIterator[bytes]:
    """``first`` then ``chunks``, watched: idle gap, total time, and the operator's kill
    switch (polled off the loop at most every ``KILL_POLL_S``)."""
    if first is None:
        return
    yield first
    loop = asyncio.get_running_loop()
    idle = st.settings.idle_timeout_s
    operator = st.operator
    last = loop.time()
    check_at = last + KILL_POLL_S
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(chunks.__anext__())
            now = loop.time()
            wait = min(last + idle, deadline, check_at if operator else deadline) - now
            if wait > 0:
                done, _ = await asyncio.wait((pending,), timeout=wait)
            else:
                done = set()
            if done:
                task, pending = pending, None
                try:
                    chunk = task.result()
                except StopAsyncIteration:
                    return
                except Exception as exc:  # dropped or timed out mid-stream: the
                    ex.plan.failed(route)  # deployment's fault; the client is told
                    cause = cause_of(exc)
                    cls = UpstreamTimeoutError if "Timeout" in cause else UpstreamUnreachableError
                    raise StreamStopped(cls(
                        f"The upstream for model '{route.model_name}' broke off the stream "
                        f"({cause}); it was ended and charged for what was "
                        "generated.")) from exc
                last = loop.time()
                yield chunk
            now = loop.time()
            if operator is not None and now >= check_at:
                check_at = now + KILL_POLL_S
                refusal = await st.offload.run(operator.refusal, ex.session)
                if refusal is not None:
                    raise StreamStopped(refusal)
            if pending is not None and now >= last + idle:
                ex.plan.failed(route)
                raise StreamStopped(UpstreamTimeoutError(
                    f"The upstream for model '{route.model_name}' sent nothing for "
                    f"{idle:g}s (idle_timeout_s); the stream was ended and charged for what "
                    "was generated."))
            if now >= deadline:
                ex.plan.failed(route)
                raise StreamStopped(UpstreamTimeoutError(
                    f"The upstream for model '{route.model_name}' took longer than "
                    f"{st.settings.upstream_timeout_s:g}s (upstream_timeout_s); the stream "
                    "was ended and charged for what was generated."))
    finally:
        if pending is not None:
            pending.cancel()
            with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
                await pending


def _sse(ex: Exchange, meter: Meter, chunks: AsyncIterator[bytes],
         close: Callable[[], Awaitable[None]] | None) -> StreamingResponse:
    return StreamingResponse(_settled(ex, meter, chunks, close), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", **_capped(ex.call)})


def _capped(call: LlmCall) -> dict[str, str]:
    """Says so when the budget set the output limit of a call that had none."""
    if call.output_capped is None:
        return {}
    return {"x-iron-output-capped": str(call.output_capped)}


def _error_event(error: IronCageError) -> bytes:
    payload = {"error": {"message": str(error), "type": error.type, "code": error.code,
                         "param": None}}
    return b"data: " + json.dumps(payload).encode() + b"\n\ndata: [DONE]\n\n"


async def _settled(ex: Exchange, meter: Meter, chunks: AsyncIterator[bytes],
                   close: Callable[[], Awaitable[None]] | None) -> AsyncIterator[bytes]:
    """Relay ``chunks``; settle when the stream ends, however it ends. A client that
    leaves mid-stream (cancellation) pays for what was generated up to then; a stream
    the router stopped ends with an error event, settled the same way."""
    error: BaseException | None = None
    stopped: IronCageError | None = None
    try:
        async for chunk in chunks:
            yield chunk
    except StreamStopped as stop:
        error = stopped = stop.error
    except BaseException as exc:
        error = exc
        raise
    finally:
        if error is None:
            meter.finish()
        else:
            meter.fail(error)
        ex.close(error)
        if stopped is not None:
            ex.info["outcome"] = f"stopped {stopped.code}"
        elif error is not None:
            gone = isinstance(error, GeneratorExit | anyio.get_cancelled_exc_class())
            ex.info["outcome"] = "client_gone" if gone else f"stream_{type(error).__name__}"
        if close is not None:
            # Shielded: runs even while the request is being cancelled; the upstream
            # connection is dropped either way, so its errors do not matter.
            await _close_quietly(close)
    if stopped is not None:
        yield _error_event(stopped)


# -- translated routes (litellm) ----------------------------------------------------------
async def _litellm_chat(st: RouterState, ex: Exchange, route: Route,
                        meter: Meter) -> Response:
    call = ex.call
    try:
        result = await st.upstream.litellm_chat(route, call.request.body, call.messages,
                                                call.stream)
    except ImportError as exc:
        raise AttemptFailed(UpstreamError(None, type(exc).__name__, deployment_label(route)),
                            error_response(RuntimeUnavailableError(
            f"Model '{route.model_name}' ({route.provider}) needs litellm to translate the "
            "request, and it is not installed: pip install 'iron-sdk[litellm]'.")),
                            counts=False) from None
    except Exception as exc:
        raise _litellm_failed(st, route, exc) from None
    ex.plan.succeeded(route)
    if call.stream:
        return _sse(ex, meter, relay_litellm(result, meter), getattr(result, "aclose", None))
    return _settled_answer(ex, meter, result.model_dump(exclude_none=True))


def _settled_answer(ex: Exchange, meter: Meter, obj: dict[str, Any]) -> Response:
    """Settle and scan an answer litellm translated; the answer as JSON, or the
    response policy's refusal."""
    try:
        meter.settle(obj)
    except SafetyViolationError as exc:
        ex.close(exc)
        return error_response(exc)
    ex.close(None)
    return Response(json.dumps(obj).encode(), media_type=JSON)


def _litellm_failed(st: RouterState, route: Route, exc: Exception) -> AttemptFailed:
    status, code = litellm_error(exc)
    error = UpstreamError(status, type(exc).__name__, deployment_label(route))
    message = st.upstream.scrub_text(f"The {route.provider} upstream for model "
                                     f"'{route.model_name}' failed: {exc}")
    answer = JSONResponse({"error": {"message": message, "type": "upstream_error",
                                     "code": code, "param": None}}, status_code=status)
    if status >= 500 or status in _RETRY_STATUS:
        return AttemptFailed(error, answer)
    context_window = "ContextWindow" in type(exc).__name__
    return AttemptFailed(error, answer, retry=context_window, counts=False,
                         context_window=context_window)


# -- embeddings -------------------------------------------------------------------------
async def embeddings(request: Request) -> Response:
    """Create embeddings (OpenAI-compatible), governed by the runtime.
    ---
    summary: Embeddings, charged to the agent's budget; text inputs are scanned for PII
    tags: [openai]
    security: [{bearerAuth: []}]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [model, input]
            properties:
              model: {type: string}
              input: {oneOf: [{type: string}, {type: array}]}
    responses:
      200: {description: list of embeddings with usage}
      400: {description: invalid_request}
      401: {description: invalid_ic_token}
      402: {description: budget_exceeded}
      403: {description: safety_violation}
    """
    return await _governed(request, "embedding", _embed)


async def _embed(st: RouterState, ex: Exchange, raw: bytes) -> Response:
    return await _attempts(st, ex, raw, False, _embed_attempt)


async def _embed_attempt(st: RouterState, ex: Exchange, route: Route, raw: bytes,
                         meter: Meter) -> Response:
    request = ex.call.request
    if route.translate:
        try:
            result = await st.upstream.litellm_embedding(route, request.body,
                                                         request.body["input"])
        except Exception as exc:
            raise _litellm_failed(st, route, exc) from None
        ex.plan.succeeded(route)
        return _settled_answer(ex, meter, result.model_dump(exclude_none=True))
    try:
        response = await st.upstream.send(route.embeddings_url, _body(ex, route, raw),
                                          route.api_key)
    except UpstreamUnreachable as exc:
        raise _unreachable(route, exc) from None
    if response.status_code >= 300:
        raise _upstream_answer(st, route, response)
    ex.plan.succeeded(route)
    return _plain(ex, meter, response)


# -- models -----------------------------------------------------------------------------
async def models(request: Request) -> Response:
    """The models this router serves (its model_list, or the upstream's list).
    ---
    summary: List models
    tags: [openai]
    security: [{bearerAuth: []}]
    responses:
      200: {description: "OpenAI list of model objects"}
      401: {description: invalid_ic_token}
    """
    st: RouterState = request.app.state.router
    try:
        session = st.open_session(request)
    except IronCageError as exc:
        return error_response(exc)
    _info(request)["agent"] = session.agent_id
    st.runtime.close_session(session)
    if st.config.routes:
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": rs[0].provider}
            for name, rs in st.config.routes.items()]})
    route = st.config.passthrough("")
    try:
        response = await st.upstream.get(f"{route.api_base}/models", route.api_key)
    except UpstreamUnreachable as exc:
        return error_response(UpstreamUnreachableError(
            f"The upstream could not be reached ({exc.cause})."))
    return Response(st.upstream.scrub(response.content), status_code=response.status_code,
                    media_type=response.headers.get("content-type", JSON))


routes = [
    HttpRoute("/v1/chat/completions", chat_completions, methods=["POST"]),
    HttpRoute("/v1/embeddings", embeddings, methods=["POST"]),
    HttpRoute("/v1/models", models, methods=["GET"]),
]
