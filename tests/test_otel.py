"""The OpenTelemetry plugin: GenAI spans and metrics of real governed calls (library mode,
the openai client against the local stand-in), read back from the SDK's in-memory
exporters; on and off through the standard OTEL_* environment in real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from iron_otel import GenAiTelemetry
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from iron_sdk import (
    BudgetExceededError,
    SafetyConfig,
    SafetyViolationError,
    hookimpl,
    protect_agent,
)
from iron_sdk.pricing import ModelPrice

ROOT = Path(__file__).resolve().parents[1]
MSG = [{"role": "user", "content": "Say hello to the collector."}]
EMAIL = "jane.doe@example.com"


class Otel:
    def __init__(self) -> None:
        self.spans_out = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans_out))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self) -> list[Any]:
        return list(self.spans_out.get_finished_spans())

    def metric(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()  # None: nothing recorded at all
        return [point for rm in (data.resource_metrics if data else ()) for sm in rm.scope_metrics
                for m in sm.metrics if m.name == name for point in m.data.data_points]


@pytest.fixture
def otel(runtime, monkeypatch) -> Otel:
    """The plugin made active on the test's runtime with in-memory exporters (the global
    providers are left alone; OTEL_SDK_DISABLED kept the entry point off, and is lifted
    for the SDK providers made here, which would be no-ops under it)."""
    assert not runtime.pm.has_plugin("iron.otel")
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    o = Otel()
    runtime.pm.register(GenAiTelemetry(o.tracer_provider, o.meter_provider), name="iron.otel")
    return o


def test_a_completed_call_is_one_genai_client_span(runtime, provider, client, otel):
    @protect_agent(agent_id="otel-agent")
    def agent():
        return client.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                              max_tokens=32)

    reply = agent()
    [span] = otel.spans()
    a = dict(span.attributes)
    assert span.name == "chat gpt-4o-mini" and span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.request.max_tokens"] == 32
    assert a["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    spent = runtime.ledger.state("agent:otel-agent").spent_micro
    assert spent > 0 and a["iron.cost_usd"] == pytest.approx(spent / 1e6)
    assert a["iron.agent"] == "otel-agent" and a["iron.decision"] == "allowed"
    assert a["iron.outcome"] == "completed" and a["iron.source"] == "openai"
    assert "agent:otel-agent" in a["iron.budget.scopes"]
    assert "iron.pii.kinds" not in a


def test_the_span_is_a_child_of_the_users_span(runtime, provider, client, otel):
    tracer = otel.tracer_provider.get_tracer("user-code")

    @protect_agent(agent_id="nested")
    def agent():
        with tracer.start_as_current_span("plan-step"):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)

    with tracer.start_as_current_span("user-request") as root:
        agent()
    spans = {s.name: s for s in otel.spans()}
    call, step = spans["chat gpt-4o-mini"], spans["plan-step"]
    assert call.parent.span_id == step.context.span_id
    assert step.parent.span_id == root.get_span_context().span_id
    assert call.context.trace_id == root.get_span_context().trace_id


def test_pii_kinds_are_attributes_never_values(runtime, provider, client, otel):
    @protect_agent(agent_id="pii", safety=SafetyConfig(pii="redact"))
    def agent():
        client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": f"Write to {EMAIL} today"}])

    agent()
    [span] = otel.spans()
    assert span.attributes["iron.decision"] == "redacted"
    assert list(span.attributes["iron.pii.kinds"]) == ["email"]
    assert EMAIL not in json.dumps(dict(span.attributes), default=list)


def test_a_call_refused_by_safety_ends_its_span_with_the_reason(runtime, provider, client,
                                                              otel):
    @protect_agent(agent_id="strict", safety=SafetyConfig(pii="block"))
    def agent():
        client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": f"Mail {EMAIL}"}])

    with pytest.raises(SafetyViolationError):
        agent()
    [span] = otel.spans()
    a = dict(span.attributes)
    assert span.status.status_code is StatusCode.ERROR
    assert a["iron.decision"] == "blocked" and a["error.type"] == "safety_violation"
    assert list(a["iron.pii.kinds"]) == ["email"] and "gen_ai.usage.input_tokens" not in a
    assert provider.requests == []
    assert otel.metric("gen_ai.client.token.usage") == []


def test_a_call_over_budget_names_the_scope(runtime, provider, client, otel):
    @protect_agent(agent_id="thrifty", budget_usd=0.000001)
    def agent():
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=500)

    with pytest.raises(BudgetExceededError):
        agent()
    [span] = otel.spans()
    assert span.attributes["error.type"] == "budget_exceeded"
    assert span.attributes["iron.budget.blocked_scope"] == "session:thrifty"
    assert span.attributes["iron.decision"] == "blocked"


def test_a_provider_error_ends_the_span_as_an_error(runtime, provider, client, otel):
    class Prices:
        @hookimpl
        def iron_model_price(self, model: str) -> ModelPrice | None:
            return ModelPrice.per_mtok(1.0, 1.0) if model.startswith("fail-") else None

    runtime.pm.register(Prices())

    @protect_agent(agent_id="unlucky")
    def agent():
        client.chat.completions.create(model="fail-503", messages=MSG)

    with pytest.raises(Exception, match="503"):
        agent()
    [span] = otel.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "InternalServerError"
    assert span.attributes["iron.outcome"] == "failed"
    [duration] = otel.metric("gen_ai.client.operation.duration")
    assert duration.attributes["error.type"] == "InternalServerError" and duration.count == 1


def test_metrics_tokens_duration_and_cost(runtime, provider, client, otel):
    @protect_agent(agent_id="metered")
    def agent():
        return [client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
                for _ in range(3)]

    replies = agent()
    usage = {p.attributes["gen_ai.token.type"]: p for p in
             otel.metric("gen_ai.client.token.usage")}
    assert usage["input"].sum == sum(r.usage.prompt_tokens for r in replies)
    assert usage["output"].sum == sum(r.usage.completion_tokens for r in replies)
    assert usage["input"].count == 3
    assert usage["input"].attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert usage["input"].attributes["gen_ai.provider.name"] == "openai"
    [duration] = otel.metric("gen_ai.client.operation.duration")
    assert duration.count == 3 and duration.sum > 0 and "error.type" not in duration.attributes
    [cost] = otel.metric("iron.client.cost")
    spent = runtime.ledger.state("agent:metered").spent_micro
    assert cost.value == pytest.approx(spent / 1e6) and cost.attributes["iron.agent"] == "metered"


async def test_async_stream_span_ends_when_the_stream_is_settled(runtime, provider, aclient,
                                                               otel):
    @protect_agent(agent_id="streamer")
    async def agent():
        stream = await aclient.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                                       stream=True)
        return [chunk async for chunk in stream]

    await agent()
    [span] = otel.spans()
    assert span.attributes["iron.stream"] is True
    assert span.attributes["gen_ai.usage.output_tokens"] > 0


def test_embeddings_are_the_embeddings_operation(runtime, provider, client, otel):
    @protect_agent(agent_id="embedder")
    def agent():
        client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])

    agent()
    [span] = otel.spans()
    assert span.name == "embeddings text-embedding-3-small"
    assert span.attributes["gen_ai.operation.name"] == "embeddings"


SCRIPT = """
import json, os, sys
import openai
from iron_sdk import protect_agent
from iron_sdk.runtime import get_runtime
from iron_sdk.standin import StandInProvider
mode = sys.argv[1]
if mode == "global":
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    out = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(out))
    trace.set_tracer_provider(tp)
with StandInProvider() as p:
    client = openai.OpenAI(base_url=p.url, api_key="sk-test", max_retries=0)
    protect_agent(agent_id="proc")(
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": "hi"}]))()
result = {"active": get_runtime().pm.has_plugin("iron.otel"),
          "imported": "opentelemetry" in sys.modules}
if mode == "global":
    result["spans"] = [s.name for s in out.get_finished_spans()]
print("RESULT " + json.dumps(result), flush=True)
"""


def _run(iron_home: Path, mode: str, **env: str) -> tuple[dict[str, Any], str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True,
                          text=True, timeout=120,
                          env={**base, "PYTHONPATH": str(ROOT), "IRON_HOME": str(iron_home),
                               **env})
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]), proc.stdout


def test_off_when_disabled_imports_nothing(iron_home):
    result, _ = _run(iron_home, "plain", OTEL_SDK_DISABLED="true")
    assert result == {"active": False, "imported": False}


def test_off_when_nobody_collects_telemetry(iron_home):
    result, _ = _run(iron_home, "plain")
    assert result["active"] is False


def test_on_through_the_entry_point_with_the_applications_provider(iron_home):
    result, _ = _run(iron_home, "global")
    assert result["active"] is True and result["spans"] == ["chat gpt-4o-mini"]


def test_on_from_the_otel_environment_alone(iron_home):
    result, stdout = _run(iron_home, "plain", OTEL_TRACES_EXPORTER="console",
                          OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
                          OTEL_SERVICE_NAME="iron-test")
    assert result["active"] is True
    assert '"name": "chat gpt-4o-mini"' in stdout and '"gen_ai.request.model"' in stdout
    assert '"service.name": "iron-test"' in stdout


def test_router_mode_one_span_per_proxied_call(iron_home, provider, monkeypatch):
    """Door 3: the router's runtime runs the same hooks, so the same span comes out of the
    router process (here the app in-process, so its exporters can be read)."""
    pytest.importorskip("starlette", reason="the router extra is not installed")
    import openai
    from starlette.testclient import TestClient

    from iron_router.app import create_app
    from iron_router.config import RouterConfig
    from iron_sdk import RuntimeConfig
    from iron_sdk.identity import issue_token

    monkeypatch.setenv("OPENAI_BASE_URL", provider.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-upstream-test-key")
    app = create_app(RouterConfig(runtime=RuntimeConfig(home=iron_home)))
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    o = Otel()
    app.state.runtime.pm.register(GenAiTelemetry(o.tracer_provider, o.meter_provider),
                                  name="iron.otel")
    token = issue_token(iron_home, "routed")
    with TestClient(app, base_url="http://127.0.0.1") as http:
        client = openai.OpenAI(base_url="http://127.0.0.1/v1", api_key=token,
                               http_client=http, max_retries=0)
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                               max_tokens=16)
        app.state.runtime.ledger.set_limit("agent:poor", 1)  # one micro-dollar
        poor = openai.OpenAI(base_url="http://127.0.0.1/v1", http_client=http, max_retries=0,
                             api_key=issue_token(iron_home, "poor"))
        with pytest.raises(openai.APIStatusError) as refused:
            poor.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        assert refused.value.status_code == 402
    spans = o.spans()
    done = next(s for s in spans if s.status.status_code is StatusCode.UNSET)
    assert done.name == "chat gpt-4o-mini" and done.attributes["iron.source"] == "router"
    assert done.attributes["iron.agent"] == "routed"
    assert done.attributes["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert done.attributes["gen_ai.request.max_tokens"] == 16
    assert done.parent is None  # no trace context crosses HTTP yet
    blocked = next(s for s in spans if s.status.status_code is StatusCode.ERROR)
    assert blocked.attributes["iron.budget.blocked_scope"] == "agent:poor"
    assert blocked.attributes["error.type"] == "budget_exceeded"
