"""Pricing against litellm's price map, through the runtime's own path (``Runtime.price``):
long-context tiers, cache reads/writes, fine-tunes, reservation bounds, usage conventions,
and the image/audio/file estimates."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import random
import struct
import wave
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from iron_sdk import Runtime, RuntimeConfig
from iron_sdk.call import Usage
from iron_sdk.config import ModelPriceConfig
from iron_sdk.errors import InvalidRequestError
from iron_sdk.estimate import (
    audio_seconds,
    audio_tokens,
    file_tokens,
    image_size_from_base64,
    image_size_from_data_url,
    image_tokens,
    max_image_tokens,
)
from iron_sdk.ledger.memory import MemoryLedger
from iron_sdk.pricing import ModelPrice, candidates, parse_tier_key
from iron_sdk.usage import usage_from_anthropic, usage_from_dict, usage_from_openai, usage_to_dict


@pytest.fixture
def rt(iron_home: Path) -> Iterator[Runtime]:
    runtime = Runtime(RuntimeConfig(home=iron_home, prices={"house-model": ModelPriceConfig(
        input_per_mtok=1.0, output_per_mtok=4.0, cached_input_per_mtok=0.1,
        cache_write_per_mtok=1.25, cache_write_1h_per_mtok=2.0)}), ledger=MemoryLedger())
    yield runtime
    runtime.close()


def micro(usd: float) -> int:
    return round(usd * 1_000_000)


# -- long-context tiers ----------------------------------------------------------------

@pytest.mark.parametrize(("model", "usd"), [("claude-sonnet-4-5", 1.8225),
                                             ("gemini-2.5-pro", 0.765)])
def test_long_context_tier_prices_the_whole_call(rt: Runtime, model: str, usd: float) -> None:
    price = rt.price(model)
    usage = Usage(input_tokens=300_000, output_tokens=1_000)
    assert price.cost_micro(usage) == micro(usd)
    assert price.estimate_micro(300_000, 1_000) >= micro(usd)
    # at the threshold itself the base prices hold (providers bill "above" 200k)
    assert price.cost_micro(Usage(200_000, 1_000)) < micro(usd) * 200_000 / 300_000


def test_tier_applies_to_cache_reads_and_writes(rt: Runtime) -> None:
    price = rt.price("claude-sonnet-4-5")
    usage = usage_from_anthropic({"input_tokens": 100_000, "cache_read_input_tokens": 150_000,
                                  "cache_creation_input_tokens": 50_000, "output_tokens": 1_000})
    assert usage is not None and usage.input_tokens == 300_000
    # above 200k: $6 input, $0.60 cache read, $7.50 cache write, $22.50 output per M
    assert price.cost_micro(usage) == micro(0.6 + 0.09 + 0.375 + 0.0225)


def test_tier_thresholds_are_parsed_generically() -> None:
    assert parse_tier_key("input_cost_per_token_above_200k_tokens") == (
        "input_cost_per_token", 200_000)
    assert parse_tier_key("cache_read_input_token_cost_above_128k_tokens") == (
        "cache_read_input_token_cost", 128_000)
    assert parse_tier_key("cache_creation_input_token_cost_above_1hr_above_200k_tokens") == (
        "cache_creation_input_token_cost_above_1hr", 200_000)
    assert parse_tier_key("output_cost_per_token_above_1m_tokens") == (
        "output_cost_per_token", 1_000_000)
    assert parse_tier_key("input_cost_per_token_above_200k_tokens_priority") is None
    assert parse_tier_key("cache_creation_input_token_cost_above_1hr") is None


def test_a_model_with_a_128k_tier(rt: Runtime) -> None:
    from iron_sdk.pricing import default_database

    data = default_database().data
    model = next(k for k, v in data.items() if v.get("mode") == "chat"
                 and "input_cost_per_token_above_128k_tokens" in v)
    entry = data[model]
    price = rt.price(model)
    usage = Usage(input_tokens=130_000, output_tokens=10_000)
    want = (130_000 * entry["input_cost_per_token_above_128k_tokens"]
            + 10_000 * entry["output_cost_per_token_above_128k_tokens"])
    assert price.cost_micro(usage) == pytest.approx(want * 1e6, abs=1)


# -- fine-tunes --------------------------------------------------------------------------

def test_fine_tune_priced_by_its_own_entry(rt: Runtime) -> None:
    price = rt.price("ft:gpt-4o-mini-2024-07-18:my-org::abc123")
    assert price.source_key == "ft:gpt-4o-mini-2024-07-18"
    assert price.cost_micro(Usage(1_000_000, 0)) == micro(0.30)
    assert price.cost_micro(Usage(0, 1_000_000)) == micro(1.20)


def test_fine_tune_without_an_entry_falls_back_to_its_base(rt: Runtime) -> None:
    price = rt.price("ft:gpt-4o-mini:my-org::abc123")  # no "ft:gpt-4o-mini" entry
    assert price.source_key == "gpt-4o-mini"
    assert price.cost_micro(Usage(1_000_000, 1_000_000)) == micro(0.15 + 0.60)
    assert candidates("openai/ft:gpt-4o-mini-2024-07-18:org::x") == [
        "openai/ft:gpt-4o-mini-2024-07-18:org::x", "ft:gpt-4o-mini-2024-07-18:org::x",
        "ft:gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18"]


# -- usage conventions: cached tokens never counted twice ------------------------------

def test_openai_and_anthropic_conventions_charge_the_same(rt: Runtime) -> None:
    price = rt.price("claude-sonnet-4-5")
    openai_shape = usage_from_openai({  # litellm's reshaping of an Anthropic reply
        "prompt_tokens": 10_000, "completion_tokens": 500,
        "prompt_tokens_details": {"cached_tokens": 8_000}, "cache_creation_input_tokens": 1_000})
    anthropic_shape = usage_from_anthropic({
        "input_tokens": 1_000, "cache_read_input_tokens": 8_000,
        "cache_creation_input_tokens": 1_000, "output_tokens": 500})
    assert openai_shape == anthropic_shape == Usage(
        input_tokens=10_000, output_tokens=500, cached_input_tokens=8_000,
        cache_creation_tokens=1_000)
    # 1k plain at $3, 8k cache reads at $0.30, 1k writes at $3.75, 500 out at $15 per M
    want = micro(0.003 + 0.0024 + 0.00375 + 0.0075)
    assert price.cost_micro(openai_shape) == price.cost_micro(anthropic_shape) == want


def test_openai_cached_tokens_are_part_of_the_prompt(rt: Runtime) -> None:
    price = rt.price("gpt-4o-mini")
    usage = usage_from_openai({"prompt_tokens": 1_000_000, "completion_tokens": 0,
                               "prompt_tokens_details": {"cached_tokens": 600_000}})
    assert price.cost_micro(usage) == micro(0.4 * 0.15 + 0.6 * 0.075)
    responses = usage_from_openai({"input_tokens": 1_000_000, "output_tokens": 10,
                                   "input_tokens_details": {"cached_tokens": 600_000},
                                   "output_tokens_details": {"reasoning_tokens": 4}})
    assert responses == Usage(1_000_000, 10, cached_input_tokens=600_000, reasoning_tokens=4)
    deepseek = usage_from_openai({"prompt_tokens": 100, "completion_tokens": 1,
                                  "prompt_cache_hit_tokens": 60, "prompt_cache_miss_tokens": 40})
    assert deepseek is not None and deepseek.cached_input_tokens == 60


def test_litellm_usage_objects_read_in_our_convention(rt: Runtime) -> None:
    from litellm.types.utils import Usage as LitellmUsage  # litellm is a dependency

    anthropic_via_litellm = LitellmUsage(
        prompt_tokens=110_000, completion_tokens=1_000, total_tokens=111_000,
        cache_creation_input_tokens=100_000, cache_read_input_tokens=0,
        cache_creation_token_details={"ephemeral_5m_input_tokens": 50_000,
                                      "ephemeral_1h_input_tokens": 50_000})
    assert usage_from_openai(anthropic_via_litellm) == Usage(
        110_000, 1_000, cache_creation_tokens=100_000, cache_creation_1h_tokens=50_000)
    cached = LitellmUsage(prompt_tokens=10_000, completion_tokens=10, total_tokens=10_010,
                          cache_read_input_tokens=8_000, cache_creation_input_tokens=1_000)
    assert usage_from_openai(cached) == Usage(10_000, 10, cached_input_tokens=8_000,
                                              cache_creation_tokens=1_000)
    deepseek = LitellmUsage(prompt_tokens=100, completion_tokens=1, total_tokens=101,
                            prompt_cache_hit_tokens=60, prompt_cache_miss_tokens=40)
    assert usage_from_openai(deepseek) == Usage(100, 1, cached_input_tokens=60)


def test_usage_from_openai_still_importable_from_call() -> None:
    from iron_sdk.call import usage_from_openai as reexported

    assert reexported is usage_from_openai


def test_anthropic_one_hour_cache_write_priced(rt: Runtime) -> None:
    price = rt.price("claude-sonnet-4-5")
    usage = usage_from_anthropic({
        "input_tokens": 10_000, "output_tokens": 1_000, "cache_creation_input_tokens": 100_000,
        "cache_creation": {"ephemeral_5m_input_tokens": 50_000,
                           "ephemeral_1h_input_tokens": 50_000}})
    assert usage == Usage(110_000, 1_000, cache_creation_tokens=100_000,
                          cache_creation_1h_tokens=50_000)
    # $3 plain, $3.75 5-minute writes, $6 1-hour writes, $15 output, per M
    assert price.cost_micro(usage) == micro(0.03 + 0.1875 + 0.30 + 0.015)
    via_litellm = usage_from_openai({
        "prompt_tokens": 110_000, "completion_tokens": 1_000,
        "prompt_tokens_details": {"cached_tokens": 0, "cache_creation_tokens": 100_000,
                                  "cache_creation_token_details": {
                                      "ephemeral_5m_input_tokens": 50_000,
                                      "ephemeral_1h_input_tokens": 50_000}}})
    assert via_litellm == usage
    assert price.estimate_micro(110_000, 1_000, cache_write="1h") >= price.cost_micro(usage)


def test_reasoning_and_audio_tokens(rt: Runtime) -> None:
    price = rt.price("gpt-4o-audio-preview-2024-12-17")
    usage = usage_from_openai({
        "prompt_tokens": 1_000, "completion_tokens": 2_000,
        "prompt_tokens_details": {"audio_tokens": 400},
        "completion_tokens_details": {"audio_tokens": 1_500}})
    # text in $2.50, audio in $40, text out $10, audio out $80 per M
    assert price.cost_micro(usage) == micro(600 * 2.5e-6 + 400 * 4e-5 + 500 * 1e-5 + 1500 * 8e-5)
    assert price.estimate_micro(1_000, 2_000, audio_input_tokens=400,
                                audio_output=True) >= price.cost_micro(usage)


def test_configured_prices_carry_cache_writes(rt: Runtime) -> None:
    price = rt.price("house-model")
    assert price.source_key == "config:house-model"
    usage = Usage(4_000_000, 1_000_000, cached_input_tokens=1_000_000,
                  cache_creation_tokens=2_000_000, cache_creation_1h_tokens=1_000_000)
    assert price.cost_micro(usage) == micro(1.0 + 0.1 + 1.25 + 2.0 + 4.0)


def test_service_tiers_are_priced(rt: Runtime) -> None:
    price = rt.price("gemini-2.5-pro")
    # priority above 200k: $4.50 in, $27 out per M; flex below it: $0.625, $5
    assert price.cost_micro(Usage(300_000, 1_000, service_tier="priority")) == micro(1.377)
    assert price.cost_micro(Usage(100_000, 1_000, service_tier="flex")) == micro(0.0675)
    assert price.cost_micro(Usage(100_000, 1_000, service_tier="default")) == micro(0.135)
    assert price.estimate_micro(300_000, 1_000, service_tier="priority") >= micro(1.377)
    openai_shape = usage_from_openai({"prompt_tokens": 10, "completion_tokens": 1},
                                     service_tier="priority")
    assert openai_shape is not None and openai_shape.service_tier == "priority"
    assert usage_from_openai({"prompt_tokens": 1}, service_tier="default") == Usage(1)
    batch = usage_from_anthropic({"input_tokens": 1_000_000, "output_tokens": 0,
                                  "service_tier": "batch"})
    assert batch is not None and rt.price("claude-sonnet-4-5").cost_micro(batch) == micro(1.5)


def test_usage_wire_form_round_trips_and_checks_fields() -> None:
    usage = Usage(10, 2, cached_input_tokens=3, cache_creation_1h_tokens=0, audio_seconds=1.5,
                  service_tier="flex", counted=True)
    assert usage_from_dict(json.loads(json.dumps(usage_to_dict(usage)))) == usage
    assert usage_from_dict({"input_tokens": 5, "from_a_newer_client": 1}) == Usage(5)
    for bad in ({"input_tokens": -1}, {"output_tokens": 1.5}, {"counted": 1},
                {"audio_seconds": float("nan")}, {"input_tokens": True}, {"service_tier": 3}):
        with pytest.raises(InvalidRequestError, match="usage."):
            usage_from_dict(bad)
    with pytest.raises(InvalidRequestError):
        usage_from_dict([1, 2])  # type: ignore[arg-type]


# -- reservations are upper bounds -----------------------------------------------------

@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-pro", "gpt-5.4",
                                   "gpt-4o-mini", "o3", "deepseek-chat"])
def test_estimate_bounds_every_split_of_the_same_totals(rt: Runtime, model: str) -> None:
    price = rt.price(model)
    rng = random.Random(model)
    for _ in range(200):
        total_in, total_out = rng.randint(0, 400_000), rng.randint(0, 50_000)
        cached = rng.randint(0, total_in)
        written = rng.randint(0, total_in - cached)
        usage = Usage(total_in, total_out, cached_input_tokens=cached,
                      cache_creation_tokens=written,
                      cache_creation_1h_tokens=rng.randint(0, written),
                      reasoning_tokens=rng.randint(0, total_out))
        assert price.estimate_micro(total_in, total_out, cache_write="1h") >= (
            price.cost_micro(usage))
        plain = Usage(total_in, total_out, cached_input_tokens=cached,
                      reasoning_tokens=usage.reasoning_tokens)
        assert price.estimate_micro(total_in, total_out) >= price.cost_micro(plain)


def test_price_survives_the_runtime_api_json(rt: Runtime) -> None:
    for model in ("claude-sonnet-4-5", "gpt-5.4", "gemini-2.5-pro", "house-model"):
        price = rt.price(model)
        wire = json.loads(json.dumps(dataclasses.asdict(price)))
        assert ModelPrice(**wire) == price


# -- images, audio, files ----------------------------------------------------------------

def png_bytes(width: int, height: int) -> bytes:
    """A real (grey, 8-bit) PNG written by hand."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + bytes([(x * 7 + y) % 256 for x in range(width)])
                    for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def gif_bytes(width: int, height: int) -> bytes:
    """A real one-colour GIF written by hand."""
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
            + b",\0\0\0\0" + struct.pack("<HHB", width, height, 0) + b"\x02\x02\x44\x01\0;")


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_image_size_png_and_gif_by_hand() -> None:
    png = png_bytes(640, 480)
    assert image_size_from_data_url(data_url("image/png", png)) == (640, 480)
    assert image_size_from_data_url(data_url("image/gif", gif_bytes(33, 21))) == (33, 21)
    pil = pytest.importorskip("PIL.Image")
    assert pil.open(io.BytesIO(png)).size == (640, 480)  # the hand-written PNG is real


def test_image_size_decodes_only_the_header() -> None:
    url = data_url("image/png", png_bytes(300, 200))
    broken = url[:200] + "!!not base64!!" * 1000  # a full decode would fail
    assert image_size_from_data_url(broken) == (300, 200)
    assert image_size_from_data_url("data:image/png;base64,AAAA") is None
    assert image_size_from_data_url("https://example.org/cat.png") is None
    assert image_size_from_base64("") is None


def test_image_size_jpeg_and_webp() -> None:
    pil = pytest.importorskip("PIL.Image")
    img = pil.new("RGB", (1200, 900), (200, 30, 30))
    out = io.BytesIO()
    # a 20 KB EXIF block before the frame header: the reader must look past 4 KB
    exif = pil.Exif()
    exif[0x010E] = "x" * 20_000  # ImageDescription
    img.save(out, "JPEG", exif=exif.tobytes())
    assert len(out.getvalue()) > 20_000
    assert image_size_from_data_url(data_url("image/jpeg", out.getvalue())) == (1200, 900)
    for lossless in (False, True):
        out = io.BytesIO()
        pil.new("RGB", (517, 301), (1, 2, 3)).save(out, "WEBP", lossless=lossless)
        assert image_size_from_data_url(data_url("image/webp", out.getvalue())) == (517, 301)
    out = io.BytesIO()
    pil.new("RGBA", (640, 360), (1, 2, 3, 4)).save(out, "WEBP", exif=b"Exif\0\0")  # VP8X
    assert image_size_from_data_url(data_url("image/webp", out.getvalue())) == (640, 360)


def test_truncated_or_garbage_images_give_none_never_an_error() -> None:
    pil = pytest.importorskip("PIL.Image")
    out = io.BytesIO()
    pil.new("RGB", (40, 30)).save(out, "JPEG")
    rng = random.Random(7)
    for data in (png_bytes(40, 30), gif_bytes(40, 30), out.getvalue()):
        b64 = base64.b64encode(data).decode()
        for cut in range(0, min(len(b64), 400), 4):
            assert image_size_from_base64(b64[:cut]) in (None, (40, 30))
    for _ in range(300):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        for prefix in (b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBPVP8X", b"GIF89a"):
            size = image_size_from_base64(base64.b64encode(prefix + junk).decode())
            assert size is None or (size[0] > 0 and size[1] > 0)


def test_image_tokens_by_published_formulas() -> None:
    assert image_tokens("gpt-4o", 1024, 1024, "high") == 85 + 170 * 4
    assert image_tokens("openai/gpt-4o", 2048, 4096, "high") == 1105  # OpenAI's example
    assert image_tokens("gpt-4o", 4000, 4000, "low") == 85
    assert image_tokens("gpt-4o-mini", 1024, 1024) == 2833 + 5667 * 4
    assert image_tokens("gpt-4.1-mini", 1024, 1024) == 1659  # 1024 patches × 1.62
    assert image_tokens("gpt-4.1-nano", 1800, 2400) == 3572  # 1452 patches × 2.46
    assert image_tokens("claude-sonnet-4-5", 1000, 1000) == 1334
    assert image_tokens("claude-sonnet-4-5", 8000, 6000) == 1600
    assert image_tokens("gemini-2.5-pro", 300, 300) == 258
    assert image_tokens("gemini-2.5-pro", 1000, 1000) == 258 * 4
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-5", "o4-mini", "claude-opus-4", "gemini-2.5-pro"):
        worst = max_image_tokens(model)
        for w, h in ((64, 64), (768, 2048), (2048, 768), (5000, 5000), (1568, 1100), (300, 9000)):
            assert image_tokens(model, w, h) <= worst
    with pytest.raises(ValueError):
        image_tokens("gpt-4o", 0, 10)


def test_audio_and_file_estimates() -> None:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
        wav.writeframes(b"\0\0" * 32_000)  # 2 s
    seconds = audio_seconds(base64.b64encode(out.getvalue()).decode())
    assert seconds == pytest.approx(2.0, abs=0.01)
    assert audio_tokens("gpt-4o-audio-preview", seconds) == 20
    assert audio_tokens("gemini-2.5-flash", 2.0) == 64
    mp3ish = base64.b64encode(b"\xff\xfb" + b"\0" * 9_998).decode()  # 10 KB, unknown rate
    assert audio_seconds(mp3ish) >= 5.0
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Pages /Count 2 >>\n2 0 obj << /Type /Page >>\n" \
          b"3 0 obj << /Type/Page >>\n%%EOF"
    assert file_tokens("claude-sonnet-4-5", pdf) == 2 * (3000 + 1600)
    assert file_tokens("gpt-4o", b"a" * 1000) == 500


def test_a_multi_megabyte_text_is_counted_like_any_other() -> None:
    """Texts over 1 MB are counted from tiktoken's token buffer (no list of millions of
    ids holding the GIL); the count is the tokenizer's own."""
    from iron_sdk.tokens import _BIG, _encoder, count_text

    text = "Call +1 415 555 0100 or mail jane.doe@example.com about ünïcode. " * 20_000
    assert len(text) > _BIG
    assert count_text("gpt-4o-mini", text) == len(_encoder("gpt-4o-mini").encode_ordinary(text))
