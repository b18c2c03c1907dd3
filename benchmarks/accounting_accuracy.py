"""Accounting accuracy: is every chat model charged what its price entry says?

For every chat model in litellm's bundled price map, a grid of usage shapes (plain,
cached, cache writes 5 min + 1 h, reasoning, audio, per-image, above each long-context
tier, each service tier, fine-tune) is priced through the runtime's own path, ``Runtime.price(model)
.cost_micro(usage)`` (the one a call takes), and compared with an independent
computation written here from the raw entry keys in exact decimals. Service tiers
(``…_flex``, ``…_priority``, ``…_batches`` prices) are priced as a call whose response
names that tier. Prints the share
within 0.1 % and the worst offenders; where ``genai-prices`` is installed, also where
the two price sources disagree (information, not a failure). JSON last.

    .venv/bin/python benchmarks/accounting_accuracy.py [--top 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from iron_sdk import Runtime, RuntimeConfig
from iron_sdk.call import Usage
from iron_sdk.ledger.memory import MemoryLedger

TOLERANCE = Decimal("0.001")  # 0.1 %


def raw_price_map() -> dict[str, Any]:
    """The price file, found and read here (not through iron_sdk.pricing)."""
    spec = importlib.util.find_spec("litellm")
    assert spec and spec.submodule_search_locations, "litellm must be installed"
    root = Path(next(iter(spec.submodule_search_locations)))
    data: dict[str, Any] = json.loads(
        (root / "model_prices_and_context_window_backup.json").read_text())
    return data


# -- the independent computation -----------------------------------------------------

def thresholds(entry: dict[str, Any]) -> list[int]:
    """Every ``…_above_<N>k_tokens`` threshold of the entry's standard-tier token prices."""
    found = set()
    for key in entry:
        match = re.fullmatch(r"(input|output|cache)\w*?_above_(\d+)(k|m)_tokens", key)
        if match:
            found.add(int(match[2]) * (1000 if match[3] == "k" else 1_000_000))
    return sorted(found)


def rate(entry: dict[str, Any], tiers: dict[str, Any], key: str, n_in: int) -> Decimal | None:
    """USD per unit for ``key`` in a call with ``n_in`` input tokens: the value listed at
    the highest threshold below ``n_in`` (a tier that does not list a price keeps the
    one below it), else the base value; None when the data has no such price."""
    best: tuple[int, Any] | None = None
    for tkey, value in tiers.items():
        match = re.fullmatch(re.escape(key) + r"_above_(\d+)(k|m)_tokens", tkey)
        if match:
            above = int(match[1]) * (1000 if match[2] == "k" else 1_000_000)
            if n_in > above and (best is None or above > best[0]):
                best = (above, value)
    value = best[1] if best else entry.get(key)
    return None if value is None else Decimal(repr(value))


def expected_usd(entry: dict[str, Any], tiers: dict[str, Any], u: Usage) -> Decimal:
    """The cost of ``u`` from the raw entry. Usage convention: breakdowns are parts of
    the totals; a unit without its own price is billed at the general one."""
    n = u.input_tokens

    def r(key: str, *fallbacks: str) -> Decimal:
        for k in (key, *fallbacks):
            value = rate(entry, tiers, k, n)
            if value is not None:
                return value
        return Decimal(0)

    inp = r("input_cost_per_token")
    out = r("output_cost_per_token")
    audio_in = r("input_cost_per_audio_token", "input_cost_per_token")
    uncached_audio = u.audio_input_tokens - u.cached_audio_tokens
    writes_5m = u.cache_creation_tokens - u.cache_creation_1h_tokens
    plain = (n - u.cached_input_tokens - u.cache_creation_tokens - uncached_audio
             - u.image_input_tokens)
    plain_out = u.output_tokens - u.reasoning_tokens - u.audio_output_tokens
    return (plain * inp
            + (u.cached_input_tokens - u.cached_audio_tokens)
            * r("cache_read_input_token_cost", "input_cost_per_token")
            + u.cached_audio_tokens * (rate(entry, tiers, "cache_read_input_audio_token_cost", n)
                                       or audio_in)
            + writes_5m * r("cache_creation_input_token_cost", "input_cost_per_token")
            + u.cache_creation_1h_tokens * r("cache_creation_input_token_cost_above_1hr",
                                             "cache_creation_input_token_cost",
                                             "input_cost_per_token")
            + uncached_audio * audio_in
            + u.image_input_tokens * r("input_cost_per_image_token", "input_cost_per_token")
            + plain_out * out
            + u.reasoning_tokens * r("output_cost_per_reasoning_token", "output_cost_per_token")
            + u.audio_output_tokens * r("output_cost_per_audio_token", "output_cost_per_token")
            + u.images * (rate(entry, tiers, "input_cost_per_image", n) or 0))


_SERVICE_KEY = re.compile(r"(input_cost_per_token|output_cost_per_token|cache_read_input_token_cost"
                          r"|cache_creation_input_token_cost)(?:_above_\d+k_tokens)?_([a-z]+)")


def service_tiers(entry: dict[str, Any]) -> list[str]:
    """Names of the service tiers (flex, priority, batches...) the entry prices."""
    return sorted({m[2] for k in entry if (m := _SERVICE_KEY.fullmatch(k))})


def as_billed_in(entry: dict[str, Any], service_tier: str) -> dict[str, Any]:
    """The entry with each ``<price>_<tier>`` value in place of ``<price>``."""
    billed = dict(entry)
    for key, value in entry.items():
        if key.endswith("_" + service_tier):
            billed[key[: -len(service_tier) - 1]] = value
    return billed


def shapes(entry: dict[str, Any]) -> list[tuple[str, Usage]]:
    grid = [
        ("plain", Usage(12_345, 6_789)),
        ("cached", Usage(100_000, 2_000, cached_input_tokens=60_000)),
        ("cache-write", Usage(50_000, 1_000, cached_input_tokens=10_000,
                              cache_creation_tokens=20_000, cache_creation_1h_tokens=8_000)),
        ("reasoning", Usage(10_000, 20_000, reasoning_tokens=15_000)),
    ]
    if "input_cost_per_audio_token" in entry or "output_cost_per_audio_token" in entry:
        grid.append(("audio", Usage(10_000, 5_000, cached_input_tokens=2_000,
                                    audio_input_tokens=4_000, cached_audio_tokens=1_000,
                                    audio_output_tokens=3_000)))
    if "input_cost_per_image_token" in entry:
        grid.append(("image-tokens", Usage(10_000, 1_000, image_input_tokens=3_000)))
    if "input_cost_per_image" in entry:
        grid.append(("per-image", Usage(1_000, 100, images=3)))
    for above in thresholds(entry):
        n = above + 50_000
        grid.append((f"above-{above // 1000}k", Usage(
            n, 4_000, cached_input_tokens=n * 3 // 10, cache_creation_tokens=n // 10,
            cache_creation_1h_tokens=n // 20, reasoning_tokens=1_000)))
    for tier in service_tiers(entry):
        grid.append((f"svc-{tier}", Usage(100_000, 5_000, cached_input_tokens=40_000,
                                          cache_creation_tokens=10_000, reasoning_tokens=2_000,
                                          service_tier=tier)))
        grid += [(f"svc-{tier}-above-{above // 1000}k", Usage(
            above + 10_000, 2_000, cached_input_tokens=above // 2, service_tier=tier))
            for above in thresholds(entry)]
    return grid


@dataclass
class Case:
    model: str
    shape: str
    priced_by: str
    got_micro: int
    want_micro: Decimal  # exact (the price file's decimals), before rounding up
    rel_error: float


def price_grid(data: dict[str, Any], chat: list[str], rt: Runtime) -> list[Case]:
    jobs: list[tuple[str, str, str, Usage]] = []  # (model asked, entry key, shape, usage)
    for key in chat:
        jobs += [(key, key, label, u) for label, u in shapes(data[key])]
        name = key.removeprefix("openai/")
        if data[key].get("litellm_provider") == "openai" and "/" not in name:
            # a fine-tune of this model: its own ft: entry, else the base model's
            base = name.removeprefix("ft:")
            ft_key = f"ft:{base}" if f"ft:{base}" in data else base
            jobs.append((f"ft:{base}:my-org::abc123", ft_key, "fine-tune",
                         Usage(20_000, 3_000, cached_input_tokens=5_000)))
    cases: list[Case] = []
    for model, key, shape, usage in jobs:
        price = rt.price(model)  # the path a call takes (hook → configured/database)
        entry = data[key]
        # an entry without tiers of its own may take a twin's (see PriceDatabase.lookup)
        tiers = entry if thresholds(entry) else data.get(price.tier_source_key, {})
        if usage.service_tier:
            entry = tiers = as_billed_in(entry, usage.service_tier)
        want = expected_usd(entry, tiers, usage) * 1_000_000
        got = price.cost_micro(usage)
        if price.source_key != key:  # priced by another entry: count it as wrong
            got = -1
        rel = abs(Decimal(got) - math.ceil(want)) / want if want else Decimal(abs(got))
        by = key + (f" (tiers: {price.tier_source_key})" if price.tier_source_key else "")
        cases.append(Case(model, shape, by, got, want, float(rel)))
    return cases


def run(top: int) -> dict[str, Any]:
    data = raw_price_map()
    chat = sorted(k for k, v in data.items() if isinstance(v, dict) and v.get("mode") == "chat"
                  and "input_cost_per_token" in v)
    with tempfile.TemporaryDirectory() as home:
        rt = Runtime(RuntimeConfig(home=Path(home)), ledger=MemoryLedger())
        try:
            cases = price_grid(data, chat, rt)
            report = summarize(chat, cases, top)
            report["genai_prices"] = compare_genai_prices(data, chat, rt, top)
        finally:
            rt.close()
    return report


def summarize(chat: list[str], cases: list[Case], top: int) -> dict[str, Any]:
    within = [c for c in cases if Decimal(c.rel_error) <= TOLERANCE]
    exact = [c for c in cases if c.got_micro == math.ceil(c.want_micro)]
    worst = sorted(cases, key=lambda c: c.rel_error, reverse=True)[:top]
    shape_counts: dict[str, int] = {}
    for c in cases:
        kind = ("above-tier" if c.shape.startswith("above") else
                "service-tier" if c.shape.startswith("svc") else c.shape)
        shape_counts[kind] = shape_counts.get(kind, 0) + 1
    print(f"{len(chat)} chat models, {len(cases)} cases {shape_counts}")
    print(f"within 0.1%: {len(within)}/{len(cases)} = {len(within) / len(cases):.4%}; "
          f"equal to the µ$: {len(exact) / len(cases):.4%}")
    print("worst:")
    for c in worst:
        print(f"  {c.model:60} {c.shape:14} got {c.got_micro} µ$, want {c.want_micro} "
              f"({c.rel_error:.2e})")
    return {"models": len(chat), "cases": len(cases), "shapes": shape_counts,
            "within_0_1pct": len(within) / len(cases), "exact_micro": len(exact) / len(cases),
            "worst": [asdict(c) for c in worst]}


# -- a second source, for information -------------------------------------------------

_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google",
              "vertex_ai-language-models": "google", "deepseek": "deepseek",
              "mistral": "mistral", "groq": "groq", "xai": "x-ai", "cohere_chat": "cohere",
              "perplexity": "perplexity", "together_ai": "together", "fireworks_ai": "fireworks",
              "cerebras": "cerebras", "openrouter": "openrouter", "moonshot": "moonshotai",
              "bedrock": "aws", "bedrock_converse": "aws", "azure": "azure"}


def compare_genai_prices(data: dict[str, Any], chat: list[str], rt: Runtime,
                         top: int) -> dict[str, Any] | None:
    try:
        from genai_prices import Usage as GUsage
        from genai_prices import calc_price
    except ImportError:
        print("genai-prices not installed: no second-source comparison "
              "(pip install 'iron-sdk[prices]')")
        return None
    compared, disagree = 0, []
    for key in chat:
        provider = _PROVIDERS.get(data[key].get("litellm_provider", ""))
        if provider is None:
            continue
        price = rt.price(key)
        for label, u in shapes(data[key]):
            if label not in ("plain", "cached", "cache-write") and not label.startswith("above"):
                continue
            g = GUsage(input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                       cache_read_tokens=u.cached_input_tokens,
                       cache_write_5m_tokens=u.cache_creation_tokens - u.cache_creation_1h_tokens,
                       cache_write_1h_tokens=u.cache_creation_1h_tokens)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    theirs = calc_price(g, key.split("/")[-1], provider_id=provider).total_price
            except (LookupError, ValueError):
                break  # genai-prices does not know the model
            compared += 1
            ours = Decimal(price.cost_micro(u)) / 1_000_000
            rel = abs(ours - theirs) / theirs if theirs else Decimal(bool(ours))
            if rel > TOLERANCE:
                disagree.append({"model": key, "shape": label, "ours_usd": float(ours),
                                 "genai_prices_usd": float(theirs), "rel": float(rel)})
    disagree.sort(key=lambda d: d["rel"], reverse=True)
    models = sorted({d["model"] for d in disagree})
    print(f"genai-prices: {compared} cases compared, {len(disagree)} differ by > 0.1% "
          f"({len(models)} models); largest:")
    for d in disagree[:top]:
        print(f"  {d['model']:60} {d['shape']:14} ours ${d['ours_usd']:.6f} "
              f"genai-prices ${d['genai_prices_usd']:.6f}")
    return {"compared": compared, "differ": len(disagree), "models_differ": len(models),
            "largest": disagree[:top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=10, help="offenders to list")
    report = run(parser.parse_args().top)
    print(json.dumps(report, default=str))
    if report["within_0_1pct"] < 1:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
