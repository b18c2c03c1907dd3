"""Prometheus metrics of the router, on its own registry (``GET /metrics``).

Request counts and latency are recorded per HTTP request; spend, tokens and blocks come
from the runtime's governance events (a plugin on ``iron_event``), so calls made
through the runtime API door are counted as well.
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
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class RouterMetrics:
    """The router's metrics; label children are cached (``labels()`` costs µs each)."""

    def __init__(self) -> None:
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
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, path: str, status: int, agent: str, model: str, seconds: float) -> None:
        self._child(self.requests, path, str(status), agent, model).inc()
        self._child(self.latency, agent, model).observe(seconds)

    @hookimpl
    def iron_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind not in ("call_completed", "call_failed", "call_blocked"):
            return
        agent, model = event.get("agent_id", ""), event.get("model", "")
        self._child(self.calls, agent, model, kind.removeprefix("call_")).inc()
        if kind == "call_completed":
            self._child(self.spend, agent, model).inc(event["cost_micro"] / 1_000_000)
            self._child(self.tokens, agent, model, "input").inc(event["input_tokens"])
            self._child(self.tokens, agent, model, "output").inc(event["output_tokens"])
        elif kind == "call_blocked":
            self._child(self.blocks, agent, model, str(event.get("reason", ""))).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
