"""The effective policy of one agent: the strictest of every layer that applies.

Layers, in display order: ``global``, the agent's teams, ``agent:NAME``, ``config`` (the
runtime's defaults) and ``request`` (what the agent's code or request asks). No layer can
loosen another: allowlists intersect (a name must match every allowlist), denylists
unite, numbers take the minimum, the PII floor takes the strictest action, and one
``disabled`` disables. Every value remembers the layer it came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import cached_property
from typing import Any

from iron_sdk.config import PII_STRICTNESS
from iron_sdk.policy.model import Policy

CONFIG = "config"
AGENT_CODE = "agent code"  # what the session asked for itself (@protect_agent(policy=...))


@dataclass(frozen=True, slots=True)
class Sourced:
    """A value and the layer it came from."""

    value: Any
    source: str


@dataclass(frozen=True)
class EffectivePolicy:
    allow_models: tuple[Sourced, ...] = ()  # each value: a tuple of patterns
    deny_models: tuple[Sourced, ...] = ()  # each value: one pattern
    pii: Sourced | None = None
    rpm: Sourced | None = None
    tpm: Sourced | None = None
    max_tokens: Sourced | None = None
    allow_tools: tuple[Sourced, ...] = ()
    deny_tools: tuple[Sourced, ...] = ()
    disabled: Sourced | None = None  # value True; source: the first layer that disabled
    _memo: dict[tuple[str, str], str | None] = field(default_factory=dict, compare=False,
                                                     repr=False)

    @cached_property
    def restricts_calls(self) -> bool:
        """Whether model calls have anything to check (else the hot path returns early)."""
        return bool(self.allow_models or self.deny_models or self.pii or self.rpm
                    or self.tpm or self.max_tokens or self.disabled)

    def model_refusal(self, model: str) -> str | None:
        """None if ``model`` is allowed, else the layer whose list refuses it."""
        return self._refusal("model", model, self.allow_models, self.deny_models)

    def tool_refusal(self, tool: str) -> str | None:
        return self._refusal("tool", tool, self.allow_tools, self.deny_tools)

    def _refusal(self, kind: str, name: str, allow: tuple[Sourced, ...],
                 deny: tuple[Sourced, ...]) -> str | None:
        key = (kind, name)
        if key in self._memo:
            return self._memo[key]
        reason = next((d.source for d in deny if fnmatchcase(name, d.value)), None)
        if reason is None:
            reason = next((a.source for a in allow
                           if not any(fnmatchcase(name, p) for p in a.value)), None)
        if len(self._memo) < 1024:
            self._memo[key] = reason
        return reason

    def to_json(self) -> dict[str, Any]:
        """``{field: {"value": ..., "source": ...}}``; lists name the source per entry."""
        def one(s: Sourced | None) -> dict[str, Any] | None:
            return None if s is None else {"value": s.value, "source": s.source}

        def many(items: tuple[Sourced, ...]) -> list[dict[str, Any]]:
            return [{"value": list(s.value) if isinstance(s.value, tuple) else s.value,
                     "source": s.source} for s in items]

        return {"models": many(self.allow_models), "deny_models": many(self.deny_models),
                "pii": one(self.pii), "rpm": one(self.rpm), "tpm": one(self.tpm),
                "max_tokens": one(self.max_tokens), "tools": many(self.allow_tools),
                "deny_tools": many(self.deny_tools), "disabled": one(self.disabled)}


def _layers(scopes: Mapping[str, Policy], defaults: Policy | None,
            requested: Policy | None) -> Iterable[tuple[str, Policy]]:
    order = sorted(scopes, key=lambda s: (s != "global", not s.startswith("team:"), s))
    yield from ((s, scopes[s]) for s in order)
    if defaults is not None:
        yield CONFIG, defaults
    if requested is not None:
        yield AGENT_CODE, requested


def effective(scopes: Mapping[str, Policy], defaults: Policy | None = None,
              requested: Policy | None = None) -> EffectivePolicy:
    """Combine the stored records of ``scopes`` (scope → Policy), the runtime's
    ``defaults`` and the ``requested`` policy into the strictest one."""
    allow_models: list[Sourced] = []
    deny_models: dict[str, Sourced] = {}
    allow_tools: list[Sourced] = []
    deny_tools: dict[str, Sourced] = {}
    best: dict[str, Sourced] = {}
    for source, policy in _layers(scopes, defaults, requested):
        if policy.models is not None:
            allow_models.append(Sourced(policy.models, source))
        if policy.tools is not None:
            allow_tools.append(Sourced(policy.tools, source))
        for pattern in policy.deny_models or ():
            deny_models.setdefault(pattern, Sourced(pattern, source))
        for pattern in policy.deny_tools or ():
            deny_tools.setdefault(pattern, Sourced(pattern, source))
        for name in ("rpm", "tpm", "max_tokens"):
            value = getattr(policy, name)
            if value is not None and (name not in best or value < best[name].value):
                best[name] = Sourced(value, source)
        if policy.pii is not None and ("pii" not in best or PII_STRICTNESS[policy.pii]
                                       > PII_STRICTNESS[best["pii"].value]):
            best["pii"] = Sourced(policy.pii, source)
        if policy.disabled and "disabled" not in best:
            best["disabled"] = Sourced(True, source)
    return EffectivePolicy(
        allow_models=tuple(allow_models), deny_models=tuple(deny_models.values()),
        allow_tools=tuple(allow_tools), deny_tools=tuple(deny_tools.values()), **best)
