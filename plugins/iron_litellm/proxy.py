"""iron-sdk governance for LiteLLM Proxy: name it in the proxy's ``config.yaml``::

    litellm_settings:
      callbacks: iron_litellm.proxy.handler

Every proxied chat completion (plain or streamed), text completion and embedding
request is then governed by an in-process
iron-sdk runtime on ``$IRON_HOME`` (the same SQLite ledger and audit log as everything
else on the machine):

- before the request leaves (``async_pre_call_hook``): PII/secret redaction of the
  messages, or a block; the budget reservation against every scope of the caller —
  a refusal is raised, so the proxy answers with our status (402 budget, 403 safety,
  401 bad IC token, 400 unknown price) and an OpenAI-shaped body whose ``code`` is ours
  (``iron_sdk.errors.error_from_body`` rebuilds the exception);
- after it: settled with the provider's usage (``async_post_call_success_hook``), or
  metered chunk by chunk for streams (``async_post_call_streaming_iterator_hook``), or
  released on failure (``async_post_call_failure_hook``).

Who pays — the session's agent and scopes:

- an ``x-iron-ic-token`` header: the agent the IC token names (and its scopes);
- else the proxy key: agent ``<key_alias>``, ``key-<first 12 hex of the key hash>``, or
  ``proxy-admin`` for the master key; charged also to ``team:<team_id>``,
  ``user:<user_id>`` and ``end_user:<end_user_id>`` when the proxy knows them.

Budgets live in the ledger: ``iron-runtime budget set <agent> --usd 5``,
``iron-runtime budget set team:<team_id> --usd 50``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncGenerator
from typing import Any

from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyException

from iron_litellm import sdk
from iron_sdk.errors import IronCageError, RuntimeUnavailableError
from iron_sdk.integration import (
    LlmCall,
    LlmRequest,
    Meter,
    Session,
    ask_for_usage,
    make_event,
    read_request,
)

log = logging.getLogger("iron_sdk.litellm_proxy")
IC_TOKEN_HEADER = "x-iron-ic-token"
CHAT_CALL_TYPES = frozenset({"completion", "acompletion"})
TEXT_CALL_TYPES = frozenset({"text_completion", "atext_completion"})
EMBEDDING_CALL_TYPES = frozenset({"embeddings", "embedding", "aembedding"})
# Model calls in other shapes (Responses API, Anthropic messages, images, audio, rerank):
# passed through unmetered, each recorded as a `proxy_request_ungoverned` audit event.
UNGOVERNED_LLM_CALL_TYPES = frozenset({
    "aresponses", "responses", "anthropic_messages", "image_generation",
    "aimage_generation", "audio_transcription", "atranscription", "aspeech", "speech",
    "rerank", "arerank", "moderation", "amoderation", "arealtime", "realtime"})
MASTER_KEY_ALIAS = "litellm_proxy_master_key"  # what the proxy names master-key callers


class IronProxyError(ProxyException):
    """Our refusal as the proxy's error type: our status, our OpenAI-shaped body."""

    def __init__(self, error: IronCageError) -> None:
        super().__init__(message=str(error), type=error.type, param=None, code=error.status,
                         openai_code=error.code)
        self.body = error.to_body()["error"]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.body)


class IronProxyHandler(CustomLogger):
    """The proxy callback (``iron_litellm.proxy.handler`` is the instance to name)."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[str, Meter] = {}  # litellm_call_id → the call's meter

    @property
    def runtime(self) -> Any:
        from iron_sdk.runtime import get_runtime

        return get_runtime()

    # -- before the request ------------------------------------------------------------
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict,
                                  call_type: Any) -> dict:
        request = _request_of(call_type, data)
        if request is None:
            if call_type in UNGOVERNED_LLM_CALL_TYPES:
                self._ungoverned(call_type, data)
            return data
        try:
            # SQLite reservation and token checks: off the event loop.
            call = await asyncio.to_thread(self._begin, user_api_key_dict, data, request)
        except IronCageError as exc:
            raise IronProxyError(exc) from None
        except Exception as exc:  # fail closed, say why without leaking internals
            log.exception("iron-sdk governance failed; request refused")
            raise IronProxyError(RuntimeUnavailableError(
                f"iron-sdk governance failed ({type(exc).__name__}); "
                "the request was not sent.")) from None
        meter = Meter(call, hide_usage=ask_for_usage(call.request))
        _write_back(data, call.request)
        self._pending[str(data.get("litellm_call_id") or call.call_id)] = meter
        data.setdefault("litellm_call_id", call.call_id)
        return data

    def _begin(self, key: Any, data: dict, request: LlmRequest) -> LlmCall:
        session = self._open(key, data)
        try:
            return session.runtime.begin_call(
                session, request, model=_deployment_model(str(data.get("model") or "")),
                source="litellm-proxy")
        except BaseException as exc:
            session.runtime.close_session(session, exc)
            raise

    def _ungoverned(self, call_type: str, data: dict) -> None:
        """A model call this handler cannot meter: let it through, on the record."""
        self.runtime.emit(make_event("proxy_request_ungoverned", call_type=str(call_type),
                                     model=str(data.get("model") or "")))

    def _open(self, key: Any, data: dict) -> Session:
        runtime = self.runtime
        token = _ic_token(data)
        if token:
            return runtime.open_session(ic_token=token)
        scopes = tuple(f"{kind}:{value}" for kind, value in (
            ("team", getattr(key, "team_id", None)), ("user", getattr(key, "user_id", None)),
            ("end_user", getattr(key, "end_user_id", None))) if value)
        return runtime.open_session(_agent_for(key), scopes=scopes)

    # -- after it ----------------------------------------------------------------------
    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any,
                                           response: Any) -> Any:
        meter = self._pop(data)
        if meter is None:
            return response
        if meter.call.stream and not hasattr(response, "choices"):
            self._pending[str(data.get("litellm_call_id"))] = meter  # the stream settles
            return response
        try:
            self._end(meter.call, functools.partial(meter.settle, response))
        except IronCageError as exc:  # the response policy blocks the answer (it is paid)
            raise IronProxyError(exc) from None
        return response

    async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                           user_api_key_dict: Any,
                                           traceback_str: str | None = None) -> None:
        meter = self._pop(request_data)
        if meter is not None:
            self._end(meter.call, functools.partial(meter.fail, original_exception),
                      original_exception)

    async def async_post_call_streaming_iterator_hook(self, user_api_key_dict: Any,
                                                      response: Any, request_data: dict
                                                      ) -> AsyncGenerator[Any, None]:
        meter = self._pop(request_data)
        if meter is None:
            async for chunk in response:
                yield chunk
            return
        try:
            async for chunk in response:
                for out in meter.take(chunk):
                    yield out
            for out in meter.end():
                yield out
        except BaseException as exc:  # provider failed mid-stream, the client left, or
            self._end(meter.call, functools.partial(meter.fail, exc), exc)  # blocked
            raise
        self._end(meter.call, meter.finish)

    def _pop(self, data: dict) -> Meter | None:
        return self._pending.pop(str(data.get("litellm_call_id")), None)

    @staticmethod
    def _end(call: LlmCall, settle: Any, error: BaseException | None = None) -> None:
        try:
            settle()
        finally:
            call.session.runtime.close_session(call.session, error)


# Keys the proxy adds to a request's data for itself: never sent to the provider.
_PROXY_KEYS = frozenset({"metadata", "litellm_metadata", "proxy_server_request",
                         "secret_fields", "litellm_call_id", "litellm_logging_obj",
                         "user_api_key_dict", "litellm_parent_otel_span"})


def _request_of(call_type: Any, data: dict) -> LlmRequest | None:
    """The request a proxied call sends (the proxy's own bookkeeping left out)."""
    if call_type in CHAT_CALL_TYPES and isinstance(data.get("messages"), list):
        kind = "chat"
    elif call_type in TEXT_CALL_TYPES and "prompt" in data:
        kind = "completion"
    elif call_type in EMBEDDING_CALL_TYPES and "input" in data:
        kind = "embedding"
    else:
        return None
    view = {k: v for k, v in data.items() if k not in _PROXY_KEYS}
    return read_request(kind, view)


def _write_back(data: dict, request: LlmRequest) -> None:
    """Put what the policies changed (redactions, the usage request of a stream) into
    the proxy's data, and into the body copy logging callbacks receive."""
    if not request.changed:
        return
    body = (data.get("proxy_server_request") or {}).get("body")
    for key, value in request.body.items():
        if data.get(key) is not value:
            data[key] = value
            if isinstance(body, dict) and key in body and key != "stream_options":
                body[key] = value


def _ic_token(data: dict) -> str | None:
    """The ``x-iron-ic-token`` header; masked in the copies logging callbacks receive."""
    found = None
    request = data.get("proxy_server_request") or {}
    metadata = data.get("metadata") or data.get("litellm_metadata") or {}
    for headers in (request.get("headers"), metadata.get("headers")):
        if not isinstance(headers, dict):
            continue
        for name in list(headers):
            if name.lower() == IC_TOKEN_HEADER:
                found = found or headers[name]
                headers[name] = "[redacted]"
    return found if isinstance(found, str) and found != "[redacted]" else None


def _agent_for(key: Any) -> str:
    alias = getattr(key, "key_alias", None)
    if alias:
        return str(alias)
    hashed = str(getattr(key, "token", None) or getattr(key, "api_key", None) or "")
    if not hashed or hashed == MASTER_KEY_ALIAS:
        return "proxy-admin"
    return f"key-{hashed[:12]}"


def _deployment_model(model_name: str) -> str:
    """The provider model behind a proxy model name (what is priced): the deployment's
    ``litellm_params.model`` when every deployment of the name serves the same one."""
    try:
        from litellm.proxy.proxy_server import llm_router
    except ImportError:
        return model_name
    if llm_router is None:
        return model_name
    deployments = llm_router.get_model_list(model_name=model_name) or []
    models = {(d.get("litellm_params") or {}).get("model") for d in deployments}
    return models.pop() if len(models) == 1 and None not in models else model_name


handler = IronProxyHandler()
sdk.proxy_governs = True  # the proxy's hooks govern its requests; the SDK wrapper stands aside
