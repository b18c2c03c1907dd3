"""What the telemetry reads of a call: the one place that knows ``LlmCall``'s fields."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iron_sdk.call import LlmCall

_OPERATIONS = {"chat": "chat", "embedding": "embeddings", "completion": "text_completion"}


@dataclass(frozen=True, slots=True)
class CallFacts:
    """Names, counts and decisions of one call; never its messages or PII values."""

    call_id: str
    operation: str
    request_model: str
    provider: str
    max_tokens: int | None
    stream: bool
    agent: str
    source: str
    outcome: str
    redacted: bool
    pii_kinds: tuple[str, ...]
    scopes: tuple[str, ...]
    reserved_micro: int
    input_tokens: int | None
    output_tokens: int | None
    usage_counted: bool
    cost_micro: int
    duration_s: float
    response_model: str | None
    finish_reasons: tuple[str, ...]


def read_call(call: LlmCall) -> CallFacts:
    usage = call.usage
    meta: dict[str, Any] = call.metadata or {}
    return CallFacts(
        call_id=call.call_id,
        operation=_OPERATIONS.get(call.kind, call.kind),
        request_model=call.model,
        provider=call.provider,
        max_tokens=call.max_tokens,
        stream=call.stream,
        agent=call.session.agent_id,
        source=call.source,
        outcome=call.outcome,
        redacted=call.redacted,
        pii_kinds=tuple(call.findings),
        scopes=tuple(call.reserved_scopes or call.session.scopes),
        reserved_micro=call.reserved_micro,
        input_tokens=usage.input_tokens if usage else None,
        output_tokens=usage.output_tokens if usage else None,
        usage_counted=bool(usage and usage.counted),
        cost_micro=call.cost_micro,
        duration_s=time.perf_counter() - call.started,
        # Set by a door that saw the provider's reply (not yet by every door).
        response_model=getattr(call, "response_model", None) or meta.get("response_model"),
        finish_reasons=tuple(getattr(call, "finish_reasons", None)
                             or meta.get("finish_reasons") or ()),
    )
