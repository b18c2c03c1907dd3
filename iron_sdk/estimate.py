"""Token estimates for what a request sends besides text: images, audio, files.

Pure functions by the providers' published formulas, used for reservations (an upper
bound: ``detail="auto"`` is taken as ``"high"``). An image's size is read from the first
bytes of its base64 payload only; a remote URL's size is unknown, so it is reserved at
:func:`max_image_tokens`, the most one image can cost on that model.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from dataclasses import dataclass

# -- images -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tiles:
    """OpenAI's tile formula: fit 2048², shortest side to 768, ``base + tile × 512-px tiles``."""

    base: int
    tile: int


@dataclass(frozen=True, slots=True)
class _Patches:
    """OpenAI's patch formula (4.1-mini/nano, o4-mini, 5-mini/nano): 32-px patches capped
    at 1536, times the model's multiplier."""

    multiplier: float


# (pattern on the model name without provider prefix, formula); first match wins.
_OPENAI: tuple[tuple[re.Pattern[str], _Tiles | _Patches], ...] = tuple(
    (re.compile(p), f) for p, f in (
        (r"^gpt-4o-mini", _Tiles(2833, 5667)),
        (r"^gpt-(4\.1|5(\.\d+)?)-nano", _Patches(2.46)),
        (r"^gpt-(4\.1|5(\.\d+)?)-mini", _Patches(1.62)),
        (r"^o4-mini", _Patches(1.72)),
        (r"^gpt-5", _Tiles(70, 140)),
        (r"^o[13]", _Tiles(75, 150)),
        (r"^computer-use", _Tiles(65, 129)),
    ))
_DEFAULT = _Tiles(85, 170)  # gpt-4o, gpt-4.1, gpt-4.5, gpt-4-turbo, and unknown models

ANTHROPIC_MAX_EDGE = 1568
ANTHROPIC_MAX_IMAGE_TOKENS = 1600  # (w·h)/750 of the largest image sent unscaled
GEMINI_SMALL = 384  # both sides ≤ this: one image is 258 tokens
GEMINI_TILE = 768
GEMINI_TILE_TOKENS = 258
GEMINI_MAX_SIDE = 3072  # larger images are scaled to fit first
LOW_DETAIL_TOKENS = 85

# The most one image of unknown size can cost, per provider family (for remote URLs).
MAX_IMAGE_TOKENS: dict[str, int] = {
    "openai": 85 + 170 * 8,  # gpt-4o: 768×2048 → 2×4 tiles; other families: max_image_tokens
    "anthropic": ANTHROPIC_MAX_IMAGE_TOKENS,
    "google": GEMINI_TILE_TOKENS * (GEMINI_MAX_SIDE // GEMINI_TILE) ** 2,
}


def _name(model: str) -> str:
    return model.rsplit("/", 1)[-1].lower().removeprefix("ft:")


def family(model: str) -> str:
    """``'anthropic'``, ``'google'`` or ``'openai'`` (the default for anything else)."""
    name = model.lower()
    if "claude" in name:
        return "anthropic"
    if "gemini" in name or "gemma" in name:
        return "google"
    return "openai"


def _openai_formula(model: str) -> _Tiles | _Patches:
    name = _name(model)
    return next((f for pattern, f in _OPENAI if pattern.search(name)), _DEFAULT)


def _tiles(formula: _Tiles, width: int, height: int) -> int:
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return formula.base + formula.tile * math.ceil(w / 512) * math.ceil(h / 512)


def _patches(formula: _Patches, width: int, height: int) -> int:
    cap = 1536
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches > cap:
        r = math.sqrt(32 * 32 * cap / (width * height))
        r *= min(math.floor(width * r / 32) / (width * r / 32),
                 math.floor(height * r / 32) / (height * r / 32))
        patches = min(cap, math.ceil(width * r / 32) * math.ceil(height * r / 32))
    return math.ceil(patches * formula.multiplier)


def _anthropic(width: int, height: int) -> int:
    scale = min(1.0, ANTHROPIC_MAX_EDGE / max(width, height))
    return min(ANTHROPIC_MAX_IMAGE_TOKENS, math.ceil(width * scale * height * scale / 750))


def _gemini(width: int, height: int) -> int:
    if width <= GEMINI_SMALL and height <= GEMINI_SMALL:
        return GEMINI_TILE_TOKENS
    scale = min(1.0, GEMINI_MAX_SIDE / max(width, height))
    return GEMINI_TILE_TOKENS * (math.ceil(width * scale / GEMINI_TILE)
                                 * math.ceil(height * scale / GEMINI_TILE))


def image_tokens(model: str, width: int, height: int, detail: str = "auto") -> int:
    """Input tokens one ``width`` × ``height`` image costs on ``model``.

    OpenAI: the tile formula (85 + 170 per 512-px tile for gpt-4o; 4o-mini's, gpt-5's and
    o-series' own base and tile) or the 32-px patch formula with the model's multiplier;
    ``detail="low"`` is the base alone. Anthropic: (w·h)/750 after fitting 1568 px, at
    most 1600. Gemini: 258 per 768-px tile (258 for an image within 384²).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}×{height}")
    kind = family(model)
    if kind == "anthropic":
        return _anthropic(width, height)
    if kind == "google":
        return _gemini(width, height)
    formula = _openai_formula(model)
    if isinstance(formula, _Patches):
        return _patches(formula, width, height)
    if detail == "low":
        return formula.base
    return _tiles(formula, width, height)


def max_image_tokens(model: str, detail: str = "auto") -> int:
    """The most one image of unknown size (a remote URL) can cost on ``model``."""
    kind = family(model)
    if kind != "openai":
        return MAX_IMAGE_TOKENS[kind]
    formula = _openai_formula(model)
    if isinstance(formula, _Patches):
        return math.ceil(1536 * formula.multiplier)
    return formula.base if detail == "low" else formula.base + formula.tile * 8


_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+/-]*)(?:;[\w=.+-]+)*;base64,", re.IGNORECASE)
_HEAD = 4096  # bytes decoded to find a size; JPEG may need more (EXIF before the frame)
_MAX_HEAD = 1 << 20


def _decode_head(b64: str, nbytes: int) -> bytes:
    """The first ``nbytes`` (or a little more) of base64 data, whitespace tolerated."""
    want = math.ceil(nbytes / 3) * 4
    chars = "".join(b64[: want + want // 16 + 4].split())[:want]
    chars = chars[: len(chars) - len(chars) % 4]
    try:
        return base64.b64decode(chars, validate=False)
    except (binascii.Error, ValueError):
        return b""


def image_size_from_base64(b64: str) -> tuple[int, int] | None:
    """(width, height) of a base64 PNG, JPEG, GIF or WebP, decoding only its header;
    None when it is none of them or its header is unreadable."""
    head = _decode_head(b64, _HEAD)
    size: tuple[int, int] | None = None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        size = struct.unpack(">II", head[16:24])
    elif head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        size = struct.unpack("<HH", head[6:10])
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        size = _webp_size(head)
    elif head[:2] == b"\xff\xd8":
        size = _jpeg_size(b64, head)
    return size if size and size[0] > 0 and size[1] > 0 else None


def image_size_from_data_url(url: str) -> tuple[int, int] | None:
    """(width, height) of a ``data:image/...;base64,`` URL; None if not one or unreadable."""
    match = _DATA_URL.match(url)
    if match is None:
        return None
    return image_size_from_base64(url[match.end():])


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30:
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:
        b = head[21:25]
        return 1 + (b[0] | (b[1] & 0x3F) << 8), 1 + (b[1] >> 6 | b[2] << 2 | (b[3] & 0x0F) << 10)
    if chunk == b"VP8X" and len(head) >= 30:
        return (1 + int.from_bytes(head[24:27], "little"),
                1 + int.from_bytes(head[27:30], "little"))
    return None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(b64: str, head: bytes) -> tuple[int, int] | None:
    """Walk the JPEG segments to the frame header, decoding more only as far as needed."""
    pos, want = 2, _HEAD
    while True:
        if pos + 9 > len(head):
            if len(head) < want or want >= _MAX_HEAD:
                return None  # the data ended, or the frame is past our limit
            want = min(_MAX_HEAD, max(2 * want, pos + _HEAD))
            head = _decode_head(b64, want)
            continue
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF:
            height, width = struct.unpack(">HH", head[pos + 5: pos + 9])
            return width, height
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        pos += 2 + struct.unpack(">H", head[pos + 2: pos + 4])[0]


# -- audio and files ----------------------------------------------------------------

# Input audio tokens per second: OpenAI 10 (one per 100 ms), Gemini 32, others unknown
# and reserved at the higher rate.
AUDIO_TOKENS_PER_SECOND: dict[str, int] = {"openai": 10, "google": 32, "anthropic": 32}
MIN_AUDIO_BYTES_PER_SECOND = 2000  # 16 kbit/s: compressed audio is rarely smaller
FILE_TOKENS_PER_PAGE = 3000  # text of a dense page (Anthropic: 1,500-3,000 per page)
TEXT_BYTES_PER_TOKEN = 2  # conservative: English averages ~4


def audio_tokens(model: str, seconds: float) -> int:
    """Input tokens ``seconds`` of audio cost on ``model`` (rounded up)."""
    return math.ceil(max(0.0, seconds) * AUDIO_TOKENS_PER_SECOND[family(model)])


def audio_seconds(b64: str) -> float:
    """Length of base64 audio: exact for WAV (from its header), else an upper bound from
    its size at :data:`MIN_AUDIO_BYTES_PER_SECOND`."""
    nbytes = len(b64) * 3 // 4
    head = _decode_head(b64, 64)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE" and len(head) >= 32:
        byte_rate = struct.unpack("<I", head[28:32])[0]
        if byte_rate:
            return max(0, nbytes - 44) / byte_rate
    return nbytes / MIN_AUDIO_BYTES_PER_SECOND


_PDF_PAGE = re.compile(rb"/Type\s*/Page(?!s)")


def file_tokens(model: str, data: bytes) -> int:
    """Input tokens a file (a document part) costs, conservatively: a PDF per page, its
    text at :data:`FILE_TOKENS_PER_PAGE` plus the page as one image (providers send
    both); any other file as text at :data:`TEXT_BYTES_PER_TOKEN`."""
    if data.startswith(b"%PDF"):
        pages = max(1, len(_PDF_PAGE.findall(data)))
        return pages * (FILE_TOKENS_PER_PAGE + max_image_tokens(model))
    return math.ceil(len(data) / TEXT_BYTES_PER_TOKEN)
