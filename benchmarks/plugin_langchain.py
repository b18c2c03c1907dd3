"""Per-call overhead of the LangChain integration, side by side in one run.

    .venv/bin/python benchmarks/plugin_langchain.py      (BENCH_ROUNDS=1000 by default)

The stand-in provider runs as a separate process (``python -m iron_sdk.standin``), so its
work is not on this process's clock.

1. ``ChatOpenAI.invoke`` with and without ``@protect_agent``, interleaved; overhead =
   protected − bare per pair (median, p95). Governed by the openai-client plugin beneath
   ChatOpenAI, with the LangChain handler attached and standing aside.
2. The same for the legacy ``langchain_openai.OpenAI`` LLM, which the LangChain handler
   itself governs (callbacks: policies in ``on_llm_start``, settlement in ``on_llm_end``).
3. The same for ``governed(ChatOpenAI)`` (redaction-capable wrapper) against bare ChatOpenAI.
4. The handler's own work, called directly (no network): on a ChatOpenAI run it leaves to
   the client plugin, and on a legacy-LLM run it governs, next to the runtime's
   ``begin_call`` + ``settle_call`` alone for the same call.
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
import uuid
from collections.abc import Callable
from typing import Any

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ["IRON_HOME"] = tempfile.mkdtemp(prefix="iron-bench-")
os.environ.pop("IRON_RUNTIME_URL", None)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1000"))
WARMUP = 100
PROMPT = "Summarise the plan in one line."


def us(seconds: float) -> float:
    return round(seconds * 1e6, 1)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def interleaved(name: str, bare: Callable[[], Any], protected: Callable[[], Any]
                ) -> dict[str, float]:
    """Alternate the order of the pair each round so drift hits both equally."""
    for _ in range(WARMUP):  # connections, tokenizer, price map, SQLite statements
        bare()
        protected()
    with_, without, diffs = [], [], []
    for i in range(ROUNDS):
        times = {}
        for fn in ((protected, bare) if i % 2 else (bare, protected)):
            t = time.perf_counter()
            fn()
            times[fn] = time.perf_counter() - t
        with_.append(times[protected])
        without.append(times[bare])
        diffs.append(times[protected] - times[bare])
    return {f"{name}_bare_p50_us": us(statistics.median(without)),
            f"{name}_protected_p50_us": us(statistics.median(with_)),
            f"{name}_overhead_p50_us": us(statistics.median(diffs)),
            f"{name}_overhead_p95_us": us(pct(diffs, 0.95))}


def start_standin() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "iron_sdk.standin", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def bench_calls(url: str) -> dict[str, float]:
    from iron_langchain import governed
    from langchain_openai import ChatOpenAI, OpenAI

    from iron_sdk import protect_agent

    chat = ChatOpenAI(model="gpt-4o-mini", base_url=url, api_key="sk-bench", max_tokens=32,
                      max_retries=0)
    legacy = OpenAI(model="gpt-3.5-turbo-instruct", base_url=url, api_key="sk-bench",
                    max_tokens=32, max_retries=0)
    wrapped = governed(chat)
    results: dict[str, float] = {}
    results.update(interleaved("chat_openai_invoke", lambda: chat.invoke(PROMPT),
                               protect_agent(agent_id="bench-chat")(lambda: chat.invoke(PROMPT))))
    results.update(interleaved("legacy_llm_invoke", lambda: legacy.invoke(PROMPT),
                               protect_agent(agent_id="bench-llm")(
                                   lambda: legacy.invoke(PROMPT))))
    results.update(interleaved("governed_chat_invoke", lambda: chat.invoke(PROMPT),
                               protect_agent(agent_id="bench-governed")(
                                   lambda: wrapped.invoke(PROMPT))))
    return results


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    for _ in range(WARMUP):
        fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return samples


def bench_handler() -> dict[str, float]:
    """The handler's own work, no network: on a ChatOpenAI run it leaves to the client
    plugin, and on a legacy-LLM run it governs (vs. the runtime's begin+settle alone)."""
    from iron_langchain.callbacks import _HANDLER
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_core.outputs import ChatGeneration, Generation, LLMResult
    from langchain_openai import ChatOpenAI, OpenAI

    from iron_sdk.call import Usage
    from iron_sdk.request import read_request
    from iron_sdk.runtime import get_runtime
    from iron_sdk.session import _current

    chat = ChatOpenAI(model="gpt-4o-mini", base_url="http://unused", api_key="sk-bench")
    llm = OpenAI(model="gpt-3.5-turbo-instruct", base_url="http://unused", api_key="sk-bench",
                 max_tokens=32)
    chat_args = (chat._serialized, [[HumanMessage(PROMPT)]])
    chat_kw = {"metadata": dict(chat._get_ls_params()),
               "invocation_params": chat._get_invocation_params()}
    chat_result = LLMResult(generations=[[ChatGeneration(message=AIMessage("ok"))]])
    llm_kw = {"metadata": dict(llm._get_ls_params()), "invocation_params": llm._invocation_params}
    llm_result = LLMResult(generations=[[Generation(text="ok")]], llm_output={"token_usage": {
        "prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20}})
    runtime = get_runtime()
    session = runtime.open_session("bench-handler")

    def stand_aside() -> None:
        run_id = uuid.uuid4()
        _HANDLER.on_chat_model_start(*chat_args, run_id=run_id, **chat_kw)
        _HANDLER.on_llm_end(chat_result, run_id=run_id)

    def governs() -> None:
        run_id = uuid.uuid4()
        _HANDLER.on_llm_start(llm._serialized, [PROMPT], run_id=run_id, **llm_kw)
        _HANDLER.on_llm_end(llm_result, run_id=run_id)

    def runtime_only() -> None:
        call = runtime.begin_call(session, read_request("completion", {
            "model": "gpt-3.5-turbo-instruct", "prompt": PROMPT, "max_tokens": 32}))
        runtime.settle_call(call, Usage(input_tokens=8, output_tokens=12))

    token = _current.set(session)
    try:
        aside = timed(stand_aside, ROUNDS * 5)
        governed = timed(governs, ROUNDS * 5)
        bare = timed(runtime_only, ROUNDS * 5)
    finally:
        _current.reset(token)
    return {"handler_stand_aside_p50_us": us(statistics.median(aside)),
            "handler_governed_run_p50_us": us(statistics.median(governed)),
            "handler_governed_run_p95_us": us(pct(governed, 0.95)),
            "runtime_begin_settle_p50_us": us(statistics.median(bare))}


def main() -> None:
    proc, url = start_standin()
    try:
        results: dict[str, object] = {"rounds": ROUNDS}
        results.update(bench_calls(url))
        results.update(bench_handler())
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
