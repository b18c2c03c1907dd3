"""Governance events: flat JSON-able dicts with ids, names, tokens and costs only."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from iron_sdk.call import new_id

if TYPE_CHECKING:
    from iron_sdk.call import LlmCall

Event = dict[str, Any]


def make_event(type_: str, **fields: Any) -> Event:
    return {"event_id": new_id(), "ts": time.time(), "type": type_, **fields}


def call_event(type_: str, call: LlmCall, **extra: Any) -> Event:
    """An event describing ``call`` (never its messages). A dict built in one go: this
    runs for every call."""
    usage = call.usage
    session = call.session
    event = {
        "event_id": new_id(), "ts": time.time(), "type": type_,
        "call_id": call.call_id, "session_id": session.session_id,
        "agent_id": session.agent_id, "model": call.model, "provider": call.provider,
        "source": call.source, "kind": call.kind, "stream": call.stream,
        "input_tokens": usage.input_tokens if usage else 0,
        "output_tokens": usage.output_tokens if usage else 0,
        "cached_input_tokens": usage.cached_input_tokens if usage else 0,
        "reasoning_tokens": usage.reasoning_tokens if usage else 0,
        "usage_counted": usage.counted if usage else False,
        "cost_micro": call.cost_micro, "reserved_micro": call.reserved_micro,
        "outcome": call.outcome, "latency_ms": round(call.latency_ms, 3),
        "findings": call.findings,
    }
    if extra:
        event.update(extra)
    return event
