"""Talking to providers: a shared httpx pool for OpenAI-compatible upstreams (bytes in,
bytes out), and litellm — imported lazily — for providers that need translation.
Transport only: metering is :mod:`iron_sdk.meter`'s, SSE framing :mod:`iron_router.sse`'s."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import TYPE_CHECKING, Any

from iron_sdk.guard import outer_governed

if TYPE_CHECKING:
    import httpx

    from iron_router.config import Route, RouterSettings

log = logging.getLogger("iron_router")
_POOLS = 4  # connection pools to OpenAI-compatible upstreams (see Upstream.client)
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
    the cause's class name only (an httpx error's text can hold a URL)."""

    def __init__(self, cause: Exception | str) -> None:
        self.cause = cause if isinstance(cause, str) else type(cause).__name__
        self.timeout = "Timeout" in self.cause
        super().__init__(self.cause)


def _httpx() -> Any:
    """httpx, imported on first use: it is a fifth of the router's start-up imports (the
    warm-up thread loads it while the router already answers)."""
    import httpx

    return httpx


class Upstream:
    """Provider connections shared by every request of the router."""

    def __init__(self, settings: RouterSettings, secrets: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self._secrets = tuple(s.encode() for s in secrets)
        self._extensions: dict[str, Any] = {}
        self._client: httpx.AsyncClient | None = None
        self._pool: httpx.AsyncHTTPTransport | None = None
        self._pools: list[httpx.AsyncHTTPTransport] = []
        self._turn = itertools.count()
        self._headers: dict[str | None, httpx.Headers] = {}
        self._urls: dict[str, httpx.URL] = {}
        self._litellm: asyncio.Future[Any] | None = None

    # -- OpenAI-compatible fast path ----------------------------------------------------
    @property
    def client(self) -> httpx.AsyncClient:
        """The shared client. Without a proxy in the environment its connection pool is
        also used directly by :meth:`send`, skipping the client's per-request work (URL
        and header merging, cookies, hooks: about a quarter of httpx's cost per call)."""
        if self._client is None:
            httpx = _httpx()
            s = self.settings
            t = s.upstream_timeout_s
            # read: the answer's first byte (a plain answer comes all at once); the gap
            # between stream chunks is watched by the router (idle_timeout_s).
            timeout = httpx.Timeout(min(t, 60.0), connect=min(t, s.connect_timeout_s),
                                    read=min(t, s.first_byte_timeout_s), pool=min(t, 60.0))
            self._extensions = {"timeout": timeout.as_dict()}
            limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200,
                                  keepalive_expiry=30.0)
            if any(os.environ.get(name) for name in _PROXY_VARIABLES):
                self._client = httpx.AsyncClient(timeout=timeout, limits=limits)
            else:
                # httpcore's pool walks all its connections (a poll() each) on every
                # request: several smaller pools cost a fraction of one big one.
                shard = httpx.Limits(max_connections=1000 // _POOLS,
                                     max_keepalive_connections=200 // _POOLS,
                                     keepalive_expiry=30.0)
                self._pools = [httpx.AsyncHTTPTransport(limits=shard) for _ in range(_POOLS)]
                self._pool = self._pools[0]
                self._client = httpx.AsyncClient(timeout=timeout, transport=self._pool)
        return self._client

    def headers(self, api_key: str | None) -> httpx.Headers:
        """Request headers for an upstream: our provider key, never the client's token
        (built once per key: httpx normalises every header it is given)."""
        h = self._headers.get(api_key)
        if h is None:
            raw = {"content-type": "application/json", "accept": "application/json"}
            if api_key:
                raw["authorization"] = f"Bearer {api_key}"
            h = self._headers[api_key] = _httpx().Headers(raw)
        return h

    def url(self, url: str) -> httpx.URL:
        """The parsed URL (parsed once: a route's URL never changes)."""
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= 1024:
                self._urls.clear()
            parsed = self._urls[url] = _httpx().URL(url)
        return parsed

    async def send(self, url: str, data: bytes, api_key: str | None, *,
                   stream: bool = False) -> httpx.Response:
        """POST ``data`` as it is. With ``stream`` a 2xx body is left to read and close;
        an error answer is always read whole. Raises :class:`UpstreamUnreachable`."""
        client = self.client
        httpx = _httpx()
        request = httpx.Request("POST", self.url(url), content=data,
                                headers=self.headers(api_key), extensions=self._extensions)
        try:
            if self._pool is None:
                response = await client.send(request, stream=True)
            else:
                pool = self._pools[next(self._turn) % _POOLS]
                response = await pool.handle_async_request(request)
            if not stream or response.status_code >= 300:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except httpx.HTTPError as exc:
            raise UpstreamUnreachable(exc) from exc
        return response

    async def get(self, url: str, api_key: str | None) -> httpx.Response:
        try:
            return await self.client.get(url, headers=self.headers(api_key))
        except _httpx().HTTPError as exc:
            raise UpstreamUnreachable(exc) from exc

    def scrub(self, data: bytes) -> bytes:
        """Remove any provider key an upstream echoed into an error body."""
        for secret in self._secrets:
            if secret in data:
                data = data.replace(secret, b"***")
        return data

    def scrub_text(self, text: str) -> str:
        return self.scrub(text.encode()).decode(errors="replace")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        for pool in self._pools[1:]:  # the first one is the client's own
            await pool.aclose()
        self._pools = []

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
