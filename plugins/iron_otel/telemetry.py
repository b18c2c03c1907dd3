"""GenAI spans and metrics for governed model calls (OpenTelemetry GenAI semantic
conventions, as of semantic-conventions 1.37+: ``gen_ai.provider.name``).

The attribute names are spelled here rather than imported from
``opentelemetry.semconv._incubating``: that module is private and its GenAI names are
deprecated there (they moved to the GenAI conventions repository).
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from iron_otel.facts import CallFacts, read_call
from iron_sdk.errors import usd
from iron_sdk.hookspecs import hookimpl

if TYPE_CHECKING:
    from iron_sdk.call import LlmCall

SCOPE = "iron_sdk"
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
RESPONSE_MODEL = "gen_ai.response.model"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
TOKEN_TYPE = "gen_ai.token.type"
ERROR_TYPE = "error.type"
TOKEN_USAGE = "gen_ai.client.token.usage"
OPERATION_DURATION = "gen_ai.client.operation.duration"
COST = "iron.client.cost"
# Bucket boundaries the GenAI conventions recommend for the two histograms.
TOKEN_BUCKETS = [4.0 ** i for i in range(14)]
DURATION_BUCKETS = [0.01 * 2 ** i for i in range(14)]

# litellm's provider names → the conventions' well-known gen_ai.provider.name values.
_PROVIDERS = {
    "azure": "azure.ai.openai", "azure_ai": "azure.ai.inference", "bedrock": "aws.bedrock",
    "bedrock_converse": "aws.bedrock", "vertex_ai": "gcp.vertex_ai", "gemini": "gcp.gemini",
    "mistral": "mistral_ai", "xai": "x_ai", "watsonx": "ibm.watsonx.ai",
    "text-completion-openai": "openai", "cohere_chat": "cohere",
}


def provider_name(provider: str) -> str:
    if provider.startswith("vertex_ai"):
        return "gcp.vertex_ai"
    return _PROVIDERS.get(provider, provider)


def providers_configured() -> bool:
    """Has the application (or opentelemetry-instrument) set a tracer or meter provider?"""
    tracer_provider = trace.get_tracer_provider()
    meter_provider = metrics.get_meter_provider()
    return not (isinstance(tracer_provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
                and (isinstance(meter_provider, metrics.NoOpMeterProvider)
                     or type(meter_provider).__name__ == "_ProxyMeterProvider"))


class GenAiTelemetry:
    """A span per model call, a child of the span current where the call was made, from
    ``iron_llm_request`` (wrapping every request policy, so a refused call's span says
    why) to ``iron_llm_response``/``iron_llm_error``; the GenAI client metrics and a
    cost counter.

    ``tracer_provider``/``meter_provider`` default to the global ones."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None,
                 meter_provider: metrics.MeterProvider | None = None) -> None:
        from iron_sdk import __version__

        self.tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
        self.token_usage = meter.create_histogram(
            TOKEN_USAGE, unit="{token}", description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)
        self.duration = meter.create_histogram(
            OPERATION_DURATION, unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.cost = meter.create_counter(
            COST, unit="USD", description="What governed model calls cost, in US dollars.")
        self._spans: dict[str, trace.Span] = {}
        self._lock = threading.Lock()

    # -- hooks ---------------------------------------------------------------------------
    @hookimpl(wrapper=True)
    def iron_llm_request(self, call: LlmCall) -> Generator[None, Any, Any]:
        facts = read_call(call)
        attributes: dict[str, Any] = {OPERATION: facts.operation,
                                      REQUEST_MODEL: facts.request_model,
                                      "iron.agent": facts.agent, "iron.source": facts.source,
                                      "iron.stream": facts.stream}
        if facts.max_tokens is not None:
            attributes[REQUEST_MAX_TOKENS] = facts.max_tokens
        span = self.tracer.start_span(f"{facts.operation} {facts.request_model}",
                                      kind=SpanKind.CLIENT, attributes=attributes)
        try:
            result = yield
        except BaseException as exc:  # a policy refused the call: nothing was sent
            facts = read_call(call)
            span.set_attributes(_decision_attributes(facts, "blocked"))
            code = str(getattr(exc, "code", None) or type(exc).__name__)
            span.set_attribute(ERROR_TYPE, code)
            span.set_attribute("iron.block.reason", code)
            scope = getattr(exc, "scope", None)
            if isinstance(scope, str):
                span.set_attribute("iron.budget.blocked_scope", scope)
            span.set_status(Status(StatusCode.ERROR, code))
            span.end()
            raise
        facts = read_call(call)
        span.set_attributes(_decision_attributes(facts, "redacted" if facts.redacted
                                                 else "allowed"))
        with self._lock:
            self._spans[facts.call_id] = span
        return result

    @hookimpl
    def iron_llm_response(self, call: LlmCall) -> None:
        facts = read_call(call)
        span = self._pop(facts.call_id)
        common = _metric_attributes(facts)
        if facts.input_tokens is not None:
            self.token_usage.record(facts.input_tokens, {**common, TOKEN_TYPE: "input"})
            self.token_usage.record(facts.output_tokens or 0, {**common, TOKEN_TYPE: "output"})
        self.duration.record(facts.duration_s, common)
        cost = usd(facts.cost_micro)
        self.cost.add(cost, {"iron.agent": facts.agent, REQUEST_MODEL: facts.request_model,
                             PROVIDER: common.get(PROVIDER, "")})
        if span is None:
            return
        attributes: dict[str, Any] = {"iron.cost_usd": cost, "iron.outcome": facts.outcome,
                                      "iron.usage.counted": facts.usage_counted}
        if facts.input_tokens is not None:
            attributes[INPUT_TOKENS] = facts.input_tokens
            attributes[OUTPUT_TOKENS] = facts.output_tokens or 0
        if facts.response_model:
            attributes[RESPONSE_MODEL] = facts.response_model
        if facts.finish_reasons:
            attributes[FINISH_REASONS] = list(facts.finish_reasons)
        span.set_attributes(attributes)
        span.end()

    @hookimpl
    def iron_llm_error(self, call: LlmCall, error: BaseException) -> None:
        facts = read_call(call)
        span = self._pop(facts.call_id)
        error_type = type(error).__name__
        self.duration.record(facts.duration_s, {**_metric_attributes(facts),
                                                ERROR_TYPE: error_type})
        if span is None:
            return
        span.set_attributes({ERROR_TYPE: error_type, "iron.outcome": facts.outcome})
        span.set_status(Status(StatusCode.ERROR, error_type))
        span.end()

    def _pop(self, call_id: str) -> trace.Span | None:
        with self._lock:
            return self._spans.pop(call_id, None)


def _decision_attributes(facts: CallFacts, decision: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {"iron.decision": decision,
                                  "iron.budget.scopes": list(facts.scopes),
                                  "iron.budget.reserved_usd": usd(facts.reserved_micro)}
    if facts.provider:
        attributes[PROVIDER] = provider_name(facts.provider)
    if facts.pii_kinds:
        attributes["iron.pii.kinds"] = list(facts.pii_kinds)
    return attributes


def _metric_attributes(facts: CallFacts) -> dict[str, Any]:
    attributes: dict[str, Any] = {OPERATION: facts.operation,
                                  REQUEST_MODEL: facts.request_model}
    if facts.provider:
        attributes[PROVIDER] = provider_name(facts.provider)
    if facts.response_model:
        attributes[RESPONSE_MODEL] = facts.response_model
    return attributes
