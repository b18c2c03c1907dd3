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

from iron_router.config import Route, RouterConfig
from iron_router.errors import error_response
from iron_router.upstream import (
    Upstream,
    UpstreamError,
    UpstreamUnreachable,
    litellm_error,
    relay_litellm,
    relay_sse,
)
from iron_sdk.call import LlmCall, Usage, usage_from_openai
from iron_sdk.errors import (
    InvalidRequestError,
    InvalidTokenError,
    IronCageError,
    ModelNotFoundError,
    RuntimeUnavailableError,
)
from iron_sdk.guard import StreamMeter
from iron_sdk.runtime import Runtime
from iron_sdk.session import Session

if TYPE_CHECKING:
    import httpx

JSON = "application/json"
_PASSTHROUGH_MAX = 1024  # cached pass-through routes (model names are client-chosen)


class PayloadTooLargeError(InvalidRequestError):
    status = 413
    code = "payload_too_large"


class UpstreamUnreachableError(IronCageError):
    """The provider could not be reached (or dropped the connection)."""

    status = 502
    code = "upstream_unreachable"
    type = "upstream_error"


class UpstreamTimeoutError(UpstreamUnreachableError):
    status = 504
    code = "upstream_timeout"


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


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes with a 413."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"Request body of {int(declared)} bytes is over the "
                                   f"router's limit of {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"Request body is over the router's limit of "
                                       f"{limit} bytes.")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidRequestError("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return body


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' is required and must be a non-empty string.")
    return model


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequestError(f"'{name}' must be a positive integer.")
    return value


def _chat_fields(body: dict[str, Any]) -> tuple[list[dict[str, Any]], bool, int | None]:
    """Validate a chat request: (messages, stream, max output tokens to reserve)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' is required and must be a non-empty list of "
                                  "message objects.")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequestError(f"messages[{i}] must be an object with a 'role' string.")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError("'stream' must be true or false.")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequestError("'stream_options' must be an object.")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequestError("'tools' must be a list.")
    max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    n = _positive_int(body, "n")
    if max_tokens and n and n > 1:
        max_tokens *= n  # n choices may each use max_tokens
    return messages, bool(stream), max_tokens


def _embedding_inputs(body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[int]]:
    """Embedding inputs as messages for the policies, and which of them are text."""
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    if inputs is None or inputs == [] or inputs == "":
        raise InvalidRequestError("'input' is required: a string, a list of strings, or "
                                  "token arrays.")
    if inputs and all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        items = [items]  # one token array
    messages, text_at = [], []
    for i, item in enumerate(items):
        if isinstance(item, str):
            messages.append({"role": "user", "content": item})
            text_at.append(i)
        elif isinstance(item, list) and all(isinstance(t, int) for t in item):
            # Token arrays carry no text to scan; " 0" per token reserves about their size.
            messages.append({"role": "user", "content": " 0" * len(item)})
        else:
            raise InvalidRequestError(f"input[{i}] must be a string or a list of token ids.")
    return messages, text_at


class Exchange:
    """One governed request: settles or fails its call and closes its session once."""

    __slots__ = ("runtime", "session", "call", "info", "closed")

    def __init__(self, runtime: Runtime, session: Session, call: LlmCall,
                 info: dict[str, Any]) -> None:
        self.runtime, self.session, self.call, self.info = runtime, session, call, info
        self.closed = False

    def finish(self, meter: StreamMeter) -> None:
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


Handler = Callable[[RouterState, Exchange, Route, dict[str, Any], bytes], Awaitable[Response]]


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
        body = parse_json(raw)
        route = st.route(_model(body))
        info["model"] = route.model
        if kind == "chat":
            messages, stream, max_tokens = _chat_fields(body)
            tools = body.get("tools")
            call = runtime.begin_call(
                session, model=route.model, messages=messages, max_tokens=max_tokens,
                stream=stream, source="router", provider=route.provider,
                metadata={"tools": tools} if tools else None)
        else:
            messages, _ = _embedding_inputs(body)
            call = runtime.begin_call(session, model=route.model, messages=messages,
                                      kind="embedding", source="router",
                                      provider=route.provider)
    except BaseException as exc:
        runtime.close_session(session, exc)
        if isinstance(exc, IronCageError):
            return error_response(exc)
        raise
    ex = Exchange(runtime, session, call, info)
    try:
        return await handler(st, ex, route, body, raw)
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


async def _chat(st: RouterState, ex: Exchange, route: Route, body: dict[str, Any],
                raw: bytes) -> Response:
    call = ex.call
    options = body.get("stream_options") or {}
    hide_usage = call.stream and not options.get("include_usage")
    if route.translate:
        return await _litellm_chat(st, ex, route, body, hide_usage)
    changed = False
    if call.redacted:
        body["messages"] = call.messages
        changed = True
    if body["model"] != route.upstream_model:
        body["model"] = route.upstream_model
        changed = True
    if hide_usage:  # the router always needs the usage; the client did not ask to see it
        body["stream_options"] = {**options, "include_usage": True}
        changed = True
    data = json.dumps(body, ensure_ascii=False).encode() if changed else raw
    upstream = st.upstream
    try:
        response = await upstream.send(route.chat_url, data, route.api_key, stream=call.stream)
    except UpstreamUnreachable as exc:
        return _unreachable(ex, route, exc)
    if not call.stream or response.status_code >= 300:
        return _plain(st, ex, response)
    meter = StreamMeter(call)
    return _sse(ex, meter, relay_sse(response, meter, hide_usage), response.aclose)


def _plain(st: RouterState, ex: Exchange, response: httpx.Response) -> Response:
    """Pass a complete upstream answer through; settle with its usage or release."""
    content = response.content
    media_type = response.headers.get("content-type", JSON)
    if response.status_code >= 300:
        ex.fail(UpstreamError(response.status_code,
                              f"upstream answered {response.status_code}"))
        return Response(st.upstream.scrub(content), status_code=response.status_code,
                        media_type=media_type)
    meter = StreamMeter(ex.call)
    try:
        obj = json.loads(content)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        _meter_result(obj, meter)
    else:  # an answer we cannot read: charge what was reserved rather than $0
        call = ex.call
        meter.usage = Usage(input_tokens=call.input_tokens_est,
                            output_tokens=call.max_output_tokens, counted=True)
    ex.finish(meter)
    return Response(content, status_code=response.status_code, media_type=media_type)


def _meter_result(obj: dict[str, Any], meter: StreamMeter) -> None:
    """Usage of a complete chat/embedding answer; its text when it reports none."""
    usage = obj.get("usage")
    if usage:
        meter.usage = usage_from_openai(usage)
        return
    for choice in obj.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            meter.parts.append(message["content"])


def _sse(ex: Exchange, meter: StreamMeter, chunks: AsyncIterator[bytes],
         close: Callable[[], Awaitable[None]] | None) -> StreamingResponse:
    return StreamingResponse(_settled(ex, meter, chunks, close), media_type="text/event-stream",
                             headers={"cache-control": "no-cache"})


async def _settled(ex: Exchange, meter: StreamMeter, chunks: AsyncIterator[bytes],
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


async def _litellm_chat(st: RouterState, ex: Exchange, route: Route, body: dict[str, Any],
                        hide_usage: bool) -> Response:
    call = ex.call
    try:
        result = await st.upstream.litellm_chat(route, body, call.messages, call.stream)
    except ImportError as exc:
        ex.fail(exc)
        return error_response(RuntimeUnavailableError(
            f"Model '{route.model_name}' ({route.provider}) needs litellm to translate the "
            "request, and it is not installed: pip install 'iron-sdk[litellm]'."))
    except Exception as exc:
        return _litellm_failed(st, ex, route, exc)
    meter = StreamMeter(call)
    if call.stream:
        return _sse(ex, meter, relay_litellm(result, meter, hide_usage),
                    getattr(result, "aclose", None))
    obj = result.model_dump(exclude_none=True)
    _meter_result(obj, meter)
    ex.finish(meter)
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


async def _embed(st: RouterState, ex: Exchange, route: Route, body: dict[str, Any],
                 raw: bytes) -> Response:
    call = ex.call
    inputs = body["input"]
    if call.redacted:
        _, text_at = _embedding_inputs(body)
        if isinstance(inputs, str):
            inputs = call.messages[0]["content"]
        else:
            inputs = list(inputs)
            for i in text_at:
                inputs[i] = call.messages[i]["content"]
    if route.translate:
        try:
            result = await st.upstream.litellm_embedding(route, body, inputs)
        except Exception as exc:
            return _litellm_failed(st, ex, route, exc)
        obj = result.model_dump(exclude_none=True)
        meter = StreamMeter(call)
        _meter_result(obj, meter)
        ex.finish(meter)
        return Response(json.dumps(obj).encode(), media_type=JSON)
    changed = call.redacted or body["model"] != route.upstream_model
    if changed:
        body["input"], body["model"] = inputs, route.upstream_model
    data = json.dumps(body, ensure_ascii=False).encode() if changed else raw
    try:
        response = await st.upstream.send(route.embeddings_url, data, route.api_key)
    except UpstreamUnreachable as exc:
        return _unreachable(ex, route, exc)
    return _plain(st, ex, response)


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
