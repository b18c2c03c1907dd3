"""Configuration models (pydantic): per-agent policies and the runtime's own settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

PiiAction = Literal["redact", "block", "log", "off"]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class BudgetConfig(_Config):
    """Budget policy for a protected agent.

    ``session_usd`` caps one invocation of the protected function; the agent's own
    budget (and any ``scopes`` such as ``"team:search"``) lives in the ledger and is set
    with ``iron-runtime budget set``.
    """

    session_usd: PositiveFloat | None = None
    scopes: tuple[str, ...] = ()
    # Output tokens reserved when the call sets no max_tokens (default: model's maximum).
    default_max_tokens: int | None = Field(default=None, gt=0)
    # Lease of each reservation: renewed by a live process while its call runs; when its
    # process dies it runs out and the reservation is charged (marked unsettled).
    lease_s: float = Field(default=30.0, gt=0, le=7 * 86400, allow_inf_nan=False)
    # What to do when the ledger itself fails (disk full, locked): proceed or refuse.
    on_ledger_error: Literal["open", "closed"] = "open"
    thresholds: tuple[float, ...] = (0.5, 0.8, 1.0)


class SafetyConfig(_Config):
    """What to do with PII and secrets found in a prompt.

    ``redact`` replaces them with placeholders such as ``[EMAIL_REDACTED]`` before the
    prompt leaves; ``block`` refuses the call; ``log`` only records the finding kinds.
    ``secrets`` overrides the action for keys, private keys and JWTs.
    """

    pii: PiiAction = "redact"
    secrets: PiiAction | None = None
    kinds: frozenset[str] | None = None  # None: every built-in detector

    def action_for(self, kind: str) -> PiiAction:
        if self.secrets is not None and kind in SECRET_KINDS:
            return self.secrets
        return self.pii


SECRET_KINDS = frozenset({"api_key", "private_key", "jwt"})


class ReliabilityConfig(_Config):
    """Rate limit per agent and circuit breaker per model."""

    requests_per_minute: PositiveFloat | None = None
    circuit_failures: int = Field(default=5, gt=0)  # consecutive failures that open it
    circuit_reset_s: PositiveFloat = 30.0


class ModelPriceConfig(_Config):
    """A configured price, in USD per million tokens."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    max_output_tokens: int | None = Field(default=None, gt=0)


def default_home() -> Path:
    return Path(os.environ.get("IRON_HOME") or Path.home() / ".iron")


class RuntimeConfig(_Config):
    """Settings of one runtime (library or router). Defaults come from the environment:
    ``IRON_HOME`` (default ``~/.iron``) and ``IRON_LEDGER`` (``memory``, a path or
    ``sqlite:///...``; default ``$IRON_HOME/ledger.db``)."""

    home: Path = Field(default_factory=default_home)
    ledger: str | None = None
    audit: bool = True
    # Settlements are written by a background thread (see iron_sdk.ledger.writer).
    write_behind: bool = True
    prices: dict[str, ModelPriceConfig] = Field(default_factory=dict)
    budget: BudgetConfig = BudgetConfig()
    safety: SafetyConfig = SafetyConfig()
    reliability: ReliabilityConfig = ReliabilityConfig()
    load_entry_points: bool = True

    def ledger_url(self) -> str:
        return self.ledger or os.environ.get("IRON_LEDGER") or str(self.home / "ledger.db")
