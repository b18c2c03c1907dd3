"""What the hardening adds to each router request, in µs.

    .venv/bin/python benchmarks/hardening.py

1. The strict JSON reader (iron_router.bodies.parse_json) over plain json.loads: a 2 KB
   chat body (the common case), a 40-message history (past the bracket count that
   triggers the depth walk) and a body with escaped emoji (triggers the surrogate walk).
2. The thread hop of iron_router.offload (what running off the loop costs).
3. The Host check middleware (iron_router.app.HostCheck) around a no-op app.
4. Recording one request's metrics (label folding included).
JSON last.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iron_router.app import HostCheck  # noqa: E402
from iron_router.bodies import parse_json  # noqa: E402
from iron_router.metrics import RouterMetrics  # noqa: E402
from iron_router.offload import Offload  # noqa: E402

CHAT = {"model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 64,
        "messages": [{"role": "system", "content": "You are a terse assistant. " * 12},
                     {"role": "user", "content": "Summarise this: " + "lorem ipsum " * 140}]}
HISTORY = {"model": "gpt-4o-mini", "messages": [
    {"role": "user" if i % 2 else "assistant", "content": f"turn {i} " * 6} for i in range(40)]}
EMOJI = {"model": "gpt-4o-mini", "messages": [{"role": "user",
                                               "content": "\U0001F600 ok " * 300}]}


def interleaved_us(a, b, arg: bytes, number: int = 5000, rounds: int = 15):  # noqa: ANN001, ANN201
    """Per-call µs of ``a(arg)`` and ``b(arg)``, measured in alternating rounds (the
    machine's load hits both alike), best round of each."""
    ta = tb = float("inf")
    for _ in range(rounds):
        ta = min(ta, timeit.timeit(lambda: a(arg), number=number))
        tb = min(tb, timeit.timeit(lambda: b(arg), number=number))
    return ta / number * 1e6, tb / number * 1e6


def compare(name: str, body: dict[str, object], ensure_ascii: bool = False) -> dict[str, float]:
    raw = json.dumps(body, ensure_ascii=ensure_ascii).encode()
    plain, strict = interleaved_us(json.loads, parse_json, raw)
    return {f"{name}_bytes": len(raw), f"{name}_json_loads_us": round(plain, 2),
            f"{name}_parse_json_us": round(strict, 2),
            f"{name}_overhead_us": round(strict - plain, 2)}


async def hop_us() -> float:
    offload = Offload()
    n = 2000
    await offload.run(int)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(n):
        await offload.run(int)
    return (loop.time() - start) / n * 1e6


async def host_check_us() -> float:
    async def app(scope, receive, send) -> None:  # noqa: ANN001
        return None

    checked = HostCheck(app, ())
    scope = {"type": "http", "server": ("127.0.0.1", 8080), "headers": [
        (b"host", b"127.0.0.1:8080"), (b"authorization", b"Bearer x"),
        (b"content-type", b"application/json"), (b"accept", b"*/*")]}
    n = 100_000

    async def loop(target) -> float:  # noqa: ANN001
        start = time.perf_counter()
        for _ in range(n):
            await target(scope, None, None)
        return time.perf_counter() - start

    return (min([await loop(checked) for _ in range(3)])
            - min([await loop(app) for _ in range(3)])) / n * 1e6


def metrics_us() -> float:
    m = RouterMetrics()
    m.request("/v1/chat/completions", 200, "bot", "gpt-4o-mini", 0.01)
    n = 100_000
    best = min(timeit.repeat(
        lambda: m.request("/v1/chat/completions", 200, "bot", "gpt-4o-mini", 0.01),
        number=n, repeat=3))
    return best / n * 1e6


def main() -> None:
    results: dict[str, object] = {}
    results.update(compare("chat", CHAT))
    results.update(compare("history", HISTORY))
    results.update(compare("emoji_escaped", EMOJI, ensure_ascii=True))
    results["offload_thread_hop_us"] = round(asyncio.run(hop_us()), 1)
    results["host_check_us"] = round(asyncio.run(host_check_us()), 2)
    results["metrics_request_us"] = round(metrics_us(), 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
