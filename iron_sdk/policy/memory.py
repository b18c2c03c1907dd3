"""Policy store in memory: one process (tests, ``RuntimeConfig(ledger="memory")``)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from iron_sdk.policy.model import Policy
from iron_sdk.policy.store import (
    PolicyStore,
    TokenRecord,
    bucket_of,
    live_after,
    revoked_at,
    window_decision,
)


class MemoryPolicyStore(PolicyStore):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        self._version = 0
        self._windows: dict[str, dict[int, list[int]]] = {}  # scope → second → [n, tokens]
        self._tokens: dict[str, TokenRecord] = {}
        self._revoked_ids: dict[str, float] = {}
        self._revoked_agents: dict[str, float] = {}

    def version(self) -> int:
        return self._version

    def _write(self, scope: str, to_set: dict[str, Any], to_clear: Iterable[str]) -> None:
        with self._lock:
            record = self._records.setdefault(scope, {})
            record.update(to_set)
            for name in to_clear:
                record.pop(name, None)
            if not record:
                del self._records[scope]
            self._version += 1

    def _load_policies(self) -> dict[str, Policy]:
        with self._lock:
            return {s: Policy.model_validate(r) for s, r in self._records.items()}

    def take(self, scope: str, tokens: int, rpm: int | None, tpm: int | None,
             now: float) -> float | None:
        with self._lock:
            window = self._windows.setdefault(scope, {})
            oldest = live_after(now)
            for second in [s for s in window if s <= oldest]:
                del window[second]
            wait = window_decision(((s, n, t) for s, (n, t) in window.items()), now, tokens,
                                   rpm, tpm)
            if wait is None:
                bucket = window.setdefault(bucket_of(now), [0, 0])
                bucket[0] += 1
                bucket[1] += tokens
            return wait

    def record_token(self, record: TokenRecord) -> None:
        with self._lock:
            self._tokens[record.jti] = record

    def tokens(self, agent: str | None = None) -> list[TokenRecord]:
        with self._lock:
            out = [replace(r, revoked=self._revoked_ids.get(r.jti)) for r in
                   self._tokens.values() if agent is None or r.agent == agent]
            agents = dict(self._revoked_agents)
        return sorted((replace(r, revoked=revoked_at(r, agents)) for r in out),
                      key=lambda r: (r.issued, r.jti))

    def _load_revocations(self) -> tuple[frozenset[str], dict[str, float]]:
        with self._lock:
            return frozenset(self._revoked_ids), dict(self._revoked_agents)

    def _revoke_token(self, jti: str, now: float) -> None:
        with self._lock:
            self._revoked_ids.setdefault(jti, now)
            self._version += 1

    def _revoke_agent(self, agent: str, now: float) -> None:
        with self._lock:
            self._revoked_agents[agent] = max(now, self._revoked_agents.get(agent, now))
            self._version += 1
