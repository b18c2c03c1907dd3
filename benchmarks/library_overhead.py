"""Library-mode overhead, side by side in one run.

    python3 -m uv run --extra all python benchmarks/library_overhead.py

1. The same openai-client call to a local stand-in provider with and without
   ``@protect_agent``, interleaved; overhead = protected − bare (median and p95 of the
   per-pair difference) — what a user's call pays end to end.
2. The governance work alone (request policies + reservation + settlement + audit on the
   default SQLite ledger), timed around ``begin_call``/``settle_call`` with no network.
3. PII scan µs per KB; 4. ``import iron_sdk`` time (fresh interpreters).
JSON is printed last.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ["IRON_HOME"] = tempfile.mkdtemp(prefix="iron-bench-")
os.environ.pop("IRON_RUNTIME_URL", None)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2000"))
PROSE = ("The quarterly report shows revenue of $1,299.99 per unit across 3 regions, up 4.5% "
         "since 2024-01-15. Version 3.11.7 shipped on Jan 15; order ORD-2024-000123 is "
         "pending review by the team. ")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def us(seconds: float) -> float:
    return round(seconds * 1e6, 2)


def bench_client_calls() -> dict[str, float]:
    import openai

    from iron_sdk import protect_agent
    from iron_sdk.standin import StandInProvider

    with StandInProvider() as provider:
        client = openai.OpenAI(base_url=provider.url, api_key="sk-bench", max_retries=0)
        messages = [{"role": "user", "content": "Summarise the plan in one line."}]

        def bare() -> None:
            client.chat.completions.create(model="gpt-4o-mini", messages=messages,
                                           max_tokens=32)

        protected = protect_agent(agent_id="bench")(bare)
        for _ in range(200):  # warm up connections, tokenizer, price map, statements
            bare()
            protected()
        with_, without, diffs = [], [], []
        for i in range(ROUNDS):
            order = (protected, bare) if i % 2 else (bare, protected)
            times = {}
            for fn in order:
                t = time.perf_counter()
                fn()
                times[fn] = time.perf_counter() - t
            with_.append(times[protected])
            without.append(times[bare])
            diffs.append(times[protected] - times[bare])
    return {
        "client_call_bare_p50_us": us(statistics.median(without)),
        "client_call_protected_p50_us": us(statistics.median(with_)),
        "client_overhead_p50_us": us(statistics.median(diffs)),
        "client_overhead_p95_us": us(pct(diffs, 0.95) - 0),
    }


def bench_governance() -> dict[str, float]:
    from iron_sdk.call import Usage
    from iron_sdk.runtime import get_runtime

    runtime = get_runtime()
    from iron_sdk.request import LlmRequest

    session = runtime.open_session("bench-governance")
    messages = [{"role": "user", "content": "Summarise the plan in one line."}]
    usage = Usage(input_tokens=20, output_tokens=12)
    samples = []
    for i in range(ROUNDS + 200):
        t = time.perf_counter()
        call = runtime.begin_call(session, LlmRequest.chat("gpt-4o-mini", messages,
                                                            max_tokens=32))
        runtime.settle_call(call, usage)
        if i >= 200:
            samples.append(time.perf_counter() - t)
    runtime.ledger.set_limit("agent:bench-limited", 10**12)
    limited = runtime.open_session("bench-limited", budget_usd=1000.0)
    lim_samples = []
    for i in range(ROUNDS + 200):
        t = time.perf_counter()
        call = runtime.begin_call(limited, LlmRequest.chat("gpt-4o-mini", messages,
                                                            max_tokens=32))
        runtime.settle_call(call, usage)
        if i >= 200:
            lim_samples.append(time.perf_counter() - t)
    return {
        "governance_p50_us": us(statistics.median(samples)),
        "governance_p95_us": us(pct(samples, 0.95)),
        "governance_with_budgets_p50_us": us(statistics.median(lim_samples)),
        "governance_with_budgets_p95_us": us(pct(lim_samples, 0.95)),
    }


def bench_pii() -> dict[str, float]:
    from iron_sdk.safety.detectors import scan

    kb = (PROSE * 8)[:1024]
    kb_pii = kb[:900] + " mail jane@example.com, call +1 415-555-0132, ip 10.0.0.7."
    ten_kb = (PROSE * 80)[:10240]
    out = {}
    for name, text in (("pii_scan_us_per_kb_clean", kb), ("pii_scan_us_per_kb_with_pii", kb_pii),
                       ("pii_scan_us_per_kb_10kb", ten_kb)):
        n = 2000 if len(text) < 2000 else 300
        scan(text)
        t = time.perf_counter()
        for _ in range(n):
            scan(text)
        out[name] = us((time.perf_counter() - t) / n / (len(text.encode()) / 1024))
    short = "Summarise the plan in one line."
    t = time.perf_counter()
    for _ in range(20000):
        scan(short)
    out["pii_scan_short_prompt_us"] = us((time.perf_counter() - t) / 20000)
    return out


def bench_import() -> dict[str, float]:
    code = ("import time; t = time.perf_counter(); import iron_sdk; "
            "print(time.perf_counter() - t)")
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout) for _ in range(7)]
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys, iron_sdk; print([m for m in ('litellm', 'crewai', "
         "'langchain_core') if m in sys.modules])"],
        capture_output=True, text=True, check=True).stdout.strip()
    return {"import_iron_sdk_ms": round(statistics.median(runs) * 1000, 1),
            "import_pulls_heavy_modules": heavy != "[]"}


def main() -> None:
    results: dict[str, object] = {"rounds": ROUNDS}
    results.update(bench_import())
    results.update(bench_pii())
    results.update(bench_governance())
    results.update(bench_client_calls())
    results["targets"] = {"overhead_per_call_us": 50, "pii_us_per_kb": 50, "import_ms": 200}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
