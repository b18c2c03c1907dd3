"""Per-call overhead of the LiteLLM plugin, side by side in one run.

    python3 -m uv run --extra all python benchmarks/plugin_litellm.py

The stand-in provider runs as its own process (``python -m iron_sdk.standin``), so its
work is not billed to the measuring process. Interleaved pairs (order alternating):

1. ``litellm.completion`` bare vs. the same call in a ``@protect_agent`` function
   (one invocation = one session, as an agent step pays it);
2. inside one protected session: governed vs. passed through (``outer_governed``) —
   the plugin's own per-call cost (wrapper, policies, reservation, settlement);
3. the same as 1 for a streamed call read to the end (per-chunk metering included);
   the plugin asks for the provider's usage chunk (exact charge), and litellm's own
   handling of that chunk is timed apart (bare with vs. without ``include_usage``).

Overhead = median (and p95) of the per-pair difference; end-to-end litellm calls take
milliseconds, so these pairs are noisy on a busy machine. 4. The plugin's own work with
no network, timed directly: request policies + reservation + settlement of a real
litellm reply, and metering a real streamed reply replayed chunk by chunk.
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

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ["IRON_HOME"] = tempfile.mkdtemp(prefix="iron-bench-")
os.environ.pop("IRON_RUNTIME_URL", None)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "400"))
WARMUP = 50


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def us(seconds: float) -> float:
    return round(seconds * 1e6, 1)


def pairs(a: Callable[[], object], b: Callable[[], object], rounds: int
          ) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` alternately (order flipped every round)."""
    for _ in range(WARMUP):
        a()
        b()
    ta, tb = [], []
    for i in range(rounds):
        for fn in ((a, b) if i % 2 else (b, a)):
            t = time.perf_counter()
            fn()
            (ta if fn is a else tb).append(time.perf_counter() - t)
    return ta, tb


def summary(name: str, governed: list[float], bare: list[float],
            labels: tuple[str, str] = ("governed", "bare")) -> dict[str, float]:
    diffs = [g - b for g, b in zip(governed, bare, strict=True)]
    return {f"{name}_{labels[1]}_p50_us": us(statistics.median(bare)),
            f"{name}_{labels[0]}_p50_us": us(statistics.median(governed)),
            f"{name}_overhead_p50_us": us(statistics.median(diffs)),
            f"{name}_overhead_p95_us": us(pct(diffs, 0.95))}


def plugin_work(litellm: object, options: dict) -> dict[str, float]:
    """The wrapper's work around one call, without the call: begin → settle."""
    from iron_litellm import sdk

    from iron_sdk.integration import MeteredStream
    from iron_sdk.runtime import get_runtime

    reply = litellm.completion(**options)  # type: ignore[attr-defined]
    chunks = list(litellm.completion(stream=True, stream_options={"include_usage": True},
                                     **options))  # type: ignore[attr-defined]
    runtime = get_runtime()
    session = runtime.open_session("bench-litellm-work")
    samples, stream_samples = [], []
    for i in range(ROUNDS * 5 + 200):
        t = time.perf_counter()
        meter = sdk._begin(session, dict(options))
        sdk._finish(meter, reply)
        if i >= 200:
            samples.append(time.perf_counter() - t)
        meter = sdk._begin(session, {**options, "stream": True})
        stream = MeteredStream(iter(chunks), meter)
        t = time.perf_counter()
        for _ in stream:
            pass
        if i >= 200:
            stream_samples.append((time.perf_counter() - t) / len(chunks))
    runtime.close_session(session)
    return {"plugin_work_p50_us": us(statistics.median(samples)),
            "plugin_work_p95_us": us(pct(samples, 0.95)),
            "stream_metering_per_chunk_p50_us": us(statistics.median(stream_samples)),
            "stream_chunks": len(chunks)}


def main() -> None:
    standin = subprocess.Popen([sys.executable, "-m", "iron_sdk.standin", "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    try:
        url = standin.stdout.readline().strip()  # type: ignore[union-attr]
        t = time.perf_counter()
        import litellm

        import_s = time.perf_counter() - t
        from iron_sdk import current_session, get_runtime, protect_agent
        from iron_sdk.guard import outer_governed

        messages = [{"role": "user", "content": "Summarise the plan in one line."}]
        options = dict(model="openai/gpt-4o-mini", api_base=url, api_key="sk-bench",
                       max_tokens=16, max_retries=0, messages=messages)

        def bare() -> None:
            litellm.completion(**options)

        def bare_stream() -> None:
            for _ in litellm.completion(stream=True, **options):
                pass

        protected = protect_agent(agent_id="bench-litellm")(bare)
        protected_stream = protect_agent(agent_id="bench-litellm")(bare_stream)
        results: dict[str, object] = {"rounds": ROUNDS, "import_litellm_s": round(import_s, 2)}
        results.update(summary("call", *pairs(protected, bare, ROUNDS)))

        @protect_agent(agent_id="bench-litellm-session")
        def in_session() -> tuple[list[float], list[float], int]:
            def passed_through() -> None:
                with outer_governed():
                    bare()

            governed, through = pairs(bare, passed_through, ROUNDS)
            return governed, through, current_session().calls

        governed, through, calls = in_session()
        assert calls == ROUNDS + WARMUP, "every governed call was charged exactly once"
        results.update(summary("in_session", governed, through))
        results.update(summary("stream", *pairs(protected_stream, bare_stream,
                                                max(ROUNDS // 2, 50))))

        def bare_stream_with_usage() -> None:  # what the plugin asks litellm for
            for _ in litellm.completion(stream=True, stream_options={"include_usage": True},
                                        **options):
                pass

        results.update(summary("litellm_usage_chunk", *pairs(
            bare_stream_with_usage, bare_stream, max(ROUNDS // 2, 50)),
            labels=("with_include_usage", "without")))
        results.update(plugin_work(litellm, options))
        runtime = get_runtime()
        runtime.flush()
        results["ledger_calls_bench_agent"] = sum(
            r.calls for r in runtime.ledger.usage() if r.agent_id.startswith("bench-litellm"))
        results["targets"] = {"overhead_per_call_us": 50}
    finally:
        standin.terminate()
        standin.wait()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
