"""Prometheus metrics of the router, on its own registry (``GET /metrics``).

Request counts and latency are recorded per HTTP request; spend, tokens and blocks come
from the runtime's governance events (a plugin on ``iron_event``), so calls made
through the runtime API door are counted as well.

Label values come from clients (model names, agent ids), so they are made safe and
bounded: a value that is not printable or longer than 120 characters is escaped and cut
(``"\\ud800"`` is shown as its escape, never fed raw to the exposition encoder), and
only the first ``max_agents`` agents and ``max_models`` models get a label of their
own; the rest are counted as ``other``. A model earns its label when the runtime
governed a call to it (completed, failed, or blocked by a policy such as a budget),
never from a request it refused as unknown or malformed, so made-up model names cannot
use up the slots.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from iron_sdk.hookspecs import hookimpl

CONTENT_TYPE = CONTENT_TYPE_LATEST
OTHER = "other"
_MAX_LABEL = 120
# Refusals that say nothing about the model being real: its name stays unlabelled.
_UNVOUCHED = frozenset({"unknown_model_price", "model_not_found", "invalid_request",
                        "model_not_allowed", "invalid_ic_token"})
_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def clean_label(value: str) -> str:
    """A label value the exposition format and its readers take: printable, ≤ 120
    characters (control characters and lone surrogates come out as escapes)."""
    if type(value) is not str:
        value = str(value)
    if len(value) <= _MAX_LABEL and value.isprintable():
        return value
    return repr(value[:_MAX_LABEL])[1:-1]


class LabelFold:
    """The first ``limit`` distinct values (plus ``known`` ones) keep their own label;
    any other value reads as ``other``. Memory is bounded by ``limit``."""

    def __init__(self, limit: int, known: tuple[str, ...] = ()) -> None:
        self.limit = limit
        self._labels: dict[str, str] = {"": ""}
        for value in known:
            self._labels[value] = clean_label(value)
        self._admitted = 0

    def __call__(self, value: str, *, admit: bool = True) -> str:
        label = self._labels.get(value)
        if label is not None:
            return label
        if not admit or self._admitted >= self.limit or type(value) is not str:
            return OTHER
        self._admitted += 1
        label = self._labels[value] = clean_label(value)
        return label


def _amount(value: object) -> float:
    """A counter increment: finite and non-negative (a bad report never breaks it)."""
    if type(value) is int:
        return min(value, 1 << 62) if value > 0 else 0
    if type(value) is float and 0 < value < float("inf"):
        return value
    return 0


class RouterMetrics:
    """The router's metrics; label children are cached (``labels()`` costs µs each)."""

    def __init__(self, *, max_agents: int = 100, max_models: int = 100,
                 known_models: tuple[str, ...] = ()) -> None:
        self.agents = LabelFold(max_agents)
        self.models = LabelFold(max_models, known_models)
        self.reasons = LabelFold(64)
        disable_created_metrics()  # the *_created series only double the scrape
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter("iron_router_requests", "HTTP requests served",
                                ("path", "status", "agent", "model"), registry=r)
        self.latency = Histogram("iron_router_request_duration_seconds",
                                 "Time to the last byte of the response",
                                 ("agent", "model"), buckets=_BUCKETS, registry=r)
        self.in_flight = Gauge("iron_router_in_flight_requests", "Requests being served",
                               registry=r)
        self.spend = Counter("iron_spend_usd", "Money charged to the ledger",
                             ("agent", "model"), registry=r)
        self.tokens = Counter("iron_tokens", "Tokens charged", ("agent", "model", "direction"),
                              registry=r)
        self.calls = Counter("iron_llm_calls", "Governed model calls by outcome",
                             ("agent", "model", "outcome"), registry=r)
        self.blocks = Counter("iron_blocks", "Calls refused by a policy",
                              ("agent", "model", "reason"), registry=r)
        self.deployment_state = Gauge(
            "iron_router_deployment_state",
            "Circuit breaker of each deployment: 0 closed, 1 half-open, 2 open (cooling down)",
            ("model_name", "deployment"), registry=r)
        self.degraded = Gauge("iron_router_model_degraded",
                              "1 when no deployment of the model name is usable",
                              ("model_name",), registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, path: str, status: int, agent: str, model: str, seconds: float) -> None:
        agent, model = self.agents(agent), self.models(model, admit=False)
        self._child(self.requests, path, str(status), agent, model).inc()
        self._child(self.latency, agent, model).observe(seconds)

    @hookimpl
    def iron_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind not in ("call_completed", "call_failed", "call_blocked"):
            return
        reason = str(event.get("reason", "")) if kind == "call_blocked" else ""
        agent = self.agents(event.get("agent_id") or "")
        model = self.models(event.get("model") or "", admit=reason not in _UNVOUCHED)
        self._child(self.calls, agent, model, kind.removeprefix("call_")).inc()
        if kind == "call_completed":
            self._child(self.spend, agent, model).inc(_amount(event.get("cost_micro")) / 1e6)
            self._child(self.tokens, agent, model, "input").inc(_amount(event.get("input_tokens")))
            self._child(self.tokens, agent, model, "output").inc(
                _amount(event.get("output_tokens")))
        elif kind == "call_blocked":
            self._child(self.blocks, agent, model, self.reasons(reason)).inc()

    def deployments(self, health: dict[str, Any]) -> None:
        """Set the breaker gauges from :meth:`Deployments.health` (names come from the
        operator's model_list, so their number is bounded)."""
        degraded = set(health["degraded"])
        for name, states in health["deployments"].items():
            label = clean_label(name)
            self._child(self.degraded, label).set(1 if name in degraded else 0)
            for deployment, state in states.items():
                self._child(self.deployment_state, label, clean_label(deployment)).set(
                    _STATE_VALUE[state])

    def render(self) -> bytes:
        return generate_latest(self.registry)
