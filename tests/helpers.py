"""Independent arithmetic for assertions: prices read straight from the price file."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from functools import cache
from typing import Any

from iron_sdk.pricing import litellm_dir


@cache
def price_entry(model: str) -> dict[str, Any]:
    root = litellm_dir()
    assert root is not None, "litellm must be installed (its price file is the database)"
    data = json.loads((root / "model_prices_and_context_window_backup.json").read_text())
    return data[model]


def expected_micro(model: str, usage: dict[str, Any]) -> int:
    """Cost in micro-dollars, rounded up, of an OpenAI-format usage dict."""
    entry = price_entry(model)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    inp = Decimal(repr(entry["input_cost_per_token"]))
    cache_price = Decimal(repr(entry.get("cache_read_input_token_cost",
                                         entry["input_cost_per_token"])))
    out = Decimal(repr(entry["output_cost_per_token"]))
    usd = ((usage["prompt_tokens"] - cached) * inp + cached * cache_price
           + usage.get("completion_tokens", 0) * out)
    return math.ceil(usd * 1_000_000)
