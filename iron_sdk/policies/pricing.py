"""Prices: configured ones first, then the bundled price database."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from iron_sdk.config import ModelPriceConfig
from iron_sdk.hookspecs import hookimpl
from iron_sdk.pricing import ModelPrice, default_database


def _price(p: ModelPriceConfig) -> ModelPrice:
    return ModelPrice.per_mtok(p.input_per_mtok, p.output_per_mtok,
                               cached_input_usd=p.cached_input_per_mtok,
                               cache_write_usd=p.cache_write_per_mtok,
                               cache_write_1h_usd=p.cache_write_1h_per_mtok,
                               reasoning_usd=p.reasoning_per_mtok,
                               max_output_tokens=p.max_output_tokens)


class ConfiguredPrices:
    """Prices from ``RuntimeConfig.prices`` (or the router config's ``prices:``)."""

    def __init__(self, prices: Mapping[str, ModelPriceConfig]) -> None:
        self.prices = {model: replace(_price(p), source_key=f"config:{model}")
                       for model, p in prices.items()}

    @hookimpl(tryfirst=True)
    def iron_model_price(self, model: str) -> ModelPrice | None:
        return self.prices.get(model)


class PriceDatabasePlugin:
    """litellm's maintained price map, the last word."""

    @hookimpl(trylast=True)
    def iron_model_price(self, model: str) -> ModelPrice | None:
        return default_database().lookup(model)
