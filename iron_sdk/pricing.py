"""Model prices from litellm's maintained price map, read without importing litellm.

Prices are held as integer pico-dollars per token (per image, per second) so that costs
sum exactly; a cost is rounded *up* to whole micro-dollars, so a budget is never
under-charged. A model may carry long-context tiers: above a number of input tokens the
*whole* call is billed at the tier's prices (how Anthropic, Google and OpenAI bill).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

from iron_sdk.call import Usage

PICO_PER_MICRO = 1_000_000
_PRICE_FILE = "model_prices_and_context_window_backup.json"

# ModelPrice field → the price map's key (USD per token, per image, per second).
RATE_KEYS: Mapping[str, str] = {
    "input": "input_cost_per_token",
    "output": "output_cost_per_token",
    "cache_read": "cache_read_input_token_cost",
    "cache_write": "cache_creation_input_token_cost",
    "reasoning": "output_cost_per_reasoning_token",
    "cache_write_1h": "cache_creation_input_token_cost_above_1hr",
    "audio_input": "input_cost_per_audio_token",
    "cache_read_audio": "cache_read_input_audio_token_cost",
    "image_input": "input_cost_per_image_token",
    "audio_output": "output_cost_per_audio_token",
    "per_image": "input_cost_per_image",
    "per_audio_second": "input_cost_per_audio_per_second",
    "per_video_second": "input_cost_per_video_per_second",
}
_TIER_KEY = re.compile(r"^(?P<key>.+)_above_(?P<n>\d+(?:\.\d+)?)(?P<unit>[km]?)_tokens$")
_UNIT = {"": 1, "k": 1_000, "m": 1_000_000}
_KEY_FIELD = {key: name for name, key in RATE_KEYS.items()}


def _pico(per_unit_usd: Any) -> int | None:
    """USD per unit → pico-dollars; None for a missing (or non-numeric) price."""
    if not isinstance(per_unit_usd, int | float) or isinstance(per_unit_usd, bool):
        return None
    return round(per_unit_usd * 1e12)


def parse_tier_key(key: str) -> tuple[str, int] | None:
    """``'input_cost_per_token_above_200k_tokens'`` → ``('input_cost_per_token', 200000)``;
    None for a key that is not a long-context tier of a price we know."""
    match = _TIER_KEY.match(key)
    if match is None or match["key"] not in _KEY_FIELD:
        return None
    return match["key"], round(float(match["n"]) * _UNIT[match["unit"]])


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Prices in pico-dollars (1e-12 USD) per token, per image or per second.

    ``None`` means the price data has no separate price: those units are billed at the
    nearest general rate (cache reads/writes and audio/image input at ``input``,
    reasoning and audio output at ``output``, 1-hour writes at ``cache_write``).
    ``tiers`` holds ``(above_input_tokens, price)`` pairs, ascending; each tier price is
    complete (unlisted rates inherited from the base). ``source_key`` is the price-map key
    that priced the model (a fine-tune's own entry or its base model's);
    ``tier_source_key`` the entry the tiers came from when it is another one.
    """

    input: int
    output: int
    cache_read: int | None = None
    cache_write: int | None = None
    reasoning: int | None = None
    max_output_tokens: int | None = None
    provider: str = ""
    cache_write_1h: int | None = None
    audio_input: int | None = None
    cache_read_audio: int | None = None
    image_input: int | None = None
    audio_output: int | None = None
    per_image: int | None = None
    per_audio_second: int | None = None
    per_video_second: int | None = None
    tiers: tuple[tuple[int, ModelPrice], ...] = ()
    service_tiers: tuple[tuple[str, ModelPrice], ...] = ()
    max_input_tokens: int | None = None
    source_key: str = ""
    tier_source_key: str = ""

    def __post_init__(self) -> None:
        # A price that travelled as JSON (dataclasses.asdict → the runtime API) comes back
        # with its tiers as lists of [key, dict]: rebuild them.
        for name, cast in (("tiers", int), ("service_tiers", str)):
            pairs = getattr(self, name)
            if type(pairs) is not tuple or not all(
                    type(pair) is tuple and isinstance(pair[1], ModelPrice) for pair in pairs):
                object.__setattr__(self, name, tuple(
                    (cast(key), p if isinstance(p, ModelPrice) else ModelPrice(**p))
                    for key, p in pairs))

    @classmethod
    def per_mtok(cls, input_usd: float, output_usd: float, *,
                 cached_input_usd: float | None = None, cache_write_usd: float | None = None,
                 cache_write_1h_usd: float | None = None, reasoning_usd: float | None = None,
                 max_output_tokens: int | None = None, provider: str = "") -> ModelPrice:
        """Build a price from USD per million tokens (how price lists are written)."""
        def per(value: float | None) -> int | None:
            return None if value is None else _pico(value * 1e-6)

        return cls(input=per(input_usd) or 0, output=per(output_usd) or 0,
                   cache_read=per(cached_input_usd), cache_write=per(cache_write_usd),
                   cache_write_1h=per(cache_write_1h_usd), reasoning=per(reasoning_usd),
                   max_output_tokens=max_output_tokens, provider=provider)

    def for_service_tier(self, service_tier: str | None) -> ModelPrice:
        """The price under a provider service tier (OpenAI's response ``service_tier``:
        ``flex``, ``priority``; ``batch``); the standard price for ``default``/``auto``/
        unknown tiers or when the data lists no separate price."""
        if not service_tier or not self.service_tiers:
            return self
        name = service_tier.lower()
        name = "batches" if name == "batch" else name
        return next((p for tier, p in self.service_tiers if tier == name), self)

    def tier_for(self, input_tokens: int) -> ModelPrice:
        """The price the whole call is billed at, chosen by its total input tokens."""
        price = self
        for above, tier in self.tiers:
            if input_tokens > above:
                price = tier
        return price

    def cost_pico(self, usage: Usage) -> int:
        """Exact cost of ``usage`` in pico-dollars (see :meth:`cost_micro`)."""
        p = self.for_service_tier(usage.service_tier) if usage.service_tier else self
        p = p.tier_for(usage.input_tokens) if p.tiers else p
        if (usage.cache_creation_1h_tokens or usage.audio_input_tokens or usage.images
                or usage.image_input_tokens or usage.audio_output_tokens
                or usage.audio_seconds or usage.video_seconds):
            return p._cost_pico_all(usage)
        total_in, total_out = usage.input_tokens, usage.output_tokens
        cached = min(usage.cached_input_tokens, total_in)
        written = min(usage.cache_creation_tokens, total_in - cached)
        reasoning = min(usage.reasoning_tokens, total_out)
        return ((total_in - cached - written) * p.input
                + cached * (p.input if p.cache_read is None else p.cache_read)
                + written * (p.input if p.cache_write is None else p.cache_write)
                + (total_out - reasoning) * p.output
                + reasoning * (p.output if p.reasoning is None else p.reasoning))

    def _cost_pico_all(self, usage: Usage) -> int:
        """Every part of ``usage`` at its own rate (this price is the call's tier)."""
        p = self
        total_in = usage.input_tokens
        cached = min(usage.cached_input_tokens, total_in)
        cached_audio = min(usage.cached_audio_tokens, cached, usage.audio_input_tokens)
        written = min(usage.cache_creation_tokens, total_in - cached)
        written_1h = min(usage.cache_creation_1h_tokens, written)
        audio_in = min(usage.audio_input_tokens - cached_audio, total_in - cached - written)
        image_in = min(usage.image_input_tokens, total_in - cached - written - audio_in)
        plain_in = total_in - cached - written - audio_in - image_in
        reasoning = min(usage.reasoning_tokens, usage.output_tokens)
        audio_out = min(usage.audio_output_tokens, usage.output_tokens - reasoning)
        read = p.input if p.cache_read is None else p.cache_read
        write = p.input if p.cache_write is None else p.cache_write
        audio = p.input if p.audio_input is None else p.audio_input
        pico = (plain_in * p.input
                + (cached - cached_audio) * read
                + cached_audio * (audio if p.cache_read_audio is None else p.cache_read_audio)
                + (written - written_1h) * write
                + written_1h * (write if p.cache_write_1h is None else p.cache_write_1h)
                + audio_in * audio
                + image_in * (p.input if p.image_input is None else p.image_input)
                + (usage.output_tokens - reasoning - audio_out) * p.output
                + reasoning * (p.output if p.reasoning is None else p.reasoning)
                + audio_out * (p.output if p.audio_output is None else p.audio_output)
                + usage.images * (p.per_image or 0))
        seconds = (usage.audio_seconds * (p.per_audio_second or 0)
                   + usage.video_seconds * (p.per_video_second or 0))
        return pico + math.ceil(seconds)

    def cost_micro(self, usage: Usage) -> int:
        """Exact cost of ``usage`` (``Usage`` convention: breakdowns are parts of the
        totals) at the tier its input selects, rounded up to whole micro-dollars."""
        return -(-self.cost_pico(usage) // PICO_PER_MICRO)

    def estimate_micro(self, input_tokens: int, output_tokens: int, *,
                       cache_write: Literal["5m", "1h"] | None = None,
                       audio_input_tokens: int = 0, audio_output: bool = False,
                       images: int = 0, service_tier: str | None = None) -> int:
        """Upper bound for a reservation: the whole call at the tier ``input_tokens``
        selects; every input token at the dearest rate it can be billed at (plain input,
        or a cache write of the TTL the request asks for; ``audio_input_tokens`` of them at
        the audio rate if dearer); every output token at the dearest output rate
        (reasoning; audio when ``audio_output``); ``images`` at the per-image price; all
        under ``service_tier`` when the request asks for one."""
        p = self.for_service_tier(service_tier).tier_for(input_tokens)
        in_rate = max(p.input, p.cache_read or 0)  # a cache read is never dearer, in sane data
        if cache_write is not None:
            write = p.input if p.cache_write is None else p.cache_write
            in_rate = max(in_rate, write)
            if cache_write == "1h":
                in_rate = max(in_rate, write if p.cache_write_1h is None else p.cache_write_1h)
        audio = min(audio_input_tokens, input_tokens)
        audio_rate = max(in_rate, p.audio_input or 0)
        out_rate = max(p.output, p.reasoning or 0,
                       (p.audio_output or 0) if audio_output else 0)
        pico = ((input_tokens - audio) * in_rate + audio * audio_rate
                + output_tokens * out_rate + images * (p.per_image or 0))
        return -(-pico // PICO_PER_MICRO)


def price_from_entry(entry: Mapping[str, Any], *, source_key: str = "") -> ModelPrice | None:
    """A :class:`ModelPrice` from one price-map entry, long-context tiers and service
    tiers (``…_flex``, ``…_priority``, ``…_batches`` keys) included; None for an entry
    without a per-token input price (priced per image/second/query only)."""
    if "input_cost_per_token" not in entry:
        return None
    price = _standard_price(entry, source_key)
    variants = service_tier_entries(entry)
    if not variants:
        return price
    return replace(price, service_tiers=tuple(
        (name, _standard_price(variant, source_key)) for name, variant in sorted(variants.items())))


def _standard_price(entry: Mapping[str, Any], source_key: str) -> ModelPrice:
    rates = {name: _pico(entry.get(key)) for name, key in RATE_KEYS.items()}
    rates["input"] = rates["input"] or 0
    rates["output"] = rates["output"] or 0
    base = ModelPrice(
        **rates,  # type: ignore[arg-type]
        max_output_tokens=entry.get("max_output_tokens") or entry.get("max_tokens"),
        max_input_tokens=entry.get("max_input_tokens"),
        provider=entry.get("litellm_provider", ""), source_key=source_key)
    return replace(base, tiers=_tiers(entry, base))


def _is_rate_key(key: str) -> bool:
    return key in _KEY_FIELD or parse_tier_key(key) is not None


def service_tier_entries(entry: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The entry as each service tier bills it: ``{"priority": entry with every
    ``<price>_priority`` in place of ``<price>``}`` (a price the tier does not list stays
    the standard one)."""
    variants: dict[str, dict[str, Any]] = {}
    for key, value in entry.items():
        base, _, tier = key.rpartition("_")
        if base and tier.isalpha() and _is_rate_key(base) and not _is_rate_key(key):
            variants.setdefault(tier, dict(entry))[base] = value
    return variants


def tier_rates(entry: Mapping[str, Any]) -> dict[int, dict[str, float]]:
    """The entry's long-context tier prices: ``{above_tokens: {price_key: usd}}``."""
    found: dict[int, dict[str, float]] = {}
    for key, value in entry.items():
        parsed = parse_tier_key(key)
        if parsed is not None and isinstance(value, int | float):
            found.setdefault(parsed[1], {})[parsed[0]] = value
    return found


def _tiers(entry: Mapping[str, Any], base: ModelPrice) -> tuple[tuple[int, ModelPrice], ...]:
    """Tier prices, each complete: a rate a tier does not list is the one below it."""
    tiers: list[tuple[int, ModelPrice]] = []
    below = base
    for above, rates in sorted(tier_rates(entry).items()):
        below = replace(below, tiers=(), **{_KEY_FIELD[k]: _pico(v) for k, v in rates.items()})
        tiers.append((above, below))
    return tuple(tiers)


def litellm_dir() -> Path | None:
    """Where the litellm package lives, found without importing it (≈ 5 s)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def price_file() -> Path | None:
    """litellm's bundled price map, if litellm is installed."""
    root = litellm_dir()
    path = root / _PRICE_FILE if root else None
    return path if path and path.exists() else None


class PriceDatabase:
    """Lazy view of litellm's bundled price map (loaded on first lookup, ≈ 40 ms)."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._data: dict[str, Any] | None = None
        self._suffixes: dict[str, list[str]] | None = None
        self._lock = threading.Lock()

    @property
    def data(self) -> dict[str, Any]:
        """The raw price map (``{}`` when litellm is not installed)."""
        if self._data is None:
            with self._lock:
                if self._data is None:
                    path = self._path or price_file()
                    self._data = json.loads(path.read_text()) if path and path.exists() else {}
        return self._data

    def lookup(self, model: str) -> ModelPrice | None:
        """The price of ``model``: its own entry, else without a ``provider/`` prefix; a
        fine-tune (``ft:base:org::id``) by the fine-tune's entry, else its base model's."""
        data = self.data
        for key in candidates(model):
            entry = data.get(key)
            if isinstance(entry, dict):
                price = price_from_entry(entry, source_key=key)
                if price is not None:
                    return self._with_sibling_tiers(key, price)
        return None

    def _with_sibling_tiers(self, key: str, price: ModelPrice) -> ModelPrice:
        """An entry whose own data stops at its ``max_input_tokens`` (no tier) takes the
        tier prices of a ``<provider>/<key>`` entry of the same model with the same base
        input, output and cache-read prices whose tier starts at or above that limit: past
        it the entry knows no price, and the provider bills the long-context tier
        (litellm's ``claude-sonnet-4-5`` lacks the tier its ``vertex_ai/claude-sonnet-4-5``
        twin carries; Anthropic bills $6/$22.50 per M above 200k, as genai-prices says).
        A price the tier does not list stays the entry's own."""
        if price.tiers or not price.max_input_tokens:
            return price
        for sibling in self._siblings(key):
            entry = self.data[sibling]
            other = price_from_entry(entry)
            if (other is not None and other.tiers and other.input == price.input
                    and other.output == price.output and other.cache_read == price.cache_read
                    and other.tiers[0][0] >= price.max_input_tokens):
                price = replace(price, tier_source_key=sibling)
                return replace(price, tiers=_tiers(entry, price))
        return price

    def _siblings(self, key: str) -> list[str]:
        if self._suffixes is None:
            index: dict[str, list[str]] = {}
            for name in self.data:
                parts = name.split("/")
                for i in range(1, len(parts)):
                    index.setdefault("/".join(parts[i:]), []).append(name)
            self._suffixes = {k: sorted(v) for k, v in index.items()}
        return self._suffixes.get(key, [])


def candidates(model: str) -> list[str]:
    """Keys to try, in order: as given, without a ``provider/`` prefix; for a fine-tune
    ``ft:<base>:<org>::<id>`` the fine-tune entry ``ft:<base>`` then ``<base>``."""
    names = [model]
    if "/" in model:
        names.append(model.split("/", 1)[1])
    keys: list[str] = []
    for name in names:
        keys.append(name)
        if name.startswith("ft:"):
            base = name[3:].split(":", 1)[0]
            keys += [f"ft:{base}", base]
    return list(dict.fromkeys(keys))


@cache
def default_database() -> PriceDatabase:
    return PriceDatabase()

