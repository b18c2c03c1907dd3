"""Configuration models (pydantic): per-agent policies and the runtime's own settings."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator

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
    lease_s: PositiveFloat = 900.0
    # What to do when the ledger itself fails (disk full, locked): proceed or refuse.
    on_ledger_error: Literal["open", "closed"] = "open"
    thresholds: tuple[float, ...] = (0.5, 0.8, 1.0)


class CustomPattern(_Config):
    """An operator's own detector: a regular expression, the kind it reports and an optional
    check-digit validator (``luhn``, ``iban``) the match (or its group named ``value``) must
    pass; ``luhn`` reads only the digits.

    It runs on the normalized text like the built-ins (digits, ``@`` and separators
    undisguised), and its findings are redacted as ``[KIND_REDACTED]``. ``secret: true``
    gives it the ``secrets`` action instead of the ``pii`` one.
    """

    kind: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    regex: str = Field(min_length=1)
    validator: Literal["luhn", "iban"] | None = None
    ignore_case: bool = False
    secret: bool = False

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _check_regex(value)


def _check_regex(value: str) -> str:
    """A regex that compiles and cannot match the empty string, else a clear ValueError."""
    try:
        rx = re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression ({exc})") from None
    if rx.fullmatch("") is not None:
        raise ValueError("the regular expression matches the empty string")
    return value


class SafetyConfig(_Config):
    """What to do with PII and secrets found in a prompt.

    ``redact`` replaces them with placeholders such as ``[EMAIL_REDACTED]`` before the
    prompt leaves; ``block`` refuses the call; ``log`` only records the finding kinds.
    ``secrets`` overrides the action for keys, private keys and JWTs.

    ``patterns`` adds custom detectors; ``allow`` (exact values, compared case-insensitively)
    and ``allow_patterns`` (regexes the whole value must match) are never reported, e.g. the
    company's support address. Allow-lists loosen the policy: they belong to the operator.
    ``ner`` turns on the name/address/date-of-birth plugin (``iron-sdk[ner]``) if installed.
    ``response`` is the action for what a model's answer contains (plain or streamed, see
    :class:`iron_sdk.safety.stream.StreamRedactor`), every kind alike.
    """

    pii: PiiAction = "redact"
    secrets: PiiAction | None = None
    kinds: frozenset[str] | None = None  # None: every built-in detector
    patterns: tuple[CustomPattern, ...] = ()
    allow: frozenset[str] = frozenset()
    allow_patterns: tuple[str, ...] = ()
    ner: bool = False
    response: PiiAction = "log"

    @field_validator("allow_patterns")
    @classmethod
    def _allow_compiles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, rx in enumerate(value):
            try:
                _check_regex(rx)
            except ValueError as exc:
                raise ValueError(f"allow_patterns[{i}]: {exc}") from None
        return value

    def action_for(self, kind: str) -> PiiAction:
        if self.secrets is not None and (kind in SECRET_KINDS or kind in self._secret_kinds):
            return self.secrets
        return self.pii

    @property
    def _secret_kinds(self) -> frozenset[str]:
        return frozenset(p.kind for p in self.patterns if p.secret)


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
