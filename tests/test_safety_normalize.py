"""Disguised PII: normalization before detection, redaction of exactly the original characters."""

from __future__ import annotations

import pytest

from iron_sdk.safety.detectors import detect, redact, scan
from iron_sdk.safety.normalize import needs_normalizing, normalize

ZW = "\u200b"  # zero-width space
FW = str.maketrans("0123456789", "０１２３４５６７８９")  # fullwidth digits
AR = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")  # Arabic-Indic digits
FA = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")  # extended Arabic-Indic (Persian)
DV = str.maketrans("0123456789", "०१२३४५६७८९")  # Devanagari


def found(text: str) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start:f.end]) for f in scan(text)]


OBFUSCATED = [
    ("4111.1111.1111.1111", "credit_card"),
    ("4111 1111-1111.1111", "credit_card"),
    ("4111-1111 1111-1111", "credit_card"),
    (f"4111{ZW}1111{ZW}1111{ZW}1111", "credit_card"),
    (f"41{ZW}11111111111111", "credit_card"),
    ("4111111111111111".translate(FW), "credit_card"),
    ("4111 1111 1111 1111".translate(AR), "credit_card"),
    ("4111-1111-1111-1111".translate(FA), "credit_card"),
    ("4111111111111111".translate(DV), "credit_card"),
    ("4111\u00a01111\u00a01111\u00a01111", "credit_card"),  # no-break spaces
    ("4111\u20131111\u20131111\u20131111", "credit_card"),  # en dashes
    ("4111\u200e1111\u202e1111\u20661111", "credit_card"),  # bidi controls
    (f"jane{ZW}@example.com", "email"),
    (f"jane@{ZW}example.com", "email"),
    ("jane＠example.com", "email"),
    ("jane﹫example.com", "email"),
    ("jane%40example.com", "email"),
    ("jane&#64;example.com", "email"),
    ("jane&#064;example.com", "email"),
    ("jane&#x40;example.com", "email"),
    ("jane&commat;example.com", "email"),
    ("ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ", "email"),
    ("de89370400440532013000", "iban"),
    ("de89 3704 0044 0532 0130 00", "iban"),
    ("DE89\u00a03704\u00a00044\u00a00532\u00a00130\u00a000", "iban"),
    ("123 45 6789", "ssn"),
    ("123.45.6789", "ssn"),
    ("123-45 6789", "ssn"),
    ("123-45-6789".translate(FW), "ssn"),
    (f"123{ZW}-45-6789", "ssn"),
    ("555 123 4567", "phone"),
    ("555-123 4567", "phone"),
    ("1 800 555 0199", "phone"),
    ("555\u2011123\u20114567", "phone"),  # non-breaking hyphens
    ("555-123-4567".translate(AR), "phone"),
    ("+1 555 123 4567".translate(FW).replace("+", "＋"), "phone"),
    ("１９２.１６８.１.２０", "ip_address"),
]


@pytest.mark.parametrize(("value", "kind"), OBFUSCATED)
def test_obfuscated_value_is_found_with_its_original_characters(value: str, kind: str) -> None:
    text = f"Here it is: {value} - thanks."
    assert found(text) == [(kind, value)]
    assert redact(text) == f"Here it is: [{kind.upper()}_REDACTED] - thanks."


def test_zero_width_characters_inside_are_redacted_too() -> None:
    text = f"card 4{ZW}1{ZW}11 1111 1111 1111{ZW} end"
    # the zero-width character after the number is outside the finding and stays
    assert redact(text) == f"card [CREDIT_CARD_REDACTED]{ZW} end"


def test_several_disguises_in_one_text_keep_the_rest_intact() -> None:
    text = ("Ｃｏｎｔａｃｔ ｍｅ: jane%40example.com, ３７８２８２２４６３１０００５, "
            "naïve café 😀, ssn 123 45 6789.")
    assert redact(text) == ("Ｃｏｎｔａｃｔ ｍｅ: [EMAIL_REDACTED], [CREDIT_CARD_REDACTED], "
                            "naïve café 😀, ssn [SSN_REDACTED].")


def test_expanding_nfkc_characters_map_back() -> None:
    # U+FB01 'ﬁ' becomes two characters; the email after it still maps exactly
    text = "ﬁle owner: ﬁona@example.com"
    assert found(text) == [("email", "ﬁona@example.com")]
    assert redact(text) == "ﬁle owner: [EMAIL_REDACTED]"


def test_normalize_fast_path_and_identity() -> None:
    for plain in ("plain ascii text 123", "", "a@b.co"):
        assert not needs_normalizing(plain)
        assert normalize(plain).identity
    for text in ("naïve café 😀 漢字", "émoji 🎉 and 中文"):  # already NFKC, nothing special
        assert needs_normalizing(text)
        assert normalize(text).identity
    n = normalize(f"a{ZW}b％40c")
    assert not n.identity and n.text == "ab%40c"  # '％' is fullwidth: NFKC gives '%'
    n = normalize("x%40y &#64; &commat;")
    assert n.text == "x@y @ @"
    assert n.original_span(1, 2) == (1, 4)


def test_normalized_text_is_what_detect_sees() -> None:
    n = normalize("٤١١١١١١١١١١١١١١١")
    assert n.text == "4111111111111111"
    assert [f.kind for f in detect(n.text)] == ["credit_card"]
    assert n.original_span(0, 16) == (0, 16)


@pytest.mark.parametrize(
    "text",
    [
        "Room 4 555 123 4567",  # a number run, not a phone
        "Sizes: 256 512 1024 2048",
        "Phone numbers look like 555 0199 in films.",
        "Scores 12 34 5678 are fine",
        "Encoded: a%40b and &#64;home are not addresses",
        "zero\u200bwidth\u200bjoiners in prose and العربية ١٢٣ text",
    ],
)
def test_still_not_pii(text: str) -> None:
    assert scan(text) == []


def test_digit_blocks_match_unicodedata() -> None:
    import sys
    import unicodedata

    from iron_sdk.safety.normalize import DIGIT_ZEROS

    zeros = tuple(c for c in range(0x80, sys.maxunicode + 1)
                  if unicodedata.category(chr(c)) == "Nd" and unicodedata.digit(chr(c)) == 0)
    assert zeros == DIGIT_ZEROS


def test_em_dash_in_prose_is_not_touched_but_between_digits_it_is() -> None:
    assert normalize("Prose \u2014 with an em dash, caf\u00e9.").identity
    n = normalize("555\u2014123\u20144567 and caf\u00e9 \u2014 ok")
    assert n.text == "555-123-4567 and caf\u00e9 \u2014 ok"
