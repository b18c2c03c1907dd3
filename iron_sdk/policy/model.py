"""The operator's policy record: one per scope (``agent:NAME``, ``team:NAME``, ``global``).

Every field is optional: ``None`` means "this scope says nothing", so the scopes above it
(and the runtime's defaults) decide. See :mod:`iron_sdk.policy.effective` for how the
records of several scopes combine.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from iron_sdk.config import PiiAction
from iron_sdk.errors import InvalidRequestError

# Patterns and names: printable, bounded (they end up in events, tables and HTTP bodies).
_NAME = re.compile(r"^[\w.:/@*?\[\]!+-]{1,200}$")
_SCOPE_NAME = re.compile(r"^[\w.@+-]{1,128}$")
_MAX_LIST = 256
_MAX_RATE = 10**9

Patterns = Annotated[tuple[str, ...], Field(max_length=_MAX_LIST)]
Count = Annotated[int, Field(gt=0, le=_MAX_RATE)]


class Policy(BaseModel):
    """One scope's policy. ``models``/``tools`` are allowlists of glob patterns (a model
    must match one pattern of every allowlist that applies), ``deny_*`` denylists;
    ``pii`` is the weakest PII/secret action the agent may run with; ``rpm``/``tpm`` are
    requests and tokens (input + reserved output) per minute; ``max_tokens`` the most
    output tokens one call may ask for; ``disabled`` the kill switch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: Patterns | None = None
    deny_models: Patterns | None = None
    pii: PiiAction | None = None
    rpm: Count | None = None
    tpm: Count | None = None
    max_tokens: Count | None = None
    tools: Patterns | None = None
    deny_tools: Patterns | None = None
    disabled: bool | None = None

    @field_validator("models", "deny_models", "tools", "deny_tools")
    @classmethod
    def _patterns(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        for item in value:
            if not _NAME.match(item):
                raise ValueError(f"{item[:50]!r} is not a model/tool name or glob pattern "
                                 "(letters, digits and . : / @ * ? [ ] ! + - _ only)")
        return tuple(dict.fromkeys(value))

    def fields_set(self) -> dict[str, Any]:
        """The fields this record sets (``None`` ones left out)."""
        return self.model_dump(exclude_none=True)


FIELDS: tuple[str, ...] = tuple(Policy.model_fields)


def make_policy(data: dict[str, Any]) -> Policy:
    """A validated :class:`Policy`; bad input raises :class:`InvalidRequestError`."""
    for key, value in data.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequestError(f"policy field '{key}' must be a finite number")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "policy"
        raise InvalidRequestError(f"invalid policy field '{where}': {first['msg']}") from None


def as_policy(value: Policy | dict[str, Any] | None) -> Policy | None:
    """``value`` as a :class:`Policy` (a dict of its fields is validated); raises
    :class:`InvalidRequestError` for anything else."""
    if value is None or isinstance(value, Policy):
        return value
    if isinstance(value, dict):
        return make_policy(value)
    raise InvalidRequestError("'policy' must be a Policy or a dict of its fields.")


def scope_of(name: str) -> str:
    """``research-bot`` → ``agent:research-bot``; ``team:x``, ``agent:x``, ``global`` kept.

    Raises :class:`InvalidRequestError` for anything else."""
    if name == "global":
        return name
    kind, sep, rest = name.partition(":")
    if not sep:
        kind, rest = "agent", name
    if kind not in ("agent", "team") or not _SCOPE_NAME.match(rest):
        raise InvalidRequestError(
            f"{name[:80]!r} is not a policy scope: use an agent name, 'team:NAME' or "
            "'global' (names: letters, digits, . _ @ + -)")
    return f"{kind}:{rest}"
