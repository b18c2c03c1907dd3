"""What flows through the hook pipeline: one model call, one tool call, their usage."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from iron_sdk.errors import usd

if TYPE_CHECKING:
    from iron_sdk.request import LlmRequest
    from iron_sdk.session import Session


_ids: list[str] = []  # unused ids, drawn 256 at a time from the OS's CSPRNG
_IDS_PER_DRAW = 256


def _drop_ids() -> None:  # a forked child must not repeat its parent's ids
    _ids.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_ids)


def new_id() -> str:
    """A millisecond timestamp (12 hex digits) then 128 unguessable bits (32 hex digits):
    session, call, tool and event ids. The random part comes from ``os.urandom``, so an
    id alone never lets another client act on what it names; it is drawn 256 ids at a
    time (one system call per 256; ``list.pop`` is atomic, so threads never share one).
    The timestamp keeps ids in creation order, so the ledger's tables keyed by call id
    (reservations, finished calls) grow at one end: a batch of settlements writes a few
    pages instead of one page per call."""
    try:
        rand = _ids.pop()
    except IndexError:
        raw = os.urandom(16 * _IDS_PER_DRAW).hex()
        fresh = [raw[i:i + 32] for i in range(0, len(raw), 32)]
        _ids.extend(fresh[1:])
        rand = fresh[0]
    return f"{time.time_ns() // 1_000_000:012x}{rand}"


@dataclass(slots=True)
class Usage:
    """Token counts of one call in ONE convention, whatever the provider reported.

    ``input_tokens`` is every input token billed: plain text, cache reads, cache writes,
    audio and image tokens (OpenAI's ``prompt_tokens``; Anthropic's ``input_tokens +
    cache_read_input_tokens + cache_creation_input_tokens``). The long-context price tier
    is chosen by this number. The other input counts are *parts* of it, never added to it;
    ``output_tokens`` likewise includes reasoning and audio output. Build one from a
    provider's object with ``iron_sdk.usage.usage_from_openai`` / ``usage_from_anthropic``.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0  # part of input_tokens, billed at the cache-read price
    cache_creation_tokens: int = 0  # part of input_tokens: every cache write (5 min and 1 h)
    reasoning_tokens: int = 0  # part of output_tokens
    counted: bool = False  # True when estimated by us rather than reported
    cache_creation_1h_tokens: int = 0  # part of cache_creation_tokens written with a 1 h TTL
    audio_input_tokens: int = 0  # part of input_tokens (cached audio included)
    cached_audio_tokens: int = 0  # part of cached_input_tokens and of audio_input_tokens
    image_input_tokens: int = 0  # part of input_tokens, where images have a token price
    audio_output_tokens: int = 0  # part of output_tokens
    images: int = 0  # input images, for models priced per image (multimodal embeddings)
    audio_seconds: float = 0.0  # input audio length, for models priced per second
    video_seconds: float = 0.0  # input video length, for models priced per second
    service_tier: str = ""  # the provider's billing tier ("flex", "priority"); "" standard


@dataclass(slots=True, eq=False)
class LlmCall:
    """One model request, as every door builds it: the request (read by
    :mod:`iron_sdk.request`) and what the pipeline decided and charged for it."""

    session: Session
    model: str  # the model priced and governed (a router deployment's, not the alias)
    request: LlmRequest
    source: str = "sdk"  # which door/plugin built it: openai, langchain, router, ...
    provider: str = ""
    # False: the integration cannot rewrite the prompt (a LangChain callback), so what
    # would be redacted blocks the call; ``redact_hint`` then says how to get redaction.
    can_redact: bool = True
    redact_hint: str | None = None
    # Door 2: usage and failures are reported by the agent's own process, so its failure
    # reports count against that agent's view of the model only.
    remote: bool = False
    output_capped: int | None = None  # the output limit the budget wrote into the request
    call_id: str = field(default_factory=new_id)
    started: float = field(default_factory=time.perf_counter)
    input_tokens_est: int = 0
    max_output_tokens: int = 0  # what the reservation assumed
    reserved_micro: int = 0
    reserved_scopes: tuple[str, ...] = ()
    ledger_reserved: bool = False
    findings: list[str] = field(default_factory=list)  # kinds only, never values
    redacted: bool = False
    usage: Usage | None = None
    cost_micro: int = 0
    outcome: str = "pending"  # pending | completed | failed | blocked
    metadata: dict[str, Any] = field(default_factory=dict)  # scratch space for plugins

    @property
    def agent_id(self) -> str:
        return self.session.agent_id

    @property
    def kind(self) -> str:
        return self.request.kind

    @property
    def stream(self) -> bool:
        return self.request.stream

    @property
    def max_tokens(self) -> int | None:
        """The caller's output limit per choice (None: unset)."""
        return self.request.max_tokens

    @property
    def messages(self) -> list[Any]:
        """The chat messages to send (redacted where the safety policy redacts)."""
        return self.request.messages

    @property
    def cost_usd(self) -> float:
        return usd(self.cost_micro)

    @property
    def latency_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


@dataclass(slots=True, eq=False)
class ToolCall:
    """One agent tool invocation (audited; may be refused by a plugin)."""

    session: Session
    name: str
    arguments: Any = None
    source: str = "sdk"
    call_id: str = field(default_factory=new_id)
    started: float = field(default_factory=time.perf_counter)
    error: BaseException | None = None


def field_of(obj: Any, name: str) -> Any:
    """``obj[name]`` for a dict, else the attribute, None when missing.

    Pydantic models (openai's and litellm's) are read from ``__dict__``: a miss through
    ``getattr`` goes through pydantic's ``__getattr__``, which costs tens of µs to raise.
    """
    if isinstance(obj, dict):
        return obj.get(name)
    fields = getattr(obj, "__dict__", None)
    if fields is not None and name in fields:
        return fields[name]
    if hasattr(type(obj), "__pydantic_fields__"):
        extra = getattr(obj, "__pydantic_extra__", None)
        return extra.get(name) if extra else None
    return getattr(obj, name, None)


def __getattr__(name: str) -> Any:
    """``usage_from_openai`` lives in :mod:`iron_sdk.usage`; re-exported lazily (it imports us)."""
    if name == "usage_from_openai":
        from iron_sdk.usage import usage_from_openai

        return usage_from_openai
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
