"""Operator policy cost on the hot path (library mode, default SQLite ledger).

    python3 -m uv run --extra all python benchmarks/policy_overhead.py

Governance work per call (``begin_call`` + ``settle_call``, no network) for one agent with
no policy, with a static policy (model allowlist, denylist, max_tokens ceiling, PII floor,
tool lists on a team and global), and with a cross-process rate limit (rpm + tpm, counted
in the memory-mapped windows beside the ledger, under ``flock``); plus the store's
``version()`` and ``is_revoked`` alone.
JSON is printed last.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from iron_sdk.runtime import Runtime

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ["IRON_HOME"] = tempfile.mkdtemp(prefix="iron-bench-")
os.environ.pop("IRON_RUNTIME_URL", None)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2000"))
WARM = 200


def us(seconds: float) -> float:
    return round(seconds * 1e6, 2)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def timed(runtime: Runtime, agent: str) -> list[float]:
    from iron_sdk.call import Usage
    from iron_sdk.request import LlmRequest

    session = runtime.open_session(agent)
    messages = [{"role": "user", "content": "Summarise the plan in one line."}]
    usage = Usage(input_tokens=20, output_tokens=12)
    samples = []
    for i in range(ROUNDS + WARM):
        t = time.perf_counter()
        call = runtime.begin_call(session, LlmRequest.chat("gpt-4o-mini", messages,
                                                            max_tokens=32))
        runtime.settle_call(call, usage)
        if i >= WARM:
            samples.append(time.perf_counter() - t)
    return samples


def main() -> dict[str, float]:
    from iron_sdk.runtime import Runtime

    runtime = Runtime()
    store = runtime.pm.get_plugin("iron.operator").store
    store.set("global", deny_models=["gpt-3.5*"], pii="log", deny_tools=["shell"])
    store.set("team:bench", max_tokens=4096)
    store.set("agent:bench-static", models=["gpt-4o*", "claude-*"], max_tokens=1024)
    store.set("agent:bench-rate", rpm=10**8, tpm=10**9)
    out: dict[str, float] = {}
    for name, agent in (("no_policy", "bench-none"), ("static_policy", "bench-static"),
                        ("rate_limited", "bench-rate")):
        samples = timed(runtime, agent)
        out[f"{name}_p50_us"] = us(statistics.median(samples))
        out[f"{name}_p95_us"] = us(pct(samples, 0.95))
    n = 100_000
    t = time.perf_counter()
    for _ in range(n):
        store.version()
    out["version_check_us"] = us((time.perf_counter() - t) / n)
    claims = {"sub": "bench", "jti": "abc", "iat": 1}
    store.revoke_token("other", time.time())
    t = time.perf_counter()
    for _ in range(n):
        store.is_revoked(claims)
    out["is_revoked_us"] = us((time.perf_counter() - t) / n)
    runtime.close()
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
