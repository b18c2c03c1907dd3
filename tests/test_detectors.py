"""Tests for iron_sdk.safety.detectors: positives per kind, a false-positive corpus, redaction."""

from __future__ import annotations

import dataclasses

import pytest

from iron_sdk.safety import detectors
from iron_sdk.safety.detectors import KINDS, Finding, placeholder, redact, scan


def found(text: str) -> list[tuple[str, str]]:
    """(kind, matched text) pairs, which is what the assertions care about."""
    return [(f.kind, text[f.start:f.end]) for f in scan(text)]


# Secrets are assembled at runtime so that this file itself does not look like it leaks any.
AWS_ID = "AKIA" + "IOSFODNN7EXAMPLE"
AWS_STS_ID = "ASIA" + "Y34FZKBOKMUTVV7A"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
OPENAI_LEGACY = "sk-" + "T3BlbkFJ" + "a1B2c3D4e5F6g7H8i9J0" * 2
OPENAI_PROJ = "sk-proj-" + "Ab3dEf6hIj9lMn2pQr5tUv8xYz" * 2
ANTHROPIC = "sk-ant-api03-" + "x7Yq2Lp9Kd4Rt6Vb1Nm3Zs8Wc5Hf0Jg" * 3 + "-AAAA"
GITHUB_PAT = "ghp_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6"
GITHUB_OAUTH = "gho_" + "16C7e42F292c6912E7710c838347Ae178B4a"
GITHUB_SERVER = "ghs_" + "a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6q7r8"
GITHUB_FINE = (
    "github_pat_" + "11ABCDEFG0123456789abc_"
    + "defghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVW"
)
SLACK_BOT = "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
SLACK_USER = "xoxp-" + "123456789012-123456789012-123456789012-abcdef0123456789abcdef0123456789"
GOOGLE = "AIza" + "SyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"
STRIPE_LIVE = "sk_live_" + "51H8xYzAbCdEfGhIjKlMnOpQr"
STRIPE_RESTRICTED = "rk_live_" + "51H8xYzAbCdEfGhIjKlMnOpQr"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM_BODY = "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi\nZ1BjP5CE/Wm/Rr500P\n"


def pem(label: str) -> str:
    return f"-----BEGIN {label}PRIVATE KEY-----\n{PEM_BODY}-----END {label}PRIVATE KEY-----"


# ----------------------------------------------------------------------------------- contract
def test_contract_shapes() -> None:
    assert KINDS == (
        "email", "phone", "ssn", "credit_card", "iban", "ip_address", "api_key", "private_key",
        "jwt",
    )
    f = Finding("email", 1, 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.start = 2  # type: ignore[misc]
    assert not hasattr(f, "__dict__")  # slots
    assert [placeholder(k) for k in KINDS] == [
        "[EMAIL_REDACTED]", "[PHONE_REDACTED]", "[SSN_REDACTED]", "[CREDIT_CARD_REDACTED]",
        "[IBAN_REDACTED]", "[IP_ADDRESS_REDACTED]", "[API_KEY_REDACTED]",
        "[PRIVATE_KEY_REDACTED]", "[JWT_REDACTED]",
    ]
    assert placeholder("passport") == "[PASSPORT_REDACTED]"  # custom / plugin kinds
    assert placeholder("date_of_birth") == "[DATE_OF_BIRTH_REDACTED]"
    for bad in ("Passport", "no spaces", "", "x" * 41, "1st"):
        with pytest.raises(ValueError):
            placeholder(bad)
    assert set(detectors.__all__) >= {"Finding", "scan", "redact", "KINDS", "placeholder"}


def test_package_reexports() -> None:
    import iron_sdk.safety as safety

    assert safety.scan is scan and safety.redact is redact and safety.Finding is Finding


def test_empty_and_trivial_inputs() -> None:
    assert scan("") == []
    assert scan("a") == []
    assert scan("@") == []
    assert scan("+") == []
    assert redact("") == ""
    assert redact("hello") == "hello"


# ---------------------------------------------------------------------------------- positives
@pytest.mark.parametrize(
    "email",
    [
        "john.doe@example.com",
        "j.smith+newsletter@mail.example.co.uk",
        "first_last%dept@sub-domain.example.org",
        "ALLCAPS@EXAMPLE.IO",
        "a@b.de",
    ],
)
def test_email(email: str) -> None:
    assert found(f"Contact: {email}, thanks.") == [("email", email)]


def test_email_inside_longer_strings() -> None:
    assert found("<mailto:jane.roe@example.com>") == [("email", "jane.roe@example.com")]
    assert found("?user=jane.roe@example.com&x=1") == [("email", "jane.roe@example.com")]
    assert found('{"owner": "ops-team@corp.example.net"}') == [
        ("email", "ops-team@corp.example.net")
    ]
    # a leading dot is not part of the local part; trailing sentence dot is not in the domain
    assert found("reply to .bob@example.com.") == [("email", "bob@example.com")]


@pytest.mark.parametrize(
    "phone",
    [
        "(555) 123-4567",
        "(555)123-4567",
        "555-123-4567",
        "555.123.4567",
        "1-800-555-0199",
        "+1 555 123 4567",
        "+1-555-123-4567",
        "+1 (555) 123-4567",
        "+15551234567",
        "+44 20 7946 0958",
        "+49 30 1234567",
        "+33 1 23 45 67 89",
        "+91 98765 43210",
        "+44 (0) 20 7946 0958",
        "+4915112345678",
    ],
)
def test_phone(phone: str) -> None:
    assert found(f"Call me at {phone} tomorrow.") == [("phone", phone)]
    assert found(f"{phone}") == [("phone", phone)]


@pytest.mark.parametrize("ssn", ["123-45-6789", "078-05-1120", "219-09-9999", "665-99-0001"])
def test_ssn(ssn: str) -> None:
    assert found(f"SSN: {ssn}.") == [("ssn", ssn)]


@pytest.mark.parametrize(
    "ssn",
    ["000-12-3456", "666-12-3456", "900-12-3456", "999-99-9999", "123-00-4567", "123-45-0000"],
)
def test_invalid_ssn_not_flagged(ssn: str) -> None:
    assert scan(f"SSN: {ssn}") == []


@pytest.mark.parametrize(
    "card",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5500-0000-0000-0004",
        "5500 0000 0000 0004",
        "378282246310005",
        "3782 822463 10005",
        "30569309025904",
        "6011111111111117",
        "3530111333300000",
        "4222222222222",
        "2223003122003222",
        "4111.1111.1111.1111",
        "4111 1111-1111 1111",  # mixed separators
        "4111.1111-1111 1111",
    ],
)
def test_credit_card(card: str) -> None:
    assert found(f"Card: {card}, exp 12/27") == [("credit_card", card)]


@pytest.mark.parametrize(
    "number",
    [
        "4111 1111 1111 1112",  # Luhn fails
        "4111111111111112",
        "5500-0000-0000-0005",
        "378282246310006",
        "1705312200000",  # millisecond timestamp (starts with 1)
        "9400 1000 0000 0000 0000 00",  # USPS tracking (starts with 9)
        "41111 1111 1111 111",  # wrong grouping
    ],
)
def test_not_a_card(number: str) -> None:
    assert scan(f"Number: {number} ok") == []


@pytest.mark.parametrize(
    "iban",
    [
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "GB82WEST12345698765432",
        "GB82 WEST 1234 5698 7654 32",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
        "BE68 5390 0754 7034",
        "CH93 0076 2011 6238 5295 7",
        "NO93 8601 1117 947",
        "de89370400440532013000",  # lower case
        "gb82 west 1234 5698 7654 32",
    ],
)
def test_iban(iban: str) -> None:
    assert found(f"IBAN: {iban}.") == [("iban", iban)]


@pytest.mark.parametrize(
    "text",
    [
        "GB82WEST12345698765433",  # checksum off by one
        "DE89 3704 0044 0532 0130 01",
        "DE00370400440532013000",
        "DE8937040044053201300",  # one character short for DE
        "ZZ89370400440532013000",  # not a country
        "de89370400440532013001",  # lower case, checksum off by one
    ],
)
def test_invalid_iban_not_flagged(text: str) -> None:
    assert scan(f"IBAN {text} end") == []


def test_spaced_iban_followed_by_more_digits_is_cut_at_country_length() -> None:
    text = "IBAN DE89 3704 0044 0532 0130 00 1234 and more"
    assert found(text) == [("iban", "DE89 3704 0044 0532 0130 00")]


@pytest.mark.parametrize(
    "ip",
    [
        "192.168.1.20",
        "10.0.0.1",
        "8.8.8.8",
        "255.255.255.255",
        "172.16.254.1",
        "2001:db8::8a2e:370:7334",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "fe80::1ff:fe23:4567:890a",
        "::ffff:192.168.1.1",
        "2001:db8::1",
    ],
)
def test_ip_address(ip: str) -> None:
    assert found(f"host {ip} is down") == [("ip_address", ip)]
    assert found(f"(ip={ip})") == [("ip_address", ip)]


def test_ip_in_urls_and_with_ports() -> None:
    assert found("http://192.168.1.20:8080/admin") == [("ip_address", "192.168.1.20")]
    assert found("http://[2001:db8::1]:8443/") == [("ip_address", "2001:db8::1")]
    assert found("subnet 10.0.0.0/24.") == [("ip_address", "10.0.0.0")]
    assert found("peer host:2001:db8::1 up") == [("ip_address", "2001:db8::1")]


@pytest.mark.parametrize(
    "text",
    [
        "999.1.1.1",
        "256.1.1.1",
        "1.2.3.4.5",
        "01.02.03.04",
        "v1.2.3.4",
        "version 1.2.3.4",
        "Version 10.0.19045.1234",
        "release 2.0.0.1",
        "see section 1.2.3.4",
        "https://tools.ietf.org/html/rfc6749#section-4.1.2.1",
        'ATTRIBUTES = ("urn:oid:2.5.4.42", "urn:oid:2.5.4.4")',
        "1.2.3",
        "x = arr[::2]",
        "12:34:56",
        "dead::beef",
        "00:1A:2B:3C:4D:5E",
        "pairs = zip(stack[::2], stack[1::2]); odd = layout[3::2]",
        'Specifier("== 1.2.3.0") and foo==1.0.0.0, bar>=2.0.0.1',
        # loopback / "any" addresses are deliberately not reported
        "http://127.0.0.1:8000 and 0.0.0.0:4000",
        "bind [::1]:8080 or [::]:80",
    ],
)
def test_not_an_ip(text: str) -> None:
    assert scan(text) == []


@pytest.mark.parametrize(
    "key",
    [
        AWS_ID, AWS_STS_ID, OPENAI_LEGACY, OPENAI_PROJ, ANTHROPIC, GITHUB_PAT, GITHUB_OAUTH,
        GITHUB_SERVER, GITHUB_FINE, SLACK_BOT, SLACK_USER, GOOGLE, STRIPE_LIVE, STRIPE_RESTRICTED,
    ],
)
def test_api_keys(key: str) -> None:
    assert found(f"export TOKEN={key}") == [("api_key", key)]
    assert found(f'config = {{"key": "{key}"}}') == [("api_key", key)]
    assert found(key) == [("api_key", key)]


@pytest.mark.parametrize(
    "label",
    [
        "aws_secret_access_key = ",
        "AWS_SECRET_ACCESS_KEY=",
        '"SecretAccessKey": "',
        "aws_secret_key: ",
        "secret_access_key='",
    ],
)
def test_labelled_aws_secret(label: str) -> None:
    text = f"{label}{AWS_SECRET}\n"
    assert found(text) == [("api_key", AWS_SECRET)]
    assert redact(text) == f"{label}[API_KEY_REDACTED]\n"


def test_unlabelled_40_char_string_is_not_an_aws_secret() -> None:
    assert scan(f"my secret is {AWS_SECRET}") == []
    assert scan(f"checksum {AWS_SECRET}") == []


@pytest.mark.parametrize(
    "text",
    [
        "sk-" + "short1",  # too short
        "scikit-learn sk-spinner-double-bounce-container",  # no digit: a CSS class, not a key
        "madatnlp/sk-kogptv2-kormath-causal",  # a model name: too short for a key
        "task-" + "a1b2c3d4e5f6g7h8i9j0k1l2",  # 'sk-' inside a word
        "ghp_" + "tooShort123",
        "AKIA" + "IOSFODNN7EXAMPL",  # 15 chars after the prefix
        "XAKIA" + "IOSFODNN7EXAMPLE",  # not at a word start
    ],
)
def test_not_an_api_key(text: str) -> None:
    assert scan(text) == []


@pytest.mark.parametrize("label", ["RSA ", "EC ", "OPENSSH ", "", "ENCRYPTED "])
def test_private_key_block(label: str) -> None:
    block = pem(label)
    text = f"Here is my key:\n{block}\nplease keep it safe"
    assert found(text) == [("private_key", block)]
    assert redact(text) == "Here is my key:\n[PRIVATE_KEY_REDACTED]\nplease keep it safe"


def test_truncated_private_key_is_redacted_to_the_end_of_its_body() -> None:
    text = "key: -----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZ"
    assert redact(text) == "key: [PRIVATE_KEY_REDACTED]"
    text = "key: -----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZ\n... (cut). Help?"
    assert redact(text) == "key: [PRIVATE_KEY_REDACTED]... (cut). Help?"
    # a mere mention of the header only loses the header
    text = 'load(private_key_pem="-----BEGIN PRIVATE KEY-----...", key_id="k1")'
    assert redact(text) == 'load(private_key_pem="[PRIVATE_KEY_REDACTED]...", key_id="k1")'


def test_encrypted_legacy_pem_with_headers() -> None:
    block = (
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n"
        "DEK-Info: AES-128-CBC,2AF25325A9B286F4CBD8A2C8F3B1A9E0\n\n"
        f"{PEM_BODY}-----END RSA PRIVATE KEY-----"
    )
    assert found(f"x {block} y") == [("private_key", block)]


def test_two_private_keys() -> None:
    text = f"{pem('EC ')}\n\n{pem('OPENSSH ')}"
    assert found(text) == [("private_key", pem("EC ")), ("private_key", pem("OPENSSH "))]


def test_public_key_and_certificate_are_not_private_keys() -> None:
    assert scan("-----BEGIN PUBLIC KEY-----\nMIIBIjAN\n-----END PUBLIC KEY-----") == []
    assert scan("-----BEGIN CERTIFICATE-----\nMIIDdzCC\n-----END CERTIFICATE-----") == []


def test_jwt() -> None:
    assert found(f"Authorization: Bearer {JWT}") == [("jwt", JWT)]
    assert found(f"token={JWT}&next=/") == [("jwt", JWT)]
    unsigned = JWT.rsplit(".", 1)[0] + "."
    assert found(f"alg none: {unsigned} done") == [("jwt", unsigned)]


def test_not_a_jwt() -> None:
    assert scan("eyJhbGciOiJIUzI1NiJ9 has only one segment") == []
    assert scan("theyJump.over.fences") == []


# ------------------------------------------------------------------------ false-positive corpus
ORDINARY = [
    "The total is $1,299.99 including tax.",
    "Shipping costs USD 45.00 per parcel.",
    "Der Preis beträgt €12,50 pro Stück.",
    "Invoice total: 12 345,67 EUR",
    "The meeting is on 2024-01-15 at the main office.",
    "Please reply before 15/01/2024 or 01/15/2024.",
    "Launch date: Jan 15, 2024 (tentative).",
    "Event timestamp 2024-01-15T10:30:00Z and 2024-01-15T10:30:00+05:30.",
    "Standup at 10:30, retro at 16:45:30.",
    "Upgrade to v1.2.3 before Friday; v2.14.0-rc.1 is out.",
    "We run Python 3.11.7 and Node v18.17.1.",
    "Windows version 10.0.19045.1234 is required.",
    "Tested with version 1.2.3.4 of the plugin.",
    "Order ORD-2024-000123 has shipped.",
    "Ticket #123456789 was closed.",
    "Invoice INV-88213 is overdue.",
    "Tracking number 1Z999AA10123456784 (UPS).",
    "USPS tracking 9400 1000 0000 0000 0000 00.",
    "We produced 1,000,000 units last year and 2,500,000 this year.",
    "Conversion improved by 12.5% and churn fell 3%.",
    "ISBN 978-3-16-148410-0 is on the shelf.",
    "Ship to ZIP 94105 or 94105-1234.",
    "Commit 3f786850e387550fdab836ed7e6dc881de23001b fixed it.",
    "Request id 123e4567-e89b-12d3-a456-426614174000 failed.",
    "Pick 3, 7 or 42 and multiply by 1024.",
    "for i in range(10):\n    print(i ** 2)",
    "evens = values[::2]; rev = values[::-1]",
    "std::vector<int> v; std::map<std::string, int> m;",
    "const ratio = 16 / 9; // 1920x1080",
    "x = 0x7fffffff & mask; y = 2 ** 31 - 1  # 2147483647",
    "## Release notes\n\n- Fixed bug #4521\n- Bumped deps to 2.0.1\n",
    "| quarter | revenue |\n|---|---|\n| Q1 | 1,204 |\n| Q2 | 1,391 |",
    "The quick brown fox jumps over the lazy dog.",
    "Please summarize the attached document in three bullet points.",
    "Mention @alice and @bob in the channel, then run `npm i react@18.2.0`.",
    "Use the retina asset icon@2x.png for high-DPI screens.",
    "Temperature rose to +25°C; scores were +5 and -3.",
    "Epoch 1705312200 / millis 1705312200000.",
    "Server listens on localhost:8080 and port 443 over HTTP/1.1 200 OK.",
    "Coordinates 37.7749, -122.4194 (San Francisco).",
    "The ratio was 3:2 and the final score 3-1.",
    "Call 911 in an emergency; dial extension x1234 for support.",
    "Read chapter 4.2.1 and section 1.2.3.4 of the manual.",
    "Install with pip install scikit-learn==1.4.0 numpy>=1.26.",
    "Room 4B, building 12, floor 3.",
    "Product code AB12CDEF and SKU 00012345 are in stock.",
    "Base64 of hello world is aGVsbG8gd29ybGQ= by the way.",
    "Set task-timeout=30s and ask-user=false in the config.",
    "The 2023 report lists 17 risks, 4 of them critical (see p. 123-124).",
    "Lat 48.8566, long 2.3522; elevation 35 m.",
    "Our secret sauce is careful engineering, not a secret key.",
    "Use chmod 755 and umask 022 on the deploy host.",
    "Phone numbers look like 555 0199 in films.",
    "Math: (3 + 4) * 5 = 35 and 10 - 2 = 8.",
    # dates and times
    "Deadlines: 2024-01-15, 2024/01/15, 15.01.2024, 01-15-2024 and 15 Jan 2024.",
    "The window is 2024-03-01 00:00 to 2024-03-31 23:59:59 UTC.",
    "Logged at 2024-01-15 10:30:00.123456 and 10:30:00.123 PM.",
    "Dates like 2024 01 15 or 20240115 appear in file names.",
    "Der Termin ist am 15.\u00a0Januar\u00a02024 um 14:30\u00a0Uhr.",
    "会议定于２０２４年１月１５日１０：３０举行。",
    "Cron: 0 5 * * 1-5 and 30 2 1 1 *.",
    # versions
    "Released 1.2.3, 10.15.7, 2.0.0-beta.1+build.5 and 4.19.0-25-amd64.",
    "Kernel 5.15.0-91-generic; Chrome 120.0.6099.109; macOS 14.2.1.",
    "Docker image python:3.12.1-slim-bookworm, node:20.10.0-alpine3.19.",
    "Versions 2024.1.0, 2023.12.2 and 1.26.4 are supported.",
    # order numbers, ids
    "Order #100-2345678-1234567 and PO 4500012345 were received.",
    "Amazon order 112-3456789-1234567 shipped; RMA 2024-0042.",
    "Case 00012345, claim 2023-45-6789A, policy no. 123456789.",
    "Invoice 2024-000123-45 and account ref 12-3456-7890123-00.",
    # prices, quantities
    "Prices: $19.99, $1,234.56, \u20ac1.234,56, \u00a512,345 and \u00a3 9.99.",
    "Le prix est de 12\u202f345,67\u00a0\u20ac TTC, soit 1\u00a0234\u00a0567 au total.",
    "Budget: 1 234 567 USD, 2 500 000 EUR, 120 000 000 JPY.",
    "Sizes 128, 256, 512 and 1024 MB; batch of 32 x 64 x 64.",
    "The recipe needs 250 g flour, 125 ml milk and 2 eggs.",
    # hashes and ids
    "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "SHA-256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 (empty).",
    "Merged 4b825dc642cb6eb9a060e54bf8d69288fbee4904 and short sha a1b2c3d, 9fceb02.",
    "md5 d41d8cd98f00b204e9800998ecf8427e, sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709.",
    "IDs: 550e8400-e29b-41d4-a716-446655440000, 6ba7b810-9dad-11d1-80b4-00c04fd430c8.",
    "UUIDv7 018d3f5e-7c4a-7b2e-9f1a-3c5d7e9f1a2b and ULID 01ARZ3NDEKTSV4RRFFQ69G5FAV.",
    "Blob digest sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4.",
    # coordinates
    "Coordinates 40.7128\u00b0 N, 74.0060\u00b0 W; also 51.5074, -0.1278.",
    "GPS: 48.858844, 2.294351 and -33.8688, 151.2093.",
    "Geohash u09tvw0f6szye, lat/lon 35.6762,139.6503.",
    # misc numbers
    "Phone-free: call extension 4567 or room 555 on floor 12.",
    "Page 123 of 456; lines 10-20 and 300-400.",
    "The score was 101-99 after 3 overtimes; attendance 18 997.",
    "Serial SN-2024-00017, model X1 Carbon Gen 11, part 5B10W13930.",
    "Temperature \u221240\u00a0\u00b0C to +85\u00a0\u00b0C; tolerance \u00b10.5\u00a0%.",
    "Arabic digits: \u0661\u0662\u0663 apples and \u0664\u0665 pears.",
]


def test_ordinary_corpus_is_large_enough() -> None:
    assert len(ORDINARY) >= 90


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_has_no_findings(text: str) -> None:
    assert scan(text) == []
    assert redact(text) == text


def test_ordinary_corpus_joined_has_no_findings() -> None:
    text = "\n".join(ORDINARY)
    assert scan(text) == []


# ---------------------------------------------------------------------------------- redaction
def test_redact_each_kind() -> None:
    text = (
        f"mail a.b@example.com, phone (555) 123-4567, ssn 123-45-6789, "
        f"card 4111 1111 1111 1111, iban DE89370400440532013000, ip 10.0.0.1, "
        f"key {GITHUB_PAT}, jwt {JWT}\n{pem('RSA ')}"
    )
    assert redact(text) == (
        "mail [EMAIL_REDACTED], phone [PHONE_REDACTED], ssn [SSN_REDACTED], "
        "card [CREDIT_CARD_REDACTED], iban [IBAN_REDACTED], ip [IP_ADDRESS_REDACTED], "
        "key [API_KEY_REDACTED], jwt [JWT_REDACTED]\n[PRIVATE_KEY_REDACTED]"
    )
    assert [f.kind for f in scan(text)] == [
        "email", "phone", "ssn", "credit_card", "iban", "ip_address", "api_key", "jwt",
        "private_key",
    ]


def test_redact_with_explicit_findings() -> None:
    text = "abc 4111 1111 1111 1111 def"
    assert redact(text, [Finding("credit_card", 4, 23)]) == "abc [CREDIT_CARD_REDACTED] def"
    # only the given findings are applied, even if scan() would find more
    assert redact("x a@b.io y 10.0.0.1", [Finding("email", 2, 8)]) == (
        "x [EMAIL_REDACTED] y 10.0.0.1"
    )
    assert redact("nothing here", []) == "nothing here"


def test_redact_explicit_overlapping_findings_leaves_no_flagged_character() -> None:
    text = "0123456789abcdef"
    out = redact(text, [Finding("phone", 6, 12), Finding("email", 2, 8)])
    assert out == "01[EMAIL_REDACTED]cdef"
    # unsorted input is fine
    assert redact(text, [Finding("jwt", 10, 12), Finding("ssn", 0, 2)]) == (
        "[SSN_REDACTED]23456789[JWT_REDACTED]cdef"
    )


def test_redact_is_idempotent() -> None:
    text = f"Contact john@example.com or +44 20 7946 0958, token {OPENAI_PROJ}."
    once = redact(text)
    assert once == "Contact [EMAIL_REDACTED] or [PHONE_REDACTED], token [API_KEY_REDACTED]."
    assert redact(once) == once
    assert scan(once) == []


# ------------------------------------------------------------------- overlaps / multi findings
def test_findings_are_sorted_and_non_overlapping() -> None:
    text = (
        f"{JWT} then 4111-1111-1111-1111 then jane@example.com then {AWS_ID} "
        "then 2001:db8::1 then 192.168.0.1 then +1 555 123 4567 then 078-05-1120"
    )
    findings = scan(text)
    assert [f.kind for f in findings] == [
        "jwt", "credit_card", "email", "api_key", "ip_address", "ip_address", "phone", "ssn",
    ]
    for a, b in zip(findings, findings[1:], strict=False):
        assert a.end <= b.start
    assert all(0 <= f.start < f.end <= len(text) for f in findings)


def test_iban_digit_groups_are_not_also_a_card() -> None:
    # "3704 0044 0532 0130" on its own is shaped like a card; the longer IBAN wins.
    text = "pay to DE89 3704 0044 0532 0130 00 today"
    assert found(text) == [("iban", "DE89 3704 0044 0532 0130 00")]


def test_ipv4_mapped_ipv6_is_one_finding() -> None:
    assert found("::ffff:10.1.2.3") == [("ip_address", "::ffff:10.1.2.3")]


def test_email_with_digits_is_one_email() -> None:
    # the local part looks like a card / phone, but the whole address is the finding
    text = "4111111111111111@example.com and 555-123-4567@example.org"
    assert found(text) == [
        ("email", "4111111111111111@example.com"),
        ("email", "555-123-4567@example.org"),
    ]


def test_card_number_inside_a_longer_digit_run_is_not_a_card() -> None:
    assert scan("id 41111111111111110000 end") == []
    assert scan("ref X4111111111111111 end") == []


def test_phone_next_to_card() -> None:
    text = "card 4111111111111111, phone 555-123-4567"
    assert found(text) == [("credit_card", "4111111111111111"), ("phone", "555-123-4567")]


def test_many_findings_in_a_long_text() -> None:
    chunk = "user{i}@example.com paid with 4111 1111 1111 1111 from 10.0.{i}.1. "
    text = "".join(chunk.format(i=i) for i in range(200))
    findings = scan(text)
    assert len(findings) == 600
    assert [f.kind for f in findings[:3]] == ["email", "credit_card", "ip_address"]
    assert "@" not in redact(text)


def test_offsets_refer_to_the_original_text() -> None:
    text = "é ü 😀 mail: zoë@exämple.com ok"  # non-ASCII before and inside the finding
    assert found(text) == [("email", "zoë@exämple.com")]
    assert scan("😀 192.168.1.20") == [Finding("ip_address", 2, 14)]
    # CJK text often has no spaces around an address
    assert found("请联系john@example.com谢谢") == [("email", "john@example.com")]
    assert redact("😀 192.168.1.20!") == "😀 [IP_ADDRESS_REDACTED]!"
