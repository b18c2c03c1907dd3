"""StreamRedactor / ToolArgumentsRedactor: every split point of every sample gives exactly what
redacting the whole text gives, ordinary text is released at once, JSON is held until it closes."""

from __future__ import annotations

import json
import random

import pytest

from iron_sdk.config import SafetyConfig
from iron_sdk.safety.detectors import HOLDBACK, redact, scan
from iron_sdk.safety.stream import StreamRedactor, ToolArgumentsRedactor

GITHUB_PAT = "ghp_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6"
OPENAI_KEY = "sk-proj-" + "Ab3dEf6hIj9lMn2pQr5tUv8xYz" * 2
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0"
       ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi\n"
       "Z1BjP5CE/Wm/Rr500P\n" * 3 + "-----END RSA PRIVATE KEY-----")
LONG_LOCAL = "a" * 60 + ".b"

SAMPLES = [
    "Your card 4111 1111 1111 1111 was charged.",
    "card:4111.1111.1111.1111",
    f"Use the token {OPENAI_KEY} for the staging project, not {GITHUB_PAT}.",
    f"aws_secret_access_key = {AWS_SECRET}\nregion = eu-west-1",
    f"Bearer {JWT}",
    f"Here is the key:\n{PEM}\nKeep it safe.",
    "Write to jane.doe@example.com or +44 20 7946 0958 today.",
    f"{LONG_LOCAL}@example.com is the longest local part here.",
    "IBAN DE89 3704 0044 0532 0130 00, SSN 123 45 6789, host 192.168.1.20.",
    "jane%40example.com and ４１１１１１１１１１１１１１１１ and ann\u200b@corp.example.",
    "Nothing to see: version 1.2.3.4, order ORD-2024-000123, sha 3f786850e387550f.",
    "4111111111111111",
    "ends with an address: bob@example.org",
]


def chunked(redactor: StreamRedactor, chunks: list[str]) -> str:
    return "".join(redactor.feed(c) for c in chunks) + redactor.finish()


@pytest.mark.parametrize("text", SAMPLES)
def test_every_split_point_gives_the_whole_text_redaction(text: str) -> None:
    expected = redact(text)
    for i in range(len(text) + 1):
        assert chunked(StreamRedactor(), [text[:i], text[i:]]) == expected, i


@pytest.mark.parametrize("text", SAMPLES)
def test_character_by_character_and_random_chunks(text: str) -> None:
    expected = redact(text)
    assert chunked(StreamRedactor(), list(text)) == expected
    rng = random.Random(len(text))
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8))))
        parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert chunked(StreamRedactor(), parts) == expected


def test_secret_split_over_three_chunks_never_leaks_a_prefix() -> None:
    r = StreamRedactor()
    out = [r.feed("prefix text " * 10), r.feed(OPENAI_KEY[:10]), r.feed(OPENAI_KEY[10:] + " ok")]
    out.append(r.finish())
    joined = "".join(out)
    assert OPENAI_KEY[:6] not in joined.replace("prefix", "")
    assert joined == "prefix text " * 10 + "[API_KEY_REDACTED] ok"
    assert r.kinds == {"api_key": 1}


def test_ordinary_text_is_released_as_soon_as_it_is_past_the_holdback() -> None:
    r = StreamRedactor()
    text = "The weather in Paris is mild today. " * 20
    released = r.feed(text)
    assert released == text[:len(text) - HOLDBACK] and r.held == HOLDBACK
    assert r.feed("More.") == text[len(text) - HOLDBACK:][:5]
    assert released + text[len(text) - HOLDBACK:][:5] + r.finish() == text + "More."


def test_a_growing_secret_is_held_from_its_start_beyond_the_holdback() -> None:
    r = StreamRedactor()
    out = r.feed("key: ")
    out += r.feed(PEM[:40])
    body = "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi\n" * 10  # far more than HOLDBACK
    for i in range(0, len(body), 7):
        out += r.feed(body[i:i + 7])
    assert "MIIE" not in out and r.held > HOLDBACK
    out += r.feed("-----END RSA PRIVATE KEY-----\nthanks") + r.finish()
    assert out == "key: [PRIVATE_KEY_REDACTED]\nthanks"


def test_short_streams_and_empty_deltas() -> None:
    r = StreamRedactor()
    assert r.feed("") == "" and r.feed("hi ") == "" and r.feed("") == ""
    assert r.finish() == "hi " and r.finish() == ""
    with pytest.raises(ValueError):
        StreamRedactor(holdback=-1)


def test_for_config_uses_custom_patterns_allow_lists_and_actions() -> None:
    cfg = SafetyConfig(patterns=[{"kind": "employee_id", "regex": "EMP-[0-9]{6}"}],
                       allow={"support@company.example"}, secrets="log")
    text = (f"Ask support@company.example, ann@corp.example about EMP-123456; "
            f"key {GITHUB_PAT} (only logged).")
    expected = (f"Ask support@company.example, [EMAIL_REDACTED] about [EMPLOYEE_ID_REDACTED]; "
                f"key {GITHUB_PAT} (only logged).")
    for i in range(len(text) + 1):
        assert chunked(StreamRedactor.for_config(cfg), [text[:i], text[i:]]) == expected, i


def test_holdback_grows_with_a_long_custom_pattern() -> None:
    cfg = SafetyConfig(patterns=[{"kind": "case_ref", "regex": "CASE-[0-9]{150}"}])
    r = StreamRedactor.for_config(cfg)
    assert r.holdback >= 155
    ref = "CASE-" + "7" * 150
    text = f"see {ref} now"
    for i in range(0, len(text) + 1, 9):
        got = chunked(StreamRedactor.for_config(cfg), [text[:i], text[i:]])
        assert got == "see [CASE_REF_REDACTED] now", i


# ------------------------------------------------------------------------ tool-call arguments
ARGS = json.dumps({"to": "jane@example.com", "card": "4111 1111 1111 1111",
                   "note": "ship today", "amount": 12.5, "ids": [4111111111111111, 7]})


def test_tool_arguments_are_held_until_the_json_closes_at_every_split() -> None:
    expected = {"to": "[EMAIL_REDACTED]", "card": "[CREDIT_CARD_REDACTED]", "note": "ship today",
                "amount": 12.5, "ids": ["[CREDIT_CARD_REDACTED]", 7]}
    for i in range(1, len(ARGS)):
        r = ToolArgumentsRedactor()
        first = r.feed(ARGS[:i])
        assert first == ""  # nothing of an unclosed object is released
        second = r.feed(ARGS[i:])
        assert json.loads(second) == expected and "4111" not in second
        assert r.finish() == ""
    assert r.kinds == {"email": 1, "credit_card": 2}


def test_tool_arguments_without_findings_are_released_byte_for_byte() -> None:
    args = '{"city":  "Paris", "days": [1, 2, 3], "q": "say \\"hi\\" {not a brace}"}'
    r = ToolArgumentsRedactor()
    out = "".join(r.feed(c) for c in args)
    assert out == args and r.finish() == ""


def test_escaped_and_nested_values_are_redacted() -> None:
    args = '{"a": {"b": ["x", "mail jane\\u0040example.com"]}, "k": "' + GITHUB_PAT + '"}'
    r = ToolArgumentsRedactor()
    out = r.feed(args)
    assert json.loads(out) == {"a": {"b": ["x", "mail [EMAIL_REDACTED]"]},
                               "k": "[API_KEY_REDACTED]"}


def test_unterminated_or_invalid_arguments_are_redacted_on_finish() -> None:
    r = ToolArgumentsRedactor()
    assert r.feed('{"card": "4111 1111 1111 1111", "x": ') == ""
    assert r.finish() == '{"card": "[CREDIT_CARD_REDACTED]", "x": '
    r = ToolArgumentsRedactor()
    assert r.feed("not json 4111111111111111") == ""
    assert r.finish() == "not json [CREDIT_CARD_REDACTED]"


def test_for_config_tool_arguments() -> None:
    cfg = SafetyConfig(allow={"ops@company.example"})
    r = ToolArgumentsRedactor.for_config(cfg)
    out = r.feed('{"to": ["ops@company.example", "ann@corp.example"]}')
    assert json.loads(out) == {"to": ["ops@company.example", "[EMAIL_REDACTED]"]}


def test_scan_is_what_the_stream_reproduces() -> None:
    # guard against a sample that has no finding at all making the split tests vacuous
    assert sum(bool(scan(s)) for s in SAMPLES) >= len(SAMPLES) - 1


def test_for_config_response_action() -> None:
    text = "Your card 4111 1111 1111 1111 and mail ann@corp.example."
    for action, expected in (("redact", redact(text)), ("block", redact(text)),
                             ("log", text), ("off", text)):
        r = StreamRedactor.for_config(SafetyConfig(pii="off", response=action), response=True)
        assert chunked(r, [text[:15], text[15:]]) == expected
    # log/off hold nothing back: everything is released at once
    r = StreamRedactor.for_config(SafetyConfig(), response=True)
    assert r.feed("card 4111 1111 ") == "card 4111 1111 "
    args = '{"card": "4111111111111111"}'
    t = ToolArgumentsRedactor.for_config(SafetyConfig(response="redact"), response=True)
    assert json.loads(t.feed(args)) == {"card": "[CREDIT_CARD_REDACTED]"}
