"""Every benchmark runs, on a few rounds, and ends with the JSON it promises: a benchmark
that no longer runs against the current API (policy_overhead did once) fails here, not in
the next closing note. The numbers themselves are not judged (speed is measured by the
benchmarks, never by tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = {"BENCH_ROUNDS": "20", "BENCH_CONCURRENT_REQUESTS": "64"}


def run_benchmark(name: str, *args: str) -> dict:
    env = {**os.environ, **FAST}
    env.pop("IRON_RUNTIME_URL", None)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    start = out.rfind("\n{") + 1  # JSON last: the last top-level object
    return json.loads(out[start:])


@pytest.mark.parametrize(("name", "keys"), [
    ("policy_overhead", {"no_policy_p50_us", "rate_limited_p50_us", "version_check_us"}),
    ("hardening", {"chat_overhead_us"}),
    ("accounting_accuracy", {"within_0_1pct", "worst"}),
    ("plugin_langchain", {"chat_openai_invoke_overhead_p50_us"}),
    ("plugin_crewai", {"llm_call_overhead_p50_us"}),
    ("plugin_litellm", {"call_overhead_p50_us"}),
])
def test_benchmark_runs_and_prints_json_last(name: str, keys: set[str]) -> None:
    result = run_benchmark(name)
    assert keys <= set(result)


def test_library_overhead_runs_side_by_side_with_a_checkout() -> None:
    result = run_benchmark("library_overhead", "--against", str(ROOT))
    assert result["governance_p50_us"] > 0 and result["client_overhead_p50_us"] != 0
    against = result["against"]
    for name in ("governance_p50_us", "governance_with_budgets_p50_us"):
        both = against[name]
        assert both["after"] > 0 and both["before"] > 0
        assert both["after_vs_before"] == pytest.approx(both["after"] / both["before"],
                                                        abs=0.001)
        assert both["block_ratio_p50"] > 0
        assert all(v > 0 for v in against[name.replace("_p50_", "_mean_")].values())


def test_router_overhead_runs_side_by_side_with_a_checkout() -> None:
    result = run_benchmark("router_overhead", "--no-litellm", "--policies", "--against",
                           str(ROOT))
    assert result["policies"] is True
    assert result["before"]["policies"] == {"operator_policy": True, "budget": True}
    for side in (result, result["before"]):
        assert side["throughput_32"]["gateway_cpu_ms_per_request"] > 0
        assert side["added_latency"]["gateway_p50_ms"] > 0
    for side in (result, result["before"]):
        assert side["sdk_http_round_trip"]["begin_settle_p50_ms"] > 0
    assert set(result["after_vs_before"]) == {"added_p50", "cpu_per_request",
                                              "sdk_round_trip_p50"}
