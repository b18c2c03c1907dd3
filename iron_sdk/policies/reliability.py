"""Rate limit per agent (token bucket) and a circuit breaker per model, in-process."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from iron_sdk.errors import CircuitOpenError, IronCageError, RateLimitedError
from iron_sdk.hookspecs import hookimpl

if TYPE_CHECKING:
    from iron_sdk.call import LlmCall


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


@dataclass(slots=True)
class _Circuit:
    failures: int = 0
    opened_at: float = 0.0


class ReliabilityPolicy:
    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._circuits: dict[str | tuple[str, str], _Circuit] = {}
        self._lock = threading.Lock()

    @hookimpl(tryfirst=True)
    def iron_llm_request(self, call: LlmCall) -> None:
        cfg = call.session.reliability
        now = time.monotonic()
        with self._lock:
            for key in (call.model, (call.model, call.agent_id)):
                circuit = self._circuits.get(key)
                if circuit and circuit.failures >= cfg.circuit_failures:
                    wait = circuit.opened_at + cfg.circuit_reset_s - now
                    if wait > 0:
                        raise CircuitOpenError(call.model, wait)
                    circuit.failures = cfg.circuit_failures - 1  # half-open: one trial
            rpm = cfg.requests_per_minute
            if rpm:
                bucket = self._buckets.setdefault(call.agent_id, _Bucket(rpm, now))
                bucket.tokens = min(rpm, bucket.tokens + (now - bucket.stamp) * rpm / 60)
                bucket.stamp = now
                if bucket.tokens < 1:
                    raise RateLimitedError((1 - bucket.tokens) * 60 / rpm)
                bucket.tokens -= 1

    @hookimpl
    def iron_llm_response(self, call: LlmCall) -> None:
        key = _circuit_key(call)
        if key in self._circuits:
            with self._lock:
                self._circuits.pop(key, None)

    @hookimpl
    def iron_llm_error(self, call: LlmCall, error: BaseException) -> None:
        if (call.outcome == "blocked" or isinstance(error, IronCageError | GeneratorExit)
                or _client_side(error)):
            return  # only provider failures count against the provider's circuit
        with self._lock:
            circuit = self._circuits.setdefault(_circuit_key(call), _Circuit())
            circuit.failures += 1
            if circuit.failures >= call.session.reliability.circuit_failures:
                circuit.opened_at = time.monotonic()


def _circuit_key(call: LlmCall) -> str | tuple[str, str]:
    """Whose view of the model a call's outcome counts in: everyone's when this process
    saw it (in-process, or the router's own upstream), the reporting agent's only when
    an agent reported it over the runtime API (it cannot open the circuit for others)."""
    return (call.model, call.agent_id) if call.remote else call.model


def _client_side(error: BaseException) -> bool:
    status = getattr(error, "status_code", None) or getattr(error, "status", None)
    return isinstance(status, int) and 400 <= status < 500 and status != 429
