"""Token counting for reservations and for streams that report no usage.

tiktoken would download its encodings on first use (impossible offline); the litellm
wheel ships the cl100k/o200k files under the names tiktoken caches them by, so we point
``TIKTOKEN_CACHE_DIR`` there unless the user set it. tiktoken is imported on first use.
"""

from __future__ import annotations

import base64
import os
import threading
from typing import TYPE_CHECKING, Any

from iron_sdk.pricing import litellm_dir

if TYPE_CHECKING:
    from iron_sdk.request import LlmRequest, Media

_encoders: dict[str, Any] = {}
_lock = threading.Lock()
# Per-message framing tokens in the chat format (role, separators) and reply priming.
PER_MESSAGE = 3
PER_REPLY = 3
MEDIA_TOKENS = 2_000  # an audio clip or a file referred to by id (its size is unknown)


def _encoding_name(model: str) -> str:
    m = model.rsplit("/", 1)[-1]
    legacy = ("gpt-4-", "gpt-3.5", "text-embedding", "gpt-4")
    if m.startswith(legacy) and not m.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5")):
        return "cl100k_base"
    return "o200k_base"


def _encoder(model: str) -> Any:
    name = _encoding_name(model)
    enc = _encoders.get(name)
    if enc is None:
        with _lock:
            if name not in _encoders:
                if "TIKTOKEN_CACHE_DIR" not in os.environ:
                    root = litellm_dir()
                    if root is not None:
                        os.environ["TIKTOKEN_CACHE_DIR"] = str(
                            root / "litellm_core_utils" / "tokenizers")
                import tiktoken

                _encoders[name] = tiktoken.get_encoding(name)
            enc = _encoders[name]
    return enc


# Agents resend the same system prompt and history on every call: count each text once.
_counts: dict[tuple[str, str], int] = {}
_COUNTS_MAX = 8192
_CACHEABLE = 32_768  # characters


_BIG = 1 << 20  # characters: above this, count without a list of token ids


def _count(enc: Any, text: str) -> int:
    """How many tokens ``text`` is. A multi-MB text is counted from tiktoken's token
    buffer: the list of millions of ids ``encode_ordinary`` builds would hold the GIL for
    ~80 ms (a router's event loop waits that long). Same count either way."""
    if len(text) > _BIG:
        core = getattr(enc, "_core_bpe", None)
        to_buffer = getattr(core, "encode_to_tiktoken_buffer", None)
        if to_buffer is not None:  # tiktoken's own numpy-free path (encode_to_numpy)
            return memoryview(to_buffer(text, set())).nbytes // 4
    return len(enc.encode_ordinary(text))


def count_text(model: str, text: str) -> int:
    if not text:
        return 0
    key = (_encoding_name(model), text)
    n = _counts.get(key)
    if n is not None:
        return n
    try:
        n = _count(_encoder(model), text)
    except Exception:  # no tokenizer available: a safe over-estimate (1 token ≤ 1 byte)
        n = len(text.encode())
    if len(text) <= _CACHEABLE:
        if len(_counts) >= _COUNTS_MAX:
            _counts.clear()
        _counts[key] = n
    return n


def count_request(model: str, request: LlmRequest) -> int:
    """Input tokens of any request (the reservation's estimate): every text it sends,
    tool definitions as JSON, framing per message, and a budget per image, audio clip
    and file (settlement corrects it with what the provider reports)."""
    total = PER_REPLY + request.token_inputs + PER_MESSAGE * len(request.messages)
    schema = False
    for text in request.texts:
        if text.schema:
            schema = True
        else:
            total += count_text(model, text.value)
    if schema:
        from iron_sdk.request import schema_json

        total += count_text(model, schema_json(request.tool_schemas()))
    for media in request.media:
        total += media_tokens(model, media)
    return total


def media_tokens(model: str, media: Media) -> int:
    """What an image, audio clip or file costs as input, by the provider's published
    formula where its size can be read (an image's header, a WAV's length, a PDF's
    pages), else the most one can cost."""
    from iron_sdk import estimate

    source = media.source
    if media.kind == "image":
        size = estimate.image_size_from_data_url(source) if source else None
        if size is None:
            return estimate.max_image_tokens(model, media.detail or "auto")
        return estimate.image_tokens(model, *size, media.detail or "auto")
    if not source:
        return MEDIA_TOKENS
    payload = source.split(",", 1)[1] if source.startswith("data:") else source
    if media.kind == "audio":
        return estimate.audio_tokens(model, estimate.audio_seconds(payload))
    try:
        data = base64.b64decode(payload, validate=False)
    except ValueError:
        return MEDIA_TOKENS
    return estimate.file_tokens(model, data)
