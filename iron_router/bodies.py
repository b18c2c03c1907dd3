"""One strict JSON reader for every router endpoint.

``body = await read_json(request, limit)`` returns the request's JSON object or raises a
typed error that :func:`iron_router.errors.error_response` turns into an OpenAI-shaped
answer:

- :class:`PayloadTooLargeError` (413 ``payload_too_large``): more than ``limit`` bytes,
  from ``Content-Length`` or counted while streaming (a missing or lying header does not
  get past it);
- :class:`InvalidBodyError` (400 ``invalid_request``): not UTF-8, not JSON, not an object,
  ``NaN``/``Infinity`` or a number that overflows to infinity (``1e309``), nesting deeper
  than ``max_depth`` (64), a lone surrogate (``"\\ud800"``) in any key or string.

Everything after it can rely on finite floats, bounded depth and strings that encode
to UTF-8. The checks cost about a microsecond on a typical chat body (see
``benchmarks/bodies.py``): the depth and surrogate walks run only when a cheap scan of
the bytes says they could find something. Bodies over ``Offload.inline_max`` are parsed
in a worker thread when an :class:`~iron_router.offload.Offload` is given.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.requests import ClientDisconnect, Request

from iron_router.offload import Offload
from iron_sdk.errors import InvalidRequestError, PayloadTooLargeError

__all__ = ["InvalidBodyError", "PayloadTooLargeError", "parse_json", "read_body",
           "read_json"]
MAX_DEPTH = 64


class InvalidBodyError(InvalidRequestError):
    """The body is not a JSON object this router accepts (400 ``invalid_request``)."""


def _no_constant(name: str) -> Any:
    raise InvalidBodyError(f"The request body contains {name}, which is not JSON; "
                           "send finite numbers.")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidBodyError("The request body contains a number too large for a float "
                               f"({text[:32]}).")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)
# A lone surrogate can only come from a \uD800-\uDFFF escape (strict UTF-8 has none).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_OPENERS = b"{["


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes (else :class:`PayloadTooLargeError`).
    Afterwards ``await request.body()`` returns the same bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"Request body of {int(declared)} bytes is over the "
                                   f"router's limit of {limit} bytes.")
    cached: bytes | None = getattr(request, "_body", None)
    if cached is not None:
        return cached
    chunks: list[bytes] = []
    size = 0
    receive = request.receive  # not request.stream(): an async generator costs ~3 µs
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"Request body is over the router's limit of "
                                       f"{limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    request._body = raw  # Starlette's own cache: request.body() now answers from it
    return raw


def parse_json(raw: bytes, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """``raw`` as a JSON object, strictly (see the module doc); :class:`InvalidBodyError`
    otherwise."""
    if not raw:
        raise InvalidBodyError("The request body is empty; send a JSON object.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidBodyError("The request body is not valid UTF-8.") from None
    try:
        body = _DECODER.decode(text)
    except InvalidBodyError:
        raise
    except RecursionError:
        raise InvalidBodyError(f"The request body nests deeper than {max_depth} "
                               "levels.") from None
    except ValueError:  # JSONDecodeError; int() past the digit limit
        raise InvalidBodyError("The request body is not valid JSON.") from None
    if type(body) is not dict:
        raise InvalidBodyError("The request body must be a JSON object.")
    # Depth > max_depth needs more than max_depth openers; a lone surrogate needs an
    # escape. Both scans are C loops over the bytes (~1 µs per 2 KB).
    deep = len(raw) - len(raw.translate(None, _OPENERS)) > max_depth
    surrogates = _SURROGATE_ESCAPE.search(raw) is not None
    if deep or surrogates:
        _walk(body, max_depth, surrogates)
    return body


async def read_json(request: Request, limit: int, *, optional: bool = False,
                    offload: Offload | None = None,
                    max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The request's body as a strict JSON object (see the module doc).

    ``optional``: an empty body reads as ``{}``. ``offload``: parse bodies larger than
    ``offload.inline_max`` in its thread pool."""
    raw = await read_body(request, limit)
    if not raw and optional:
        return {}
    if offload is not None:
        return await offload.run_sized(len(raw), _parse, raw, max_depth)
    return parse_json(raw, max_depth=max_depth)


def _parse(raw: bytes, max_depth: int) -> dict[str, Any]:
    return parse_json(raw, max_depth=max_depth)


def _walk(root: Any, max_depth: int, strings: bool) -> None:
    """Check nesting depth and (if ``strings``) that every key and string is valid
    Unicode, without recursion."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > max_depth:
            raise InvalidBodyError(f"The request body nests deeper than {max_depth} levels.")
        items = node.items() if type(node) is dict else enumerate(node)
        for key, value in items:
            if strings and type(key) is str:
                _unicode(key)
            kind = type(value)
            if kind is dict or kind is list:
                push((value, depth + 1))
            elif strings and kind is str:
                _unicode(value)


def _unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidBodyError("The request body contains a lone surrogate escape "
                               "(such as \\ud800), which is not a character.") from None
