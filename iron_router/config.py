"""Router configuration: LiteLLM's ``model_list`` YAML plus our ``iron:`` section.

A LiteLLM proxy config works as it is::

    model_list:
      - model_name: gpt-4o-mini
        litellm_params:
          model: openai/gpt-4o-mini
          api_key: os.environ/OPENAI_API_KEY
      - model_name: claude
        litellm_params:
          model: anthropic/claude-haiku-4-5
          api_key: os.environ/ANTHROPIC_API_KEY
    iron:
      ledger: /var/lib/iron/ledger.db    # RuntimeConfig fields: home, ledger, audit,
      safety: {pii: block}               # prices, budget, safety, reliability
      require_token: true                # router settings (see RouterSettings)
      allowed_hosts: [router.internal]   # Host names answered besides loopback ones

LiteLLM's ``router_settings`` are read too (other top-level keys, ``general_settings``
and the like, are ignored, except ``litellm_settings.drop_params`` and
``litellm_settings.request_timeout``)::

    router_settings:
      num_retries: 2                # attempts on the name's other healthy deployments
      timeout: 600                  # total seconds per attempt
      allowed_fails: 3              # consecutive failures that cool a deployment down
      cooldown_time: 5              # seconds; then one trial request (half-open)
                                    # (defaults: iron: reliability: circuit_failures 5,
                                    #  circuit_reset_s 30)
      fallbacks: [{gpt-4o: [gpt-4o-mini, claude]}]          # in order, after the retries
      context_window_fallbacks: [{gpt-4o-mini: [gpt-4o]}]   # when the prompt is too long

Without ``num_retries`` a failed attempt is retried once on each other healthy
deployment of the name. Our own timeouts (``iron:`` keys): ``connect_timeout_s``,
``first_byte_timeout_s`` (the answer's headers, and a stream's first event),
``idle_timeout_s`` (between stream chunks), ``upstream_timeout_s`` (total, per attempt).

In router mode a ledger that cannot answer refuses the call (``budget:
{on_ledger_error: closed}``, 503 ``ledger_unavailable``) unless the config says ``open``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iron_sdk.config import RuntimeConfig

DEFAULT_OPENAI_BASE = "https://api.openai.com/v1"
ENV_REF = "os.environ/"
# Providers whose API is OpenAI's own wire format: forwarded byte for byte, no litellm.
OPENAI_COMPATIBLE = frozenset({"", "openai", "hosted_vllm", "custom_openai"})
MB = 1024 * 1024


class ConfigError(ValueError):
    """The router config is unusable; the message names the entry and what to fix."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where one ``model_name`` goes.

    ``model`` is LiteLLM's ``litellm_params.model`` (what is priced and governed);
    ``upstream_model`` is the name sent to an OpenAI-compatible upstream (the model
    without its provider prefix); ``translate`` routes go through ``litellm``.
    """

    model_name: str
    model: str
    upstream_model: str
    provider: str
    translate: bool
    api_base: str | None = None
    api_key: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # other litellm_params (litellm)
    price_per_token: tuple[float, float] | None = None  # litellm's custom input/output cost

    @property
    def chat_url(self) -> str:
        return f"{self.api_base}/chat/completions"

    @property
    def embeddings_url(self) -> str:
        return f"{self.api_base}/embeddings"


@dataclass(frozen=True, slots=True)
class RouterSettings:
    """The router's own settings (top-level ``iron:`` keys that are not RuntimeConfig's)."""

    require_token: bool = True  # False: requests without a token run as default_agent
    anonymous_sessions: bool = False  # True: runtime-API sessions without an IC token
    default_agent: str = "anonymous"
    max_body_mb: float = 10.0
    upstream_timeout_s: float = 600.0  # total per attempt (router_settings.timeout)
    connect_timeout_s: float = 10.0
    first_byte_timeout_s: float = 300.0  # a long non-streamed answer comes all at once
    idle_timeout_s: float = 120.0  # between two chunks of a stream
    ledger_timeout_s: float = 2.0  # a reservation that takes longer is refused (503)
    # LiteLLM's router_settings (see the module docstring).
    num_retries: int | None = None
    allowed_fails: int | None = None  # None: iron.reliability.circuit_failures (5)
    cooldown_time_s: float | None = None  # None: iron.reliability.circuit_reset_s (30)
    fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    context_window_fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    shutdown_timeout_s: float | None = None  # None: wait for every in-flight call
    drop_params: bool = True  # litellm routes drop OpenAI params the provider lacks
    # Host names (besides loopback ones) the router answers to; "*" turns the check off,
    # "*.example.com" allows subdomains. See iron_router.app.HostCheck.
    allowed_hosts: tuple[str, ...] = ()
    # /metrics label values: agents and models past these counts are counted as "other".
    metrics_max_agents: int = 100
    metrics_max_models: int = 100

    def __post_init__(self) -> None:
        hosts = self.allowed_hosts
        if isinstance(hosts, str) or not all(isinstance(h, str) and h for h in hosts):
            raise ConfigError("iron: allowed_hosts must be a list of host names, "
                              "e.g. [router.internal, '*.corp.example'].")
        object.__setattr__(self, "allowed_hosts", tuple(h.lower() for h in hosts))
        for name in ("metrics_max_agents", "metrics_max_models", "allowed_fails"):
            value = getattr(self, name)
            if value is None and name == "allowed_fails":
                continue
            if type(value) is not int or value < 0:
                raise ConfigError(f"iron: {name} must be a whole number >= 0.")
        if self.num_retries is not None and (type(self.num_retries) is not int
                                             or self.num_retries < 0):
            raise ConfigError("router_settings.num_retries must be a whole number >= 0.")
        for name in ("upstream_timeout_s", "connect_timeout_s", "first_byte_timeout_s",
                     "idle_timeout_s", "ledger_timeout_s", "cooldown_time_s"):
            value = getattr(self, name)
            if value is None and name == "cooldown_time_s":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    0 < value < float("inf")):
                raise ConfigError(f"iron: {name} must be a positive number of seconds.")
        for name in ("fallbacks", "context_window_fallbacks"):
            object.__setattr__(self, name, _fallbacks(getattr(self, name), name))

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MB)


@dataclass(frozen=True)
class RouterConfig:
    """Everything the router needs: routes, runtime config, router settings."""

    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    routes: dict[str, tuple[Route, ...]] = field(default_factory=dict)
    settings: RouterSettings = field(default_factory=RouterSettings)
    path: Path | None = None

    @property
    def needs_litellm(self) -> bool:
        return any(r.translate for rs in self.routes.values() for r in rs)

    def secrets(self) -> tuple[str, ...]:
        """Every provider key the router holds or litellm may read from the environment
        (``*_API_KEY``): scrubbed from anything the router passes on."""
        keys = {r.api_key for rs in self.routes.values() for r in rs if r.api_key}
        keys.update(v for k, v in os.environ.items() if k.endswith("_API_KEY"))
        return tuple(k for k in keys if len(k) >= 8)

    def passthrough(self, model: str) -> Route:
        """The route of a model when no ``model_list`` is configured: OpenAI-compatible
        upstream from the environment, model name unchanged."""
        return Route(model_name=model, model=model, upstream_model=model, provider="openai",
                     translate=False, api_base=default_openai_base(),
                     api_key=os.environ.get("OPENAI_API_KEY") or None)


def _fallbacks(value: Any, name: str) -> dict[str, tuple[str, ...]]:
    """LiteLLM's ``[{model: [fallback, ...]}, ...]`` (or a mapping) as a mapping."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list | tuple) and all(isinstance(e, dict) for e in value):
        items = [kv for e in value for kv in e.items()]
    else:
        raise ConfigError(f"router_settings.{name} must be a list like "
                          "[{gpt-4o: [gpt-4o-mini]}].")
    out: dict[str, tuple[str, ...]] = {}
    for key, targets in items:
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(key, str) or not isinstance(targets, list | tuple) or not all(
                isinstance(t, str) and t for t in targets):
            raise ConfigError(f"router_settings.{name}: each entry maps a model_name to a "
                              "list of model_names.")
        out[key] = tuple(targets)
    return out


_ROUTER_SETTINGS = {"num_retries": "num_retries", "timeout": "upstream_timeout_s",
                    "allowed_fails": "allowed_fails", "cooldown_time": "cooldown_time_s",
                    "fallbacks": "fallbacks",
                    "context_window_fallbacks": "context_window_fallbacks"}


def default_openai_base() -> str:
    base = os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE")
    return (base or DEFAULT_OPENAI_BASE).rstrip("/")


def _resolve(value: Any, where: str) -> Any:
    """LiteLLM's ``os.environ/NAME`` references (names only ever appear in errors)."""
    if isinstance(value, str) and value.startswith(ENV_REF):
        name = value[len(ENV_REF):]
        resolved = os.environ.get(name)
        if resolved is None:
            raise ConfigError(f"{where} refers to environment variable {name}, which is not "
                              "set; export it or remove the reference.")
        return resolved
    return value


def _provider_of(model: str) -> tuple[str, str]:
    """``openai/gpt-4o`` → (``openai``, ``gpt-4o``); no prefix → the price data's provider."""
    if "/" in model:
        prefix, rest = model.split("/", 1)
        return prefix, rest
    from iron_sdk.pricing import default_database

    price = default_database().lookup(model)
    return (price.provider if price else ""), model


def _route(i: int, entry: Any) -> Route:
    where = f"model_list[{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping with model_name and litellm_params.")
    name = entry.get("model_name")
    params = entry.get("litellm_params")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.model_name must be a non-empty string.")
    if not isinstance(params, dict) or not isinstance(params.get("model"), str):
        raise ConfigError(f"{where}.litellm_params.model must name the provider model, "
                          "e.g. openai/gpt-4o-mini or anthropic/claude-haiku-4-5.")
    params = {k: _resolve(v, f"{where}.litellm_params.{k}") for k, v in params.items()}
    model = params.pop("model")
    api_base, base_url = params.pop("api_base", None), params.pop("base_url", None)
    api_base = api_base or base_url
    api_key = params.pop("api_key", None)
    cost_in, cost_out = params.pop("input_cost_per_token", None), params.pop(
        "output_cost_per_token", None)
    try:  # YAML reads 2e-7 (no dot) as a string
        price = None if cost_in is None or cost_out is None else (float(cost_in),
                                                                  float(cost_out))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}.litellm_params input/output_cost_per_token must be "
                          "numbers (USD per token).") from None
    for router_only in ("rpm", "tpm", "order"):  # LiteLLM Router load-balancing hints
        params.pop(router_only, None)
    provider, bare = _provider_of(model)
    translate = provider not in OPENAI_COMPATIBLE
    if not translate:
        api_base = api_base or default_openai_base()
        if api_key is None and provider in ("", "openai"):
            api_key = os.environ.get("OPENAI_API_KEY")
    return Route(model_name=name, model=model, upstream_model=bare, translate=translate,
                 provider=provider or "openai",
                 api_base=str(api_base).rstrip("/") if api_base else None,
                 api_key=str(api_key) if api_key else None, params=params,
                 price_per_token=price)


def _prices(routes: dict[str, tuple[Route, ...]]) -> dict[str, dict[str, float]]:
    """LiteLLM's per-route ``input_cost_per_token``/``output_cost_per_token`` as prices."""
    out: dict[str, dict[str, float]] = {}
    for rs in routes.values():
        for r in rs:
            if r.price_per_token is not None:
                cin, cout = r.price_per_token
                out[r.model] = {"input_per_mtok": cin * 1e6, "output_per_mtok": cout * 1e6}
    return out


_SETTINGS = frozenset(RouterSettings.__dataclass_fields__)


def parse_config(data: Any, path: Path | None = None) -> RouterConfig:
    """Build a :class:`RouterConfig` from the parsed YAML document."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("The router config must be a YAML mapping (model_list:, iron:).")
    model_list = data.get("model_list") or []
    if not isinstance(model_list, list):
        raise ConfigError("model_list must be a list of {model_name, litellm_params} entries.")
    grouped: dict[str, list[Route]] = {}
    for i, entry in enumerate(model_list):
        route = _route(i, entry)
        grouped.setdefault(route.model_name, []).append(route)
    routes = {name: tuple(rs) for name, rs in grouped.items()}

    iron = dict(data.get("iron") or {})
    settings_kwargs = {k: iron.pop(k) for k in list(iron) if k in _SETTINGS}
    litellm_settings = data.get("litellm_settings") or {}
    if isinstance(litellm_settings, dict) and "drop_params" in litellm_settings:
        settings_kwargs.setdefault("drop_params", bool(litellm_settings["drop_params"]))
    if isinstance(litellm_settings, dict) and litellm_settings.get("request_timeout"):
        settings_kwargs.setdefault("upstream_timeout_s", litellm_settings["request_timeout"])
    router_settings = data.get("router_settings") or {}
    if not isinstance(router_settings, dict):
        raise ConfigError("router_settings must be a mapping.")
    for key, ours in _ROUTER_SETTINGS.items():
        if router_settings.get(key) is not None:
            settings_kwargs.setdefault(ours, router_settings[key])
    try:
        settings = RouterSettings(**settings_kwargs)
    except TypeError as exc:
        raise ConfigError(f"iron: {exc}") from None
    for name in ("fallbacks", "context_window_fallbacks"):
        for key, targets in getattr(settings, name).items():
            unknown = [t for t in (key, *targets) if t not in routes]
            if unknown and routes:
                raise ConfigError(f"router_settings.{name} names {unknown[0]!r}, which is "
                                  "not a model_name of model_list.")
    # Router mode fails closed when the ledger cannot answer, unless the operator says open.
    budget = iron.get("budget")
    if budget is None or isinstance(budget, dict):
        iron["budget"] = {"on_ledger_error": "closed", **(budget or {})}
    prices = {**_prices(routes), **(iron.get("prices") or {})}
    if prices:
        iron["prices"] = prices
    from pydantic import ValidationError

    try:
        runtime = RuntimeConfig.model_validate(iron)
    except ValidationError as exc:  # field paths and messages only, never the values
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in exc.errors(include_input=False))
        raise ConfigError(f"iron: {problems}") from None
    return RouterConfig(runtime=runtime, routes=routes, settings=settings, path=path)


def load_config(path: str | os.PathLike[str] | None = None) -> RouterConfig:
    """Read the YAML at ``path``; no path → pass-through to the environment's upstream."""
    if path is None:
        return RouterConfig()
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"Cannot read router config {p}: {exc.strerror}.") from None
    except yaml.YAMLError as exc:  # position only: a snippet could show an inline key
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"Router config {p} is not valid YAML{at}: "
                          f"{getattr(exc, 'problem', None) or type(exc).__name__}.") from None
    return parse_config(data, p)
