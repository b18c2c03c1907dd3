"""Rate limit per agent (token bucket) and a circuit breaker per model, in-process; and
the router's breakers per deployment (:class:`DeploymentBreakers`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
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
                or _client_side(error) or getattr(error, "deployment", None) is not None):
            return  # only provider failures count against the provider's circuit; the
            # router counts its upstream's per deployment (DeploymentBreakers)
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


@dataclass(slots=True)
class Breaker:
    failures: int = 0
    opened_at: float | None = None  # None: closed
    trial: bool = False  # half-open: one request is trying the deployment


class DeploymentBreakers:
    """One circuit breaker per deployment (the router's ``(model_name, api_base)``).

    LiteLLM's words: after ``allowed_fails`` consecutive failures a deployment cools
    down for ``cooldown_s``; then it is half-open: one request may try it (others skip
    it), and that trial's outcome closes or re-opens it. Thread-safe."""

    def __init__(self, allowed_fails: int = 3, cooldown_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.allowed_fails = max(1, allowed_fails)
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._breakers: dict[Hashable, Breaker] = {}
        self._lock = threading.Lock()

    def state(self, key: Hashable) -> str:
        """``closed``, ``open`` (cooling down) or ``half_open`` (a trial may run)."""
        b = self._breakers.get(key)
        if b is None or b.opened_at is None:
            return "closed"
        return "open" if self.clock() < b.opened_at + self.cooldown_s or b.trial else "half_open"

    def acquire(self, key: Hashable) -> bool:
        """Whether a request may go to ``key`` now (taking the half-open trial if so)."""
        b = self._breakers.get(key)
        if b is None or b.opened_at is None:
            return True
        with self._lock:
            if b.trial or self.clock() < b.opened_at + self.cooldown_s:
                return False
            b.trial = True
            return True

    def retry_after(self, key: Hashable) -> float:
        b = self._breakers.get(key)
        if b is None or b.opened_at is None:
            return 0.0
        return max(0.0, b.opened_at + self.cooldown_s - self.clock())

    def success(self, key: Hashable) -> None:
        if key in self._breakers:
            with self._lock:
                self._breakers.pop(key, None)

    def failure(self, key: Hashable) -> None:
        with self._lock:
            b = self._breakers.get(key)
            if b is None:
                b = self._breakers[key] = Breaker()
            b.failures += 1
            if b.trial or b.failures >= self.allowed_fails:
                b.opened_at = self.clock()
                b.trial = False

    def release_trial(self, key: Hashable) -> None:
        """The trial ended without a verdict on the deployment (a client error)."""
        b = self._breakers.get(key)
        if b is not None:
            with self._lock:
                b.trial = False
