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
from dataclasses import asdict, fields
from typing import Any

from iron_sdk.call import Usage, field_of
from iron_sdk.errors import InvalidRequestError


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _num(value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return float(value) if ok else 0.0


def _get(obj: Any, *path: str) -> Any:
    for name in path:
        if obj is None:
            return None
        obj = field_of(obj, name)
    return obj


def _first(obj: Any, *paths: tuple[str, ...]) -> int:
    """The first positive count found along ``paths`` (providers spell the same count
    differently; litellm mirrors some of them)."""
    for path in paths:
        value = _int(_get(obj, *path))
        if value:
            return value
    return 0


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
    input_tokens = field_of(usage, "prompt_tokens")
    if input_tokens is None:  # the Responses API's names
        details = field_of(usage, "input_tokens_details")
        out_details = field_of(usage, "output_tokens_details")
        input_tokens = field_of(usage, "input_tokens")
        output_tokens = field_of(usage, "output_tokens")
    else:
        details = field_of(usage, "prompt_tokens_details")
        out_details = field_of(usage, "completion_tokens_details")
        output_tokens = field_of(usage, "completion_tokens")
    written = _first(usage, ("prompt_tokens_details", "cache_write_tokens"),
                     ("prompt_tokens_details", "cache_creation_tokens"),
                     ("cache_creation_input_tokens",))
    written_1h = (_first(details, ("cache_creation_token_details", "ephemeral_1h_input_tokens"))
                  or _first(usage, ("cache_creation_token_details", "ephemeral_1h_input_tokens"),
                            ("cache_creation", "ephemeral_1h_input_tokens")))
    return Usage(
        input_tokens=_int(input_tokens),
        output_tokens=_int(output_tokens),
        cached_input_tokens=(_first(details, ("cached_tokens",))
                             or _first(usage, ("prompt_cache_hit_tokens",),
                                       ("cache_read_input_tokens",))),
        cache_creation_tokens=written,
        cache_creation_1h_tokens=min(written_1h, written),
        reasoning_tokens=_first(out_details, ("reasoning_tokens",)),
        audio_input_tokens=_first(details, ("audio_tokens",)),
        cached_audio_tokens=_first(details, ("cached_tokens_details", "audio_tokens")),
        image_input_tokens=_first(details, ("image_tokens",)),
        audio_output_tokens=_first(out_details, ("audio_tokens",)),
        images=_first(details, ("image_count",)),
        audio_seconds=_num(_get(details, "audio_length_seconds")),
        video_seconds=_num(_get(details, "video_length_seconds")),
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
    cached = _int(field_of(usage, "cache_read_input_tokens"))
    written = _int(field_of(usage, "cache_creation_input_tokens"))
    breakdown = field_of(usage, "cache_creation")
    written_5m = _int(_get(breakdown, "ephemeral_5m_input_tokens"))
    written_1h = _int(_get(breakdown, "ephemeral_1h_input_tokens"))
    written = max(written, written_5m + written_1h)
    return Usage(
        input_tokens=_int(field_of(usage, "input_tokens")) + cached + written,
        output_tokens=_int(field_of(usage, "output_tokens")),
        cached_input_tokens=cached,
        cache_creation_tokens=written,
        cache_creation_1h_tokens=written_1h,
        service_tier=_tier(field_of(usage, "service_tier")),
    )


# -- the wire form (runtime API: the SDK reports usage to the router) --------------------

_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Usage)}
_FIELDS: dict[str, type] = {name: type(default) for name, default in _DEFAULTS.items()}


def usage_to_dict(usage: Usage) -> dict[str, Any]:
    """``usage`` as JSON, only the fields that differ from the default (all of them
    round-trip through :func:`usage_from_dict`)."""
    return {name: value for name, value in asdict(usage).items()
            if value != _DEFAULTS[name] or name in ("input_tokens", "output_tokens")}


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
