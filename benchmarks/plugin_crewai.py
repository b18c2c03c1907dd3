"""Per-call overhead of the CrewAI integration, side by side in one run.

    python3 -m uv run --extra all python benchmarks/plugin_crewai.py

The stand-in provider runs as a separate process (``python -m iron_sdk.standin``), so
its work is not on this process's clock. Interleaved pairs, overhead = the median (and
p95) of the per-pair difference:

1. ``llm.call(...)`` of a CrewAI ``LLM`` (native OpenAI provider): protected vs bare, and
   bare with the integration attached vs detached (what the inert hooks cost code that
   runs outside ``@protect_agent``).
2. ``crew.kickoff()`` of a one-agent, one-task crew: protected vs bare.

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
from typing import Any

os.environ["IRON_HOME"] = tempfile.mkdtemp(prefix="iron-bench-")
os.environ.pop("IRON_RUNTIME_URL", None)
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

CALL_ROUNDS = int(os.environ.get("BENCH_ROUNDS", "600"))
KICKOFF_ROUNDS = max(CALL_ROUNDS // 4, 20)
WARMUP = 30


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def us(seconds: float) -> float:
    return round(seconds * 1e6, 1)


def start_standin() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "iron_sdk.standin", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise RuntimeError(f"stand-in did not start (said {url!r})")
    return proc, url


def timed(fn: Callable[[], Any]) -> Callable[[], float]:
    def run() -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    return run


def interleave(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each variant (returning its own elapsed time) once per round, rotating which
    one goes first."""
    names = list(fns)
    for _ in range(WARMUP):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(fns[name]())
    return times


def overhead(times: dict[str, list[float]], slow: str, fast: str) -> tuple[float, float]:
    diffs = [a - b for a, b in zip(times[slow], times[fast], strict=True)]
    return us(statistics.median(diffs)), us(pct(diffs, 0.95))


def main() -> None:
    from crewai import LLM, Agent, Crew, Task
    from iron_crewai.install import instrument, uninstrument

    from iron_sdk import protect_agent

    proc, url = start_standin()
    try:
        llm = LLM(model="gpt-4o-mini", base_url=url, api_key="sk-bench-not-real",
                  max_tokens=32, max_retries=0)
        messages = [{"role": "user", "content": "Summarise the plan in one line."}]

        def bare() -> None:
            llm.call(messages)

        protected = protect_agent(agent_id="bench-llm")(bare)
        protected()  # the first protected call attaches the integration

        def detached() -> float:  # only the call is timed, not detaching/attaching
            uninstrument()
            try:
                return timed(bare)()
            finally:
                instrument()

        calls = interleave({"protected": timed(protected), "bare": timed(bare),
                            "detached": detached}, CALL_ROUNDS)

        agent = Agent(role="Planner", goal="Summarise plans.", backstory="Terse.", llm=llm,
                      verbose=False)
        task = Task(description="Summarise the plan in one line.",
                    expected_output="One line.", agent=agent)
        crew = Crew(agents=[agent], tasks=[task], verbose=False)

        def kickoff() -> None:
            crew.kickoff()

        kickoffs = interleave({"protected": timed(protect_agent(agent_id="bench-crew")(kickoff)),
                               "bare": timed(kickoff)}, KICKOFF_ROUNDS)
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    call_p50, call_p95 = overhead(calls, "protected", "bare")
    inert_p50, inert_p95 = overhead(calls, "bare", "detached")
    kick_p50, kick_p95 = overhead(kickoffs, "protected", "bare")
    results: dict[str, Any] = {
        "crewai_version": __import__("crewai").__version__,
        "llm_call_rounds": CALL_ROUNDS,
        "llm_call_bare_p50_us": us(statistics.median(calls["bare"])),
        "llm_call_protected_p50_us": us(statistics.median(calls["protected"])),
        "llm_call_overhead_p50_us": call_p50,
        "llm_call_overhead_p95_us": call_p95,
        "llm_call_inert_hooks_overhead_p50_us": inert_p50,
        "llm_call_inert_hooks_overhead_p95_us": inert_p95,
        "kickoff_rounds": KICKOFF_ROUNDS,
        "kickoff_bare_p50_us": us(statistics.median(kickoffs["bare"])),
        "kickoff_protected_p50_us": us(statistics.median(kickoffs["protected"])),
        "kickoff_overhead_p50_us": kick_p50,
        "kickoff_overhead_p95_us": kick_p95,
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
