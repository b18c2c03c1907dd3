"""Prices: configured ones first, then the bundled price database."""

from __future__ import annotations

from collections.abc import Mapping

from iron_sdk.config import ModelPriceConfig
from iron_sdk.hookspecs import hookimpl
from iron_sdk.pricing import ModelPrice, default_database


class ConfiguredPrices:
    """Prices from ``RuntimeConfig.prices`` (or the router config's ``prices:``)."""

    def __init__(self, prices: Mapping[str, ModelPriceConfig]) -> None:
        self.prices = {
            model: ModelPrice.per_mtok(p.input_per_mtok, p.output_per_mtok,
                                       cached_input_usd=p.cached_input_per_mtok,
                                       max_output_tokens=p.max_output_tokens)
            for model, p in prices.items()
        }

    @hookimpl(tryfirst=True)
    def iron_model_price(self, model: str) -> ModelPrice | None:
        return self.prices.get(model)


class PriceDatabasePlugin:
    """litellm's maintained price map, the last word."""

    @hookimpl(trylast=True)
    def iron_model_price(self, model: str) -> ModelPrice | None:
        return default_database().lookup(model)
