"""Provider usage objects → one :class:`~iron_sdk.call.Usage` convention, read once here.

OpenAI (and litellm, which reshapes every provider into OpenAI's form) reports
``prompt_tokens`` *including* cached tokens and cache writes; Anthropic reports
``input_tokens`` *excluding* ``cache_read_input_tokens`` and ``cache_creation_input_tokens``.
``Usage.input_tokens`` is always the total, and every breakdown count is a part of it, so
a cached token is neither counted twice nor charged at the plain input price.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from iron_sdk.call import Usage
from iron_sdk.errors import InvalidRequestError

_NONE: Mapping[str, Any] = {}


class _Attributes(Mapping[str, Any]):
    """An object without ``__dict__`` read by attribute (rare: slotted classes)."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getitem__(self, name: str) -> Any:
        return getattr(self._obj, name, None)

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0


def _view(obj: Any) -> Mapping[str, Any]:
    """All fields of a usage object at once: a dict as is; a pydantic model (openai's,
    anthropic's, litellm's) from its ``__dict__`` plus extras. One view per object, then
    plain ``.get`` (15+ ``field_of`` calls per usage cost ~5x more)."""
    if obj is None:
        return _NONE
    if isinstance(obj, dict):
        return obj
    fields_ = getattr(obj, "__dict__", None)
    if fields_ is None:
        return _Attributes(obj)
    extra = getattr(obj, "__pydantic_extra__", None)
    return {**fields_, **extra} if extra else fields_


def _int(value: Any) -> int:
    return value if type(value) is int and value > 0 else 0


def _num(value: Any) -> float:
    return float(value) if type(value) in (int, float) and value > 0 else 0.0


def _tier(value: Any) -> str:
    return value if isinstance(value, str) and value not in ("default", "auto", "standard") else ""


def usage_from_openai(usage: Any, service_tier: str | None = None) -> Usage | None:
    """Usage from an OpenAI-shaped ``usage`` object or dict.

    Chat Completions (``prompt_tokens``..., litellm's too, DeepSeek's
    ``prompt_cache_hit_tokens``) or the Responses API (``input_tokens``...). The prompt
    count already includes cached tokens and cache writes; the details are parts of it.
    ``service_tier`` is the response's (``flex``/``priority`` are billed differently).
    """
    if usage is None:
        return None
    u = _view(usage)
    input_tokens = u.get("prompt_tokens")
    if input_tokens is None:  # the Responses API's names
        details = _view(u.get("input_tokens_details"))
        out_details = _view(u.get("output_tokens_details"))
        input_tokens = u.get("input_tokens")
        output_tokens = u.get("output_tokens")
    else:
        details = _view(u.get("prompt_tokens_details"))
        out_details = _view(u.get("completion_tokens_details"))
        output_tokens = u.get("completion_tokens")
    # cache writes: OpenAI's name, litellm's Anthropic mirror, litellm's top-level field
    written = (_int(details.get("cache_write_tokens")) or _int(details.get("cache_creation_tokens"))
               or _int(u.get("cache_creation_input_tokens")))
    written_1h = 0
    if written:
        breakdown = (details.get("cache_creation_token_details")
                     or u.get("cache_creation_token_details") or u.get("cache_creation"))
        written_1h = min(written, _int(_view(breakdown).get("ephemeral_1h_input_tokens")))
    cached = (_int(details.get("cached_tokens")) or _int(u.get("prompt_cache_hit_tokens"))
              or _int(u.get("cache_read_input_tokens")))
    audio_in = _int(details.get("audio_tokens"))
    return Usage(
        input_tokens=_int(input_tokens),
        output_tokens=_int(output_tokens),
        cached_input_tokens=cached,
        cache_creation_tokens=written,
        cache_creation_1h_tokens=written_1h,
        reasoning_tokens=_int(out_details.get("reasoning_tokens")),
        audio_input_tokens=audio_in,
        cached_audio_tokens=(_int(_view(details.get("cached_tokens_details")).get("audio_tokens"))
                             if audio_in and cached else 0),
        image_input_tokens=_int(details.get("image_tokens")),
        audio_output_tokens=_int(out_details.get("audio_tokens")),
        images=_int(details.get("image_count")),
        audio_seconds=_num(details.get("audio_length_seconds")),
        video_seconds=_num(details.get("video_length_seconds")),
        service_tier=_tier(service_tier),
    )


def usage_from_anthropic(usage: Any) -> Usage | None:
    """Usage from an Anthropic Messages ``usage`` object or dict (SDK model, raw JSON, or a
    stream's ``message_start``/``message_delta`` usage merged by the caller).

    Anthropic's ``input_tokens`` excludes ``cache_read_input_tokens`` and
    ``cache_creation_input_tokens``; they are added here so ``Usage.input_tokens`` is the
    total. ``cache_creation.ephemeral_1h_input_tokens`` is the 1-hour part of the writes;
    ``service_tier`` (``standard``/``priority``/``batch``) is kept for pricing.
    """
    if usage is None:
        return None
    u = _view(usage)
    cached = _int(u.get("cache_read_input_tokens"))
    breakdown = _view(u.get("cache_creation"))
    written_1h = _int(breakdown.get("ephemeral_1h_input_tokens"))
    written = max(_int(u.get("cache_creation_input_tokens")),
                  _int(breakdown.get("ephemeral_5m_input_tokens")) + written_1h)
    return Usage(
        input_tokens=_int(u.get("input_tokens")) + cached + written,
        output_tokens=_int(u.get("output_tokens")),
        cached_input_tokens=cached,
        cache_creation_tokens=written,
        cache_creation_1h_tokens=written_1h,
        service_tier=_tier(u.get("service_tier")),
    )


# -- the wire form (runtime API: the SDK reports usage to the router) --------------------

_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Usage)}
_FIELDS: dict[str, type] = {name: type(default) for name, default in _DEFAULTS.items()}


def usage_to_dict(usage: Usage) -> dict[str, Any]:
    """``usage`` as JSON, only the fields that differ from the default (all of them
    round-trip through :func:`usage_from_dict`)."""
    out = {}
    for name, default in _DEFAULTS.items():  # not asdict(): it deep-copies, 10x the cost
        value = getattr(usage, name)
        if value != default or name in ("input_tokens", "output_tokens"):
            out[name] = value
    return out


def usage_from_dict(raw: Mapping[str, Any]) -> Usage:
    """A :class:`Usage` from its JSON form, every field checked (counts are non-negative
    integers, seconds non-negative numbers, ``counted`` a boolean, ``service_tier`` a
    string); raises :class:`~iron_sdk.errors.InvalidRequestError` naming the bad field.
    Unknown fields (a newer client's) are ignored: refusing them would lose the charge."""
    if not isinstance(raw, Mapping):
        raise InvalidRequestError("'usage' must be an object of token counts.")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        kind = _FIELDS.get(name)
        if kind is None:
            continue
        ok = ((kind is int and type(value) is int and value >= 0)
              or (kind is float and type(value) in (int, float) and value >= 0
                  and math.isfinite(value))
              or (kind is bool and type(value) is bool)
              or (kind is str and type(value) is str and len(value) <= 64))
        if not ok:
            expected = {int: "a non-negative integer", float: "a non-negative number",
                        bool: "a boolean", str: "a string of at most 64 characters"}[kind]
            raise InvalidRequestError(f"'usage.{name}' must be {expected}.")
        values[name] = float(value) if kind is float else value
    return Usage(**values)
