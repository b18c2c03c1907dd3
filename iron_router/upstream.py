"""Talking to providers: a shared aiohttp session for OpenAI-compatible upstreams (bytes
in, bytes out), and litellm — imported lazily — for providers that need translation.
Transport only: metering is :mod:`iron_sdk.meter`'s, SSE framing :mod:`iron_router.sse`'s."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from iron_sdk.guard import outer_governed

if TYPE_CHECKING:
    import aiohttp

    from iron_router.config import Route, RouterSettings

log = logging.getLogger("iron_router")
_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy",
                    "all_proxy")

# Client parameters passed on to litellm. An allow-list, not a deny-list: litellm also
# accepts api_base, api_key, credentials and headers as parameters, which would let a
# client send the router's provider key to a host of its choosing.
CHAT_PARAMS = frozenset({
    "temperature", "top_p", "n", "stop", "max_tokens", "max_completion_tokens",
    "presence_penalty", "frequency_penalty", "logit_bias", "user", "response_format", "seed",
    "tools", "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs",
    "reasoning_effort", "modalities", "audio", "prediction", "service_tier",
    "web_search_options", "thinking", "functions", "function_call",
})
EMBEDDING_PARAMS = frozenset({"dimensions", "encoding_format", "user"})


class UpstreamError(Exception):
    """The provider answered with an error status (``status_code``) or not at all.
    ``deployment`` names the deployment it counts against (the router's own breakers,
    not the per-model circuit of :class:`~iron_sdk.policies.reliability.ReliabilityPolicy`)."""

    def __init__(self, status_code: int | None, message: str, deployment: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.deployment = deployment


class UpstreamUnreachable(Exception):
    """No answer from the provider: connection refused, dropped, or timed out. Carries
    the cause's name only (a transport error's text can hold a URL)."""

    def __init__(self, cause: Exception | str) -> None:
        self.cause = cause if isinstance(cause, str) else type(cause).__name__
        self.timeout = "Timeout" in self.cause
        super().__init__(self.cause)


def _aiohttp() -> Any:
    """aiohttp, imported on first use (the warm-up thread loads it while the router
    already answers)."""
    import aiohttp

    return aiohttp


def cause_of(exc: BaseException) -> str:
    """A transport failure's name, in one vocabulary whatever the client library
    (httpx's words, which the router's messages and audit events have always used)."""
    if isinstance(exc, UpstreamUnreachable):
        return exc.cause
    aiohttp = _aiohttp()
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "ConnectTimeout"
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return "ReadTimeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "ConnectError"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "RemoteProtocolError"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        return "ReadError"
    return type(exc).__name__


class UpstreamResponse:
    """A provider's answer: ``status_code``, ``headers`` and either its whole body
    (``content``) or a body left to stream (:meth:`aiter_bytes`, then :meth:`aclose`)."""

    __slots__ = ("status_code", "headers", "content", "_raw")

    def __init__(self, raw: Any, content: bytes = b"") -> None:
        self.status_code: int = raw.status
        self.headers: Any = raw.headers
        self.content = content
        self._raw = raw

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives; a broken connection raises
        :class:`UpstreamUnreachable`."""
        try:
            async for chunk in self._raw.content.iter_any():
                yield chunk
        except (_aiohttp().ClientError, TimeoutError) as exc:
            raise UpstreamUnreachable(cause_of(exc)) from exc

    async def aclose(self) -> None:
        """Done with the body: a connection read to the end goes back to the pool, one
        left mid-way is closed."""
        self._raw.release()


class Upstream:
    """Provider connections shared by every request of the router.

    OpenAI-compatible upstreams are spoken to with aiohttp: bytes in, bytes out. Its C
    HTTP parser and callback-based pool cost about a sixth of httpx's client CPU per
    request (0.1 vs 0.6 ms at 32 concurrent on loopback)."""

    def __init__(self, settings: RouterSettings, secrets: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self._secrets = tuple(s.encode() for s in secrets)
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str | None, dict[str, str]] = {}
        self._litellm: asyncio.Future[Any] | None = None

    # -- OpenAI-compatible fast path ----------------------------------------------------
    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared client session (made on first use, inside the event loop)."""
        if self._session is None:
            aiohttp = _aiohttp()
            s = self.settings
            t = s.upstream_timeout_s
            # sock_read: the answer's first byte (a plain answer comes all at once) and
            # any gap in a stream (the router also watches idle_timeout_s); connect: the
            # wait for a pooled connection plus the connect itself.
            timeout = aiohttp.ClientTimeout(total=None, connect=min(t, 60.0),
                                            sock_connect=min(t, s.connect_timeout_s),
                                            sock_read=min(t, s.first_byte_timeout_s))
            connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0,
                                             keepalive_timeout=30.0, ttl_dns_cache=300)
            # Proxies from the environment only when one is set: looking them up costs
            # on every request.
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=timeout,
                trust_env=any(os.environ.get(name) for name in _PROXY_VARIABLES))
        return self._session

    def headers(self, api_key: str | None) -> dict[str, str]:
        """Request headers for an upstream: our provider key, never the client's token."""
        h = self._headers.get(api_key)
        if h is None:
            h = {"content-type": "application/json", "accept": "application/json"}
            if api_key:
                h["authorization"] = f"Bearer {api_key}"
            self._headers[api_key] = h
        return h

    async def send(self, url: str, data: bytes, api_key: str | None, *,
                   stream: bool = False) -> UpstreamResponse:
        """POST ``data`` as it is. With ``stream`` a 2xx body is left to read and close;
        an error answer is always read whole. Raises :class:`UpstreamUnreachable`."""
        return await self._request("POST", url, api_key, data, stream)

    async def get(self, url: str, api_key: str | None) -> UpstreamResponse:
        return await self._request("GET", url, api_key, None, False)

    async def _request(self, method: str, url: str, api_key: str | None, data: bytes | None,
                       stream: bool) -> UpstreamResponse:
        aiohttp = _aiohttp()
        try:
            raw = await self.session.request(method, url, data=data,
                                             headers=self.headers(api_key))
            if stream and raw.status < 300:
                return UpstreamResponse(raw)
            try:
                return UpstreamResponse(raw, await raw.read())
            finally:
                raw.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnreachable(cause_of(exc)) from exc

    def scrub(self, data: bytes) -> bytes:
        """Remove any provider key an upstream echoed into an error body."""
        for secret in self._secrets:
            if secret in data:
                data = data.replace(secret, b"***")
        return data

    def scrub_text(self, text: str) -> str:
        return self.scrub(text.encode()).decode(errors="replace")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- translation through litellm ----------------------------------------------------
    def preload_litellm(self) -> None:
        """Start importing litellm in a thread (it takes seconds) so the first
        translated request does not stall the event loop."""
        if self._litellm is None:
            self._litellm = asyncio.ensure_future(asyncio.to_thread(_import_litellm))
            self._litellm.add_done_callback(_log_import_failure)

    async def litellm(self) -> Any:
        self.preload_litellm()
        assert self._litellm is not None
        return await asyncio.shield(self._litellm)

    async def litellm_chat(self, route: Route, body: dict[str, Any],
                           messages: list[dict[str, Any]], stream: bool) -> Any:
        litellm = await self.litellm()
        kwargs = {**route.params, **{k: v for k, v in body.items() if k in CHAT_PARAMS}}
        kwargs.setdefault("timeout", self.settings.upstream_timeout_s)
        if stream:
            kwargs["stream"] = True
            kwargs["stream_options"] = {"include_usage": True}
        with outer_governed():  # the router charges this call; litellm's plugin must not
            return await litellm.acompletion(
                model=route.model, messages=messages, api_base=route.api_base,
                api_key=route.api_key, drop_params=self.settings.drop_params, **kwargs)

    async def litellm_embedding(self, route: Route, body: dict[str, Any], inputs: Any) -> Any:
        litellm = await self.litellm()
        kwargs = {**route.params, **{k: v for k, v in body.items() if k in EMBEDDING_PARAMS}}
        kwargs.setdefault("timeout", self.settings.upstream_timeout_s)
        with outer_governed():
            return await litellm.aembedding(
                model=route.model, input=inputs, api_base=route.api_base,
                api_key=route.api_key, drop_params=self.settings.drop_params, **kwargs)


def _import_litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the map
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


def _log_import_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("litellm could not be imported (%s): routes that need translation will "
                  "answer 503", type(future.exception()).__name__)


def litellm_error(exc: Exception) -> tuple[int, str]:
    """Status and error code for an exception litellm raised."""
    name = type(exc).__name__
    if "Timeout" in name:
        return 504, "upstream_timeout"
    if "APIConnectionError" in name:
        return 502, "upstream_unreachable"
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status < 600:
        return status, "upstream_error"
    return 502, "upstream_error"
