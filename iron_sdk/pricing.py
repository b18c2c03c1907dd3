"""Model prices from litellm's maintained price map, read without importing litellm.

Prices are held as integer pico-dollars per token so that costs sum exactly; a cost is
rounded *up* to whole micro-dollars, so a budget is never under-charged.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from iron_sdk.call import Usage

PICO_PER_MICRO = 1_000_000
_PRICE_FILE = "model_prices_and_context_window_backup.json"


def _pico(per_token_usd: float | None) -> int | None:
    return None if per_token_usd is None else round(per_token_usd * 1e12)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Per-token prices in pico-dollars (1e-12 USD)."""

    input: int
    output: int
    cache_read: int | None = None
    cache_write: int | None = None
    reasoning: int | None = None
    max_output_tokens: int | None = None
    provider: str = ""

    @classmethod
    def per_mtok(cls, input_usd: float, output_usd: float, *, cached_input_usd: float | None = None,
                 max_output_tokens: int | None = None, provider: str = "") -> ModelPrice:
        """Build a price from USD per million tokens (how price lists are written)."""
        per = 1e-6
        return cls(input=_pico(input_usd * per) or 0, output=_pico(output_usd * per) or 0,
                   cache_read=_pico(None if cached_input_usd is None else cached_input_usd * per),
                   max_output_tokens=max_output_tokens, provider=provider)

    def cost_micro(self, usage: Usage) -> int:
        """Exact cost of ``usage``: cached and cache-write input at their own prices,
        reasoning tokens at theirs where the price data has one."""
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        written = min(usage.cache_creation_tokens, usage.input_tokens - cached)
        plain_in = usage.input_tokens - cached - written
        reasoning = min(usage.reasoning_tokens, usage.output_tokens) if self.reasoning else 0
        pico = (plain_in * self.input
                + cached * (self.input if self.cache_read is None else self.cache_read)
                + written * (self.input if self.cache_write is None else self.cache_write)
                + (usage.output_tokens - reasoning) * self.output
                + reasoning * (self.reasoning or 0))
        return -(-pico // PICO_PER_MICRO)

    def estimate_micro(self, input_tokens: int, output_tokens: int) -> int:
        """Upper bound used for the reservation (input at full price, all output)."""
        return -(-(input_tokens * self.input + output_tokens * self.output) // PICO_PER_MICRO)


def _from_entry(entry: dict[str, Any]) -> ModelPrice | None:
    if "input_cost_per_token" not in entry:
        return None  # priced per image/second/query: not a token model
    return ModelPrice(
        input=_pico(entry["input_cost_per_token"]) or 0,
        output=_pico(entry.get("output_cost_per_token", 0.0)) or 0,
        cache_read=_pico(entry.get("cache_read_input_token_cost")),
        cache_write=_pico(entry.get("cache_creation_input_token_cost")),
        reasoning=_pico(entry.get("output_cost_per_reasoning_token")),
        max_output_tokens=entry.get("max_output_tokens") or entry.get("max_tokens"),
        provider=entry.get("litellm_provider", ""),
    )


def litellm_dir() -> Path | None:
    """Where the litellm package lives, found without importing it (≈ 5 s)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


class PriceDatabase:
    """Lazy view of litellm's bundled price map (loaded on first lookup, ≈ 40 ms)."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._data: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Any]:
        with self._lock:
            if self._data is None:
                path = self._path
                if path is None:
                    root = litellm_dir()
                    path = root / _PRICE_FILE if root else None
                self._data = json.loads(path.read_text()) if path and path.exists() else {}
        return self._data

    def lookup(self, model: str) -> ModelPrice | None:
        data = self._data if self._data is not None else self._load()
        for key in _candidates(model):
            entry = data.get(key)
            if entry:
                price = _from_entry(entry)
                if price:
                    return price
        return None


def _candidates(model: str) -> list[str]:
    """Keys to try: as given, without a ``provider/`` prefix, fine-tune base model."""
    keys = [model]
    if "/" in model:
        keys.append(model.split("/", 1)[1])
    if model.startswith("ft:"):
        keys.append(model[3:].split(":", 1)[0])
    return keys


@cache
def default_database() -> PriceDatabase:
    return PriceDatabase()
