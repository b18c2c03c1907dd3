"""Server-sent events through the router: the upstream's SSE bytes (or litellm's chunk
objects) relayed to the client, each event metered on the way (:class:`Meter` reads
the chunk; this module only frames bytes). An event is passed on as the very bytes
that came, unless it carried only the usage the client did not ask for (dropped) or a
usage the client did not ask to see beside its choices (removed)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from iron_sdk.meter import Meter


def _event(event: bytes, meter: Meter) -> bytes | None:
    """Meter one SSE event; return it, a copy without usage, or None to drop it."""
    start = event.find(b"data:")
    if start < 0:
        return event
    payload = event[start + 5:].strip()
    if not payload.startswith(b"{"):
        return event  # [DONE], comments
    try:
        obj = json.loads(payload)
    except ValueError:
        return event
    if not isinstance(obj, dict):
        return event
    if not meter.observe(obj):
        return None  # usage the router asked for on the client's behalf
    if meter.hide_usage and obj.get("usage"):
        del obj["usage"]
        return event[:start] + b"data: " + json.dumps(obj, separators=(",", ":")).encode()
    return event


def _scan(block: bytes, meter: Meter) -> bytes:
    """Meter a run of complete SSE events; pass them on unchanged unless one was hidden."""
    changed = False
    kept: list[bytes] = []
    for event in block.split(b"\n\n"):
        if not event:
            continue
        new = _event(event, meter)
        if new is not event:
            changed = True
        if new is not None:
            kept.append(new)
    if not changed:
        return block
    return b"".join(e + b"\n\n" for e in kept)


async def relay_sse(response: httpx.Response, meter: Meter) -> AsyncIterator[bytes]:
    """The upstream's SSE bytes, metered, forwarded per network chunk."""
    buf = b""
    async for chunk in response.aiter_bytes():
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        buf = buf + chunk if buf else chunk
        end = buf.rfind(b"\n\n")
        if end < 0:
            continue
        block, buf = buf[:end + 2], buf[end + 2:]
        out = _scan(block, meter)
        if out:
            yield out
    if buf.strip():
        out = _scan(buf, meter)
        if out:
            yield out


async def relay_litellm(stream: Any, meter: Meter) -> AsyncIterator[bytes]:
    """litellm's stream chunks as OpenAI SSE events, metered."""
    async for chunk in stream:
        obj = chunk.model_dump(exclude_none=True)
        if not meter.observe(obj):
            continue
        if meter.hide_usage:
            obj.pop("usage", None)
        yield b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"
