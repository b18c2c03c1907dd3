"""Cost of the strict JSON reader (iron_router.bodies.parse_json) over plain json.loads.

    .venv/bin/python benchmarks/bodies.py

A 2 KB chat body (the common case), a 40-message history (past the bracket count that
triggers the depth walk) and a body with escaped emoji (triggers the surrogate walk).
Also the thread hop of iron_router.offload (what running off the loop costs). JSON last.
"""

from __future__ import annotations

import asyncio
import json
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iron_router.bodies import parse_json  # noqa: E402
from iron_router.offload import Offload  # noqa: E402

CHAT = {"model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 64,
        "messages": [{"role": "system", "content": "You are a terse assistant. " * 12},
                     {"role": "user", "content": "Summarise this: " + "lorem ipsum " * 140}]}
HISTORY = {"model": "gpt-4o-mini", "messages": [
    {"role": "user" if i % 2 else "assistant", "content": f"turn {i} " * 6} for i in range(40)]}
EMOJI = {"model": "gpt-4o-mini", "messages": [{"role": "user",
                                               "content": "\U0001F600 ok " * 300}]}


def per_call_us(fn, arg: bytes) -> float:  # noqa: ANN001
    number = 20_000
    best = min(timeit.repeat(lambda: fn(arg), number=number, repeat=5))
    return best / number * 1e6


def compare(name: str, body: dict[str, object], ensure_ascii: bool = False) -> dict[str, float]:
    raw = json.dumps(body, ensure_ascii=ensure_ascii).encode()
    plain = per_call_us(json.loads, raw)
    strict = per_call_us(parse_json, raw)
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


def main() -> None:
    results: dict[str, object] = {}
    results.update(compare("chat", CHAT))
    results.update(compare("history", HISTORY))
    results.update(compare("emoji_escaped", EMOJI, ensure_ascii=True))
    results["offload_thread_hop_us"] = round(asyncio.run(hop_us()), 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
