"""Door 3: the OpenAI-compatible API (``/v1/chat/completions``, ``/v1/embeddings``,
``/v1/models``).

Each request runs the same pipeline as library mode: open a session for the IC token's
agent, ``begin_call`` (reserve, redact, block), forward, settle with the upstream's
usage (or fail and release), close the session. The hot path parses the body once
with ``json.loads``, checks the fields by hand, and forwards the client's bytes as they
came unless the policies changed the request.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as HttpRoute

from iron_router.bodies import parse_json, read_body
from iron_router.config import Route, RouterConfig
from iron_router.errors import error_response
from iron_router.sse import relay_litellm, relay_sse
from iron_router.upstream import Upstream, UpstreamError, UpstreamUnreachable, litellm_error
from iron_sdk.call import LlmCall
from iron_sdk.errors import (
    InvalidTokenError,
    IronCageError,
    ModelNotFoundError,
    RuntimeUnavailableError,
    SafetyViolationError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from iron_sdk.meter import Meter, ask_for_usage, settle_reserved
from iron_sdk.request import read_request
from iron_sdk.runtime import Runtime
from iron_sdk.session import Session

if TYPE_CHECKING:
    import httpx

JSON = "application/json"
_PASSTHROUGH_MAX = 1024  # cached pass-through routes (model names are client-chosen)


class RouterState:
    """What every request handler shares (``app.state.router``)."""

    def __init__(self, runtime: Runtime, config: RouterConfig, upstream: Upstream) -> None:
        self.runtime = runtime
        self.config = config
        self.settings = config.settings
        self.upstream = upstream
        self._passthrough: dict[str, Route] = {}
        self._rr = itertools.count()

    def open_session(self, request: Request) -> Session:
        """The session of the request's agent (401 without a valid IC token)."""
        token = bearer_token(request)
        if token:
            return self.runtime.open_session(ic_token=token)
        if self.settings.require_token:
            raise InvalidTokenError(
                "Missing IC token: send it as 'Authorization: Bearer <token>' (an OpenAI "
                "client's api_key) or as 'x-api-key'. Issue one with "
                "`iron-runtime token issue --agent NAME`.")
        return self.runtime.open_session(self.settings.default_agent)

    def route(self, model: str) -> Route:
        routes = self.config.routes
        if not routes:
            route = self._passthrough.get(model)
            if route is None:
                if len(self._passthrough) >= _PASSTHROUGH_MAX:
                    self._passthrough.clear()
                route = self._passthrough[model] = self.config.passthrough(model)
            return route
        candidates = routes.get(model)
        if candidates is None:
            names = ", ".join(sorted(routes)[:20])
            raise ModelNotFoundError(
                f"Model '{model[:100]}' is not in this router's model_list; "
                f"available: {names}.")
        if len(candidates) == 1:
            return candidates[0]
        return candidates[next(self._rr) % len(candidates)]  # LiteLLM-style deployments


def bearer_token(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-api-key") or None


class Exchange:
    """One governed request: settles or fails its call and closes its session once."""

    __slots__ = ("runtime", "session", "call", "info", "closed")

    def __init__(self, runtime: Runtime, session: Session, call: LlmCall,
                 info: dict[str, Any]) -> None:
        self.runtime, self.session, self.call, self.info = runtime, session, call, info
        self.closed = False

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
        self.runtime.close_session(self.session, error)


def _info(request: Request) -> dict[str, Any]:
    info = request.scope.get("iron.log")
    if info is None:
        info = request.scope["iron.log"] = {}
    return info


Handler = Callable[[RouterState, Exchange, Route, bytes], Awaitable[Response]]


async def _governed(request: Request, kind: str, handler: Handler) -> Response:
    """Read, authenticate, validate, begin the call, then run ``handler`` with it."""
    st: RouterState = request.app.state.router
    info = _info(request)
    try:
        raw = await read_body(request, st.settings.max_body_bytes)
        session = st.open_session(request)
    except IronCageError as exc:
        return error_response(exc)
    info["agent"] = session.agent_id
    runtime = st.runtime
    try:
        offload = request.app.state.offload
        body = await offload.run_sized(len(raw), parse_json, raw)
        request_model = read_request(kind, body, owned=True)
        route = st.route(request_model.model)
        info["model"] = route.model
        call = runtime.begin_call(session, request_model, model=route.model,
                                  source="router", provider=route.provider)
    except BaseException as exc:
        runtime.close_session(session, exc)
        if isinstance(exc, IronCageError):
            return error_response(exc)
        raise
    ex = Exchange(runtime, session, call, info)
    try:
        return await handler(st, ex, route, raw)
    except BaseException as exc:  # a bug or cancellation: never keep the reservation
        ex.fail(exc)
        raise


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
      503: {description: circuit_open / runtime_unavailable}
    """
    return await _governed(request, "chat", _chat)


async def _chat(st: RouterState, ex: Exchange, route: Route, raw: bytes) -> Response:
    call = ex.call
    request = call.request
    meter = Meter(call, hide_usage=ask_for_usage(request))
    if route.translate:
        return await _litellm_chat(st, ex, route, meter)
    if request.body["model"] != route.upstream_model:
        request.set_field("model", route.upstream_model)
    # The client's bytes as they came, unless a policy (or the route) changed the request.
    data = json.dumps(request.body, ensure_ascii=False).encode() if request.changed else raw
    try:
        response = await st.upstream.send(route.chat_url, data, route.api_key,
                                          stream=call.stream)
    except UpstreamUnreachable as exc:
        return _unreachable(ex, route, exc)
    if not call.stream or response.status_code >= 300:
        return _plain(st, ex, meter, response)
    return _sse(ex, meter, relay_sse(response, meter), response.aclose)


def _plain(st: RouterState, ex: Exchange, meter: Meter, response: httpx.Response) -> Response:
    """Pass a complete upstream answer through; settle with it, or release."""
    content = response.content
    media_type = response.headers.get("content-type", JSON)
    if response.status_code >= 300:
        ex.fail(UpstreamError(response.status_code,
                              f"upstream answered {response.status_code}"))
        return Response(st.upstream.scrub(content), status_code=response.status_code,
                        media_type=media_type)
    try:
        obj = json.loads(content)
    except ValueError:
        obj = None
    try:
        if not isinstance(obj, dict):  # an answer we cannot read: charge the reservation
            settle_reserved(ex.call)
        elif meter.settle(obj):  # the response policy redacted it
            content = json.dumps(obj, ensure_ascii=False).encode()
    except SafetyViolationError as exc:  # the response policy blocks it (it is paid)
        ex.close(exc)
        return error_response(exc)
    ex.close(None)
    return Response(content, status_code=response.status_code, media_type=media_type,
                    headers=_capped(ex.call))


def _sse(ex: Exchange, meter: Meter, chunks: AsyncIterator[bytes],
         close: Callable[[], Awaitable[None]] | None) -> StreamingResponse:
    return StreamingResponse(_settled(ex, meter, chunks, close), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", **_capped(ex.call)})


def _capped(call: LlmCall) -> dict[str, str]:
    """Says so when the budget set the output limit of a call that had none."""
    if call.output_capped is None:
        return {}
    return {"x-iron-output-capped": str(call.output_capped)}


async def _settled(ex: Exchange, meter: Meter, chunks: AsyncIterator[bytes],
                   close: Callable[[], Awaitable[None]] | None) -> AsyncIterator[bytes]:
    """Relay ``chunks``; settle when the stream ends, however it ends. A client that
    leaves mid-stream (cancellation) pays for what was generated up to then."""
    error: BaseException | None = None
    try:
        async for chunk in chunks:
            yield chunk
    except BaseException as exc:
        error = exc
        raise
    finally:
        if error is None:
            meter.finish()
        else:
            meter.fail(error)
        ex.close(error)
        if error is not None:
            gone = isinstance(error, GeneratorExit | anyio.get_cancelled_exc_class())
            ex.info["outcome"] = "client_gone" if gone else f"stream_{type(error).__name__}"
        if close is not None:
            # Shielded: runs even while the request is being cancelled; the upstream
            # connection is dropped either way, so its errors do not matter.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await close()


def _unreachable(ex: Exchange, route: Route, exc: UpstreamUnreachable) -> Response:
    """No answer from the upstream: release the reservation and say so."""
    ex.fail(UpstreamError(None, exc.cause))
    if exc.timeout:
        return error_response(UpstreamTimeoutError(
            f"The upstream for model '{route.model_name}' did not answer in time "
            f"({exc.cause}); the reservation was released."))
    return error_response(UpstreamUnreachableError(
        f"The upstream for model '{route.model_name}' could not be reached "
        f"({exc.cause}); the reservation was released."))


async def _litellm_chat(st: RouterState, ex: Exchange, route: Route,
                        meter: Meter) -> Response:
    call = ex.call
    try:
        result = await st.upstream.litellm_chat(route, call.request.body, call.messages,
                                                call.stream)
    except ImportError as exc:
        ex.fail(exc)
        return error_response(RuntimeUnavailableError(
            f"Model '{route.model_name}' ({route.provider}) needs litellm to translate the "
            "request, and it is not installed: pip install 'iron-sdk[litellm]'."))
    except Exception as exc:
        return _litellm_failed(st, ex, route, exc)
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


def _litellm_failed(st: RouterState, ex: Exchange, route: Route, exc: Exception) -> Response:
    status, code = litellm_error(exc)
    ex.fail(UpstreamError(status, type(exc).__name__))
    message = st.upstream.scrub_text(f"The {route.provider} upstream for model "
                                     f"'{route.model_name}' failed: {exc}")
    return JSONResponse({"error": {"message": message, "type": "upstream_error",
                                   "code": code, "param": None}}, status_code=status)


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


async def _embed(st: RouterState, ex: Exchange, route: Route, raw: bytes) -> Response:
    request = ex.call.request
    meter = Meter(ex.call)
    if route.translate:
        try:
            result = await st.upstream.litellm_embedding(route, request.body,
                                                         request.body["input"])
        except Exception as exc:
            return _litellm_failed(st, ex, route, exc)
        return _settled_answer(ex, meter, result.model_dump(exclude_none=True))
    if request.body["model"] != route.upstream_model:
        request.set_field("model", route.upstream_model)
    data = json.dumps(request.body, ensure_ascii=False).encode() if request.changed else raw
    try:
        response = await st.upstream.send(route.embeddings_url, data, route.api_key)
    except UpstreamUnreachable as exc:
        return _unreachable(ex, route, exc)
    return _plain(st, ex, meter, response)


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
