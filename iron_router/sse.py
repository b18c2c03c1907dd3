"""Server-sent events through the router: the upstream's SSE bytes (or litellm's chunk
objects) relayed to the client, each event metered and scanned on the way (:class:`Meter`
reads and scans the chunk; this module only frames bytes). An event is passed on as the
very bytes that came, unless it carried only the usage the client did not ask for
(dropped), a usage the client did not ask to see beside its choices (removed), or text
the response policy redacts or holds back (re-encoded; held text comes out before the
stream's end). A response policy that blocks ends the stream with an error event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from iron_sdk.errors import SafetyViolationError

if TYPE_CHECKING:
    from iron_router.upstream import UpstreamResponse
    from iron_sdk.meter import Meter


def _encode(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode()


def _event(event: bytes, meter: Meter) -> bytes | None:
    """Meter one SSE event; return it, a re-encoded copy, or None to drop it."""
    start = event.find(b"data:")
    if start < 0:
        return event
    payload = event[start + 5:].strip()
    if not payload.startswith(b"{"):
        if payload == b"[DONE]":  # what the scan still held goes out before the end
            tail = [_encode(obj) for obj in meter.end()]
            return b"\n\n".join([*tail, event]) if tail else event
        return event  # comments
    try:
        obj = json.loads(payload)
    except ValueError:
        return event
    if not isinstance(obj, dict):
        return event
    out = meter.take(obj)
    if not out:
        return None  # usage the router asked for on the client's behalf
    if meter.hide_usage and obj.get("usage"):
        del obj["usage"]
    elif len(out) == 1 and (meter.guard is None or meter.guard.action == "log"):
        return event  # nothing changed: the very bytes
    return b"\n\n".join(_encode(o) for o in out)


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


async def relay_sse(response: UpstreamResponse, meter: Meter) -> AsyncIterator[bytes]:
    """The upstream's SSE bytes, metered, forwarded per network chunk."""
    try:
        async for out in _relay_sse(response, meter):
            yield out
    except SafetyViolationError as exc:  # the answer is blocked: say so, end the stream
        yield _encode(exc.to_body()) + b"\n\n"


async def _relay_sse(response: UpstreamResponse, meter: Meter) -> AsyncIterator[bytes]:
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
    try:
        async for chunk in stream:
            obj = chunk.model_dump(exclude_none=True)
            for out in meter.take(obj):
                if meter.hide_usage:
                    out.pop("usage", None)
                yield _encode(out) + b"\n\n"
        for out in meter.end():
            yield _encode(out) + b"\n\n"
    except SafetyViolationError as exc:
        yield _encode(exc.to_body()) + b"\n\n"
        return
    yield b"data: [DONE]\n\n"
