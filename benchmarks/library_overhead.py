"""Library-mode overhead, side by side in one run.

    python3 -m uv run --extra all python benchmarks/library_overhead.py

1. The same openai-client call to a local stand-in provider with and without
   ``@protect_agent``, interleaved; overhead = protected − bare (median and p95 of the
   per-pair difference) — what a user's call pays end to end.
2. The governance work alone (request policies + reservation + settlement + audit on the
   default SQLite ledger), timed around ``begin_call``/``settle_call`` with no network.
3. PII scan µs per KB (detectors alone and with normalization, custom patterns, NER when the
   ``ner`` extra is installed) and the added latency per streamed chunk of StreamRedactor;
4. ``import iron_sdk`` time (fresh interpreters).

``--against CHECKOUT`` (a checkout with its own ``.venv``; a worktree of the commit before a
change) also times 2 in two worker processes, this checkout's and that one's, alternating
blocks of calls so that both meet the same moments of the machine; ``against`` gives both
p50s and their ratio. On a noisy machine that is the comparison to trust.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

# IRON_BENCH_ROOT: the checkout whose iron_sdk is measured (default this one; --against).
ROOT = Path(os.environ.get("IRON_BENCH_ROOT") or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(ROOT))
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

        def call() -> None:
            client.chat.completions.create(model="gpt-4o-mini", messages=messages,
                                           max_tokens=32)

        protected = protect_agent(agent_id="bench")(call)
        # The bare call bypasses the governed method (a call outside every protected
        # function is governed too): the openai client's own create.
        from iron_openai.wrappers import patches
        from openai.resources.chat.completions import Completions

        create = patches.original(Completions, "create")

        def bare() -> None:
            create(client.chat.completions, model="gpt-4o-mini", messages=messages,
                   max_tokens=32)

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


def governance_call(limited: bool) -> Callable[[], None]:
    """One ``begin_call`` + ``settle_call`` on this process's runtime, no network: for an
    agent without limits, or (``limited``) with a session cap and an agent budget. Works on
    checkouts from before the request model too (``--against``)."""
    from iron_sdk.call import Usage
    from iron_sdk.runtime import get_runtime

    runtime: Any = get_runtime()
    messages = [{"role": "user", "content": "Summarise the plan in one line."}]
    usage = Usage(input_tokens=20, output_tokens=12)
    if limited:
        runtime.ledger.set_limit("agent:bench-limited", 10**12)
        session = runtime.open_session("bench-limited", budget_usd=1000.0)
    else:
        session = runtime.open_session("bench-governance")
    try:
        from iron_sdk.request import LlmRequest
    except ImportError:  # before the request model: the request's fields as arguments
        def begin() -> Any:
            return runtime.begin_call(session, model="gpt-4o-mini", messages=messages,
                                      max_tokens=32)
    else:
        def begin() -> Any:
            return runtime.begin_call(session, LlmRequest.chat("gpt-4o-mini", messages,
                                                                max_tokens=32))

    def one() -> None:
        runtime.settle_call(begin(), usage)
    return one


def timed(one: Callable[[], None], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        one()
        samples.append(time.perf_counter() - t)
    return samples


def bench_governance() -> dict[str, float]:
    out = {}
    for name, limited in (("governance", False), ("governance_with_budgets", True)):
        one = governance_call(limited)
        timed(one, 200)  # warm up
        samples = timed(one, ROUNDS)
        out[f"{name}_p50_us"] = us(statistics.median(samples))
        out[f"{name}_p95_us"] = us(pct(samples, 0.95))
    return out


def governance_worker() -> None:
    """``--governance-worker``: lines ``free N`` / ``limited N`` in, one JSON list of N
    durations (seconds) out per line."""
    calls: dict[str, Callable[[], None]] = {}
    for line in sys.stdin:
        mode, n = line.split()
        if mode not in calls:
            calls[mode] = governance_call(mode == "limited")
            timed(calls[mode], 200)  # warm up
        print(json.dumps(timed(calls[mode], int(n))), flush=True)


def bench_against(checkout: Path) -> dict[str, Any]:
    """Section 2 in this checkout and in ``checkout``, in alternating blocks of 500 calls
    (``BENCH_ROUNDS`` if fewer; at least 8 blocks a side: blocks long enough that a side's
    write-behind batches fall inside its own turn). ``after_vs_before`` is the ratio of
    the pooled p50s; ``block_ratio_p50`` the median of the per-block ratios, which a
    burst of noise on the machine moves less."""
    here = Path(__file__).resolve()
    env = {**os.environ}
    env.pop("IRON_BENCH_ROOT", None)
    workers = {
        "after": subprocess.Popen([sys.executable, str(here), "--governance-worker"], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True),
        "before": subprocess.Popen([str(checkout / ".venv" / "bin" / "python"), str(here),
                                    "--governance-worker"], cwd=checkout,
                                   env={**env, "IRON_BENCH_ROOT": str(checkout)},
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True),
    }
    per_block = min(500, ROUNDS)
    blocks = max(8, 4 * ROUNDS // per_block)
    out: dict[str, Any] = {"checkout": str(checkout), "calls_per_side": blocks * per_block}
    try:
        for mode, name in (("free", "governance"), ("limited", "governance_with_budgets")):
            samples: dict[str, list[float]] = {side: [] for side in workers}
            ratios = []
            for block in range(blocks):
                order = list(workers) if block % 2 == 0 else list(reversed(workers))
                p50: dict[str, float] = {}
                for side in order:
                    proc = workers[side]
                    assert proc.stdin is not None and proc.stdout is not None
                    proc.stdin.write(f"{mode} {per_block}\n")
                    proc.stdin.flush()
                    block_samples = json.loads(proc.stdout.readline())
                    samples[side] += block_samples
                    p50[side] = statistics.median(block_samples)
                ratios.append(p50["after"] / p50["before"])
            pooled = {side: us(statistics.median(v)) for side, v in samples.items()}
            out[f"{name}_p50_us"] = {**pooled, "after_vs_before": round(
                pooled["after"] / pooled["before"], 3), "block_ratio_p50": round(
                statistics.median(ratios), 3)}
            out[f"{name}_mean_us"] = {side: us(statistics.mean(v)) for side, v in samples.items()}
    finally:
        for proc in workers.values():
            proc.kill()
            proc.wait()
    return out


UNICODE_PROSE = ("Le rapport trimestriel montre un chiffre d\u2019affaires de "
                 "1\u202f299,99\u00a0\u20ac par unit\u00e9 \u2014 en hausse de 4,5\u00a0% "
                 "depuis le 15 janvier. Caf\u00e9 "
                 "na\u00efve, \u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \U0001f600. ")
NER_PROSE = ("Maria Garcia reviewed the quarterly report; revenue rose in Paris and Berlin. "
             "Ship the samples to 42 Baker Street, London NW1 6XE before Friday. ")


def _per_kb(fn: object, text: str, n: int, runs: int = 40) -> float:
    """Best of ``runs`` runs of ``n`` calls, in microseconds per KB of UTF-8 (the best run is
    the one least disturbed by other processes)."""
    best = float("inf")
    fn(text)  # type: ignore[operator]
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(n):
            fn(text)  # type: ignore[operator]
        best = min(best, (time.perf_counter() - t) / n)
    return us(best / (len(text.encode()) / 1024))


def bench_pii() -> dict[str, float]:
    from iron_sdk.config import SafetyConfig
    from iron_sdk.safety.detectors import detect, scan
    from iron_sdk.safety.scanner import scanner_for

    kb = (PROSE * 8)[:1024]
    kb_pii = kb[:900] + " mail jane@example.com, call +1 415-555-0132, ip 10.0.0.7."
    ten_kb = (PROSE * 80)[:10240]
    uni_kb = (UNICODE_PROSE * 8)[:700]  # about 1 KB of UTF-8
    disguised = uni_kb[:500] + " jane\uff20example.com, \uff14\uff11\uff11\uff11 1111 1111 1111."
    custom = scanner_for(SafetyConfig(
        patterns=[{"kind": "employee_id", "regex": r"EMP-[0-9]{6}"},
                  {"kind": "loyalty", "regex": r"LC[0-9]{16}", "validator": "luhn"}],
        allow={"support@company.example"}))
    out: dict[str, float] = {}
    for name, fn, text in (
        # detect = the detectors alone (no normalization), scan = normalization + detectors
        ("pii_detect_us_per_kb_clean", detect, kb),
        ("pii_scan_us_per_kb_clean", scan, kb),
        ("pii_scan_us_per_kb_with_pii", scan, kb_pii),
        ("pii_scan_us_per_kb_10kb", scan, ten_kb),
        ("pii_detect_us_per_kb_unicode_prose", detect, uni_kb),
        ("pii_scan_us_per_kb_unicode_prose", scan, uni_kb),
        ("pii_scan_us_per_kb_disguised", scan, disguised),
        ("pii_scan_us_per_kb_custom_patterns", custom.scan, kb),
    ):
        out[name] = _per_kb(fn, text, 100 if len(text) < 2000 else 10)
    short = "Summarise the plan in one line."
    best = float("inf")
    for _ in range(20):
        t = time.perf_counter()
        for _ in range(1000):
            scan(short)
        best = min(best, (time.perf_counter() - t) / 1000)
    out["pii_scan_short_prompt_us"] = us(best)
    out.update(bench_ner())
    out.update(bench_stream())
    out["pii_scan_target_us_per_kb"] = 30
    return out


def bench_ner() -> dict[str, float]:
    try:
        from iron_ner.detector import NerUnavailableError, default_detector

        detector = default_detector()
    except (ImportError, NerUnavailableError):
        return {}
    t = time.perf_counter()
    detector.find("warm up")
    kb = (NER_PROSE * 8)[:1024]
    return {"ner_us_per_kb": _per_kb(detector.find, kb, 5, runs=6),
            "ner_first_load_s": round(time.perf_counter() - t, 2)}


def bench_stream() -> dict[str, float]:
    """Added latency per streamed chunk: a 4 KB answer fed as 4- and 16-character deltas
    (a token is about 4 characters), through StreamRedactor.feed and as plain string joins."""
    from iron_sdk.config import SafetyConfig
    from iron_sdk.safety.stream import StreamRedactor, ToolArgumentsRedactor

    answer = (PROSE * 20)[:4000] + " mail jane@example.com now."
    out: dict[str, float] = {}
    for size in (4, 16):
        chunks = [answer[i:i + size] for i in range(0, len(answer), size)]
        best = float("inf")
        for _ in range(5):
            r = StreamRedactor.for_config(SafetyConfig())
            t = time.perf_counter()
            for c in chunks:
                r.feed(c)
            r.finish()
            best = min(best, (time.perf_counter() - t) / len(chunks))
        out[f"stream_redactor_us_per_chunk_{size}ch"] = us(best)
    args = '{"to": "jane@example.com", "body": "' + "x" * 200 + '", "n": 3}'
    deltas = [args[i:i + 8] for i in range(0, len(args), 8)]
    best = float("inf")
    for _ in range(5):
        r2 = ToolArgumentsRedactor()
        t = time.perf_counter()
        for _ in range(200):
            for d in deltas:
                r2.feed(d)
        best = min(best, (time.perf_counter() - t) / (200 * len(deltas)))
    out["tool_args_redactor_us_per_delta_8ch"] = us(best)
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
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", type=Path, metavar="CHECKOUT",
                        help="also time the governance work of CHECKOUT (its own .venv) "
                             "side by side")
    parser.add_argument("--governance-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.governance_worker:
        governance_worker()
        return
    results: dict[str, object] = {"rounds": ROUNDS}
    results.update(bench_import())
    results.update(bench_pii())
    results.update(bench_governance())
    results.update(bench_client_calls())
    if args.against:
        results["against"] = bench_against(args.against.resolve())
    results["targets"] = {"overhead_per_call_us": 50, "pii_us_per_kb": 50, "import_ms": 200}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
