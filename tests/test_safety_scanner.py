"""Scanner: custom patterns, validators, allow-lists and ``kinds`` of one SafetyConfig."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from iron_sdk.config import SafetyConfig
from iron_sdk.safety.detectors import HOLDBACK
from iron_sdk.safety.scanner import Scanner, scanner_for
from iron_sdk.safety.validators import iban_ok, luhn_ok


def found(scanner: Scanner, text: str) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start:f.end]) for f in scanner.scan(text)]


def test_default_config_is_the_built_ins() -> None:
    s = scanner_for(SafetyConfig())
    assert found(s, "a@b.io and 4111.1111.1111.1111") == [
        ("email", "a@b.io"), ("credit_card", "4111.1111.1111.1111")]
    assert s.holdback == HOLDBACK


def test_scanners_are_cached_per_config() -> None:
    assert scanner_for(SafetyConfig(pii="log")) is scanner_for(SafetyConfig(pii="log"))
    assert scanner_for(SafetyConfig()) is not scanner_for(SafetyConfig(pii="log"))


def test_custom_patterns_run_on_the_normalized_text_with_validators() -> None:
    s = scanner_for(SafetyConfig(patterns=[
        {"kind": "employee_id", "regex": r"EMP-[0-9]{6}"},
        {"kind": "badge", "regex": r"(?i)badge[ :]+(?P<value>[0-9]{8})", "validator": "luhn"},
        {"kind": "ticket", "regex": r"tkt_[a-z0-9]{10}", "ignore_case": True, "secret": True},
    ]))
    text = ("EMP\u2011００４２１１, Badge: 79927398 / badge 79927399, TKT_ABCDE12345 and "
            "tkt_short")
    assert found(s, text) == [
        ("employee_id", "EMP\u2011００４２１１"), ("badge", "Badge: 79927398"),
        ("ticket", "TKT_ABCDE12345")]


def test_custom_and_builtin_overlap_longest_wins() -> None:
    s = scanner_for(SafetyConfig(patterns=[
        {"kind": "order_ref", "regex": r"ref:order-[0-9]+@shop\.example"},
        {"kind": "same_as_email", "regex": r"x@y\.io"}]))
    # longer wins; on the same span the built-in kind wins
    assert found(s, "mail ref:order-12@shop.example or x@y.io") == [
        ("order_ref", "ref:order-12@shop.example"), ("email", "x@y.io")]


def test_allow_lists_match_written_and_normalized_values() -> None:
    s = scanner_for(SafetyConfig(allow={"Support@Company.example"},
                                 allow_patterns=[r"[a-z.]+@status\.company\.example",
                                                 r"10\.0\.0\.[0-9]+"]))
    text = ("support@company.example, support%40company.example, ops.team@status.company.example,"
            " 10.0.0.7, evil@company.example, 10.1.0.7")
    assert found(s, text) == [("email", "evil@company.example"), ("ip_address", "10.1.0.7")]
    assert s.allowed("SUPPORT@company.example") and not s.allowed("support@company.examples")


def test_kinds_selects_builtins_only() -> None:
    s = scanner_for(SafetyConfig(kinds=frozenset({"email"}),
                                 patterns=[{"kind": "employee_id", "regex": "EMP-[0-9]{6}"}]))
    assert found(s, "a@b.io 4111111111111111 EMP-123456") == [
        ("email", "a@b.io"), ("employee_id", "EMP-123456")]


def test_holdback_follows_the_widest_custom_pattern() -> None:
    assert scanner_for(SafetyConfig(patterns=[{"kind": "k", "regex": "X[0-9]{300}"}])
                       ).holdback == 305
    assert scanner_for(SafetyConfig(patterns=[{"kind": "k", "regex": "X[0-9]+"}])
                       ).holdback == HOLDBACK + 4
    assert scanner_for(SafetyConfig(patterns=[{"kind": "k", "regex": "X[0-9]{5000}"}])
                       ).holdback == 1028


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("patterns", [{"kind": "k", "regex": "(unclosed"}], "invalid regular expression"),
        ("patterns", [{"kind": "k", "regex": "a?"}], "matches the empty string"),
        ("patterns", [{"kind": "Upper", "regex": "x"}], "pattern"),
        ("patterns", [{"kind": "k", "regex": "x", "validator": "crc"}], "luhn"),
        ("patterns", [{"kind": "k", "regex": "x", "extra": 1}], "Extra inputs"),
        ("allow_patterns", ["[z-a]"], "allow_patterns[0]: invalid regular expression"),
    ],
)
def test_bad_config_is_a_clear_validation_error(field, value, message) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SafetyConfig(**{field: value})


def test_a_config_keeps_its_scanner() -> None:
    cfg = SafetyConfig(allow={"a@b.example"})
    assert scanner_for(cfg) is scanner_for(cfg)
    assert scanner_for(SafetyConfig()) is not scanner_for(cfg)


def test_validators() -> None:
    assert luhn_ok("4111 1111 1111 1111") and luhn_ok("LC4111111111111111")
    assert not luhn_ok("4111 1111 1111 1112") and not luhn_ok("x")
    assert iban_ok("de89 3704 0044 0532 0130 00") and not iban_ok("DE89370400440532013001")
    assert not iban_ok("DE") and not iban_ok("DE89-ÄÖ")
