"""Configuration models (pydantic): per-agent policies and the runtime's own settings."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator

from iron_sdk.errors import PolicyViolationError

PiiAction = Literal["redact", "block", "log", "off"]
# From the weakest to the strictest PII/secret action.
PII_ORDER: tuple[PiiAction, ...] = ("off", "log", "redact", "block")
PII_STRICTNESS: dict[str, int] = {action: i for i, action in enumerate(PII_ORDER)}


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


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
    # A call without an output limit that the budget cannot cover at the model's maximum:
    # "fit" sends it with the limit the budget affords, "model_max" refuses it.
    reserve: Literal["fit", "model_max"] = "fit"

    def tightened(self, asked: BudgetConfig | None) -> BudgetConfig:
        """This (the operator's) config as the agent may narrow it: a lower session cap,
        ``on_ledger_error="closed"``, its own thresholds. Scopes and a looser ledger rule
        are refused (:class:`PolicyViolationError`); a lease, or a default output limit
        below the operator's, is the operator's to set and ignored."""
        if asked is None:
            return self
        given = asked.model_fields_set
        update: dict[str, object] = {}
        if "session_usd" in given:
            update["session_usd"] = _min(self.session_usd, asked.session_usd)
        if "scopes" in given and not set(asked.scopes) <= set(self.scopes):
            raise PolicyViolationError("budget.scopes", "budget scopes come only from the "
                                       "IC token and the operator's config")
        if "on_ledger_error" in given and asked.on_ledger_error != self.on_ledger_error:
            if asked.on_ledger_error == "open":
                raise PolicyViolationError("budget.on_ledger_error", "the operator's "
                                           "ledger rule is 'closed'")
            update["on_ledger_error"] = "closed"
        if "thresholds" in given:
            update["thresholds"] = asked.thresholds
        if "reserve" in given and asked.reserve != self.reserve:
            if asked.reserve == "fit":
                raise PolicyViolationError("budget.reserve", "the operator refuses calls "
                                           "the budget cannot cover at the model's maximum")
            update["reserve"] = "model_max"
        if ("default_max_tokens" in given and asked.default_max_tokens is not None
                and self.default_max_tokens is not None
                and asked.default_max_tokens > self.default_max_tokens):
            update["default_max_tokens"] = asked.default_max_tokens  # reserves more
        return self.model_copy(update=update) if update else self


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

    def tightened(self, asked: SafetyConfig | None) -> SafetyConfig:
        """This (the operator's) config as the agent may narrow it: stricter actions
        only, and never fewer detectors (:class:`PolicyViolationError` otherwise)."""
        if asked is None:
            return self
        given = asked.model_fields_set
        update: dict[str, object] = {}
        if "pii" in given:
            if PII_STRICTNESS[asked.pii] < PII_STRICTNESS[self.pii]:
                raise PolicyViolationError("safety.pii", f"the operator's PII action is "
                                           f"'{self.pii}'; '{asked.pii}' is looser")
            update["pii"] = asked.pii
        if "secrets" in given and asked.secrets is not None:
            floor = self.secrets or self.pii
            if PII_STRICTNESS[asked.secrets] < PII_STRICTNESS[floor]:
                raise PolicyViolationError("safety.secrets", f"the operator's secrets "
                                           f"action is '{floor}'; '{asked.secrets}' is looser")
            update["secrets"] = asked.secrets
        elif "pii" in given and self.secrets is not None and \
                PII_STRICTNESS[asked.pii] > PII_STRICTNESS[self.secrets]:
            update["secrets"] = None  # the stricter PII action covers secrets too
        if "kinds" in given and asked.kinds is not None and (
                self.kinds is None or not self.kinds <= asked.kinds):
            raise PolicyViolationError("safety.kinds", "the agent may not turn detectors "
                                       "off")
        for name in ("allow", "allow_patterns"):
            if name in given and getattr(asked, name):
                raise PolicyViolationError(f"safety.{name}", "allow-lists belong to the "
                                           "operator")
        if "patterns" in given and asked.patterns:
            update["patterns"] = (*self.patterns, *asked.patterns)  # more detectors
        if "ner" in given and asked.ner:
            update["ner"] = True
        if "response" in given:
            if PII_STRICTNESS[asked.response] < PII_STRICTNESS[self.response]:
                raise PolicyViolationError("safety.response", f"the operator's response "
                                           f"action is '{self.response}'")
            update["response"] = asked.response
        return self.model_copy(update=update) if update else self

    @property
    def _secret_kinds(self) -> frozenset[str]:
        return frozenset(p.kind for p in self.patterns if p.secret)


SECRET_KINDS = frozenset({"api_key", "private_key", "jwt"})


class ReliabilityConfig(_Config):
    """Rate limit per agent and circuit breaker per model."""

    requests_per_minute: PositiveFloat | None = None
    circuit_failures: int = Field(default=5, gt=0)  # consecutive failures that open it
    circuit_reset_s: PositiveFloat = 30.0

    def tightened(self, asked: ReliabilityConfig | None) -> ReliabilityConfig:
        """This (the operator's) config as the agent may narrow it: a lower rate, a
        breaker that opens sooner and stays open longer; looser values are ignored."""
        if asked is None:
            return self
        given = asked.model_fields_set
        update: dict[str, object] = {}
        if "requests_per_minute" in given:
            update["requests_per_minute"] = _min(self.requests_per_minute,
                                                 asked.requests_per_minute)
        if "circuit_failures" in given:
            update["circuit_failures"] = min(self.circuit_failures, asked.circuit_failures)
        if "circuit_reset_s" in given:
            update["circuit_reset_s"] = max(self.circuit_reset_s, asked.circuit_reset_s)
        return self.model_copy(update=update) if update else self


class ModelPriceConfig(_Config):
    """A configured price, in USD per million tokens."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    cache_write_per_mtok: float | None = Field(default=None, ge=0)  # 5-minute cache writes
    cache_write_1h_per_mtok: float | None = Field(default=None, ge=0)  # 1-hour cache writes
    reasoning_per_mtok: float | None = Field(default=None, ge=0)  # unset: the output price
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
    # Calls through an instrumented client outside any protected function: governed as
    # this agent (default: $IRON_AGENT, else "unattributed"), or refused.
    default_agent: str | None = None
    outside_session: Literal["govern", "refuse"] = "govern"

    def default_agent_id(self) -> str:
        return self.default_agent or os.environ.get("IRON_AGENT") or "unattributed"

    def ensure_home(self) -> Path:
        """Create ``home`` 0700 if it does not exist yet (:func:`iron_sdk.home.ensure_home`);
        call it before anything writes into the home."""
        from iron_sdk.home import ensure_home

        return ensure_home(self.home)

    def ledger_url(self) -> str:
        return self.ledger or os.environ.get("IRON_LEDGER") or str(self.home / "ledger.db")
