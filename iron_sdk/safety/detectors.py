"""Fast PII and secret detectors for prompt/response text.

This runs on every LLM call, so the design is "cheap gate first, precise check second":

* every full-text regex starts with a literal (``@``, ``-``, ``eyJ``, ...) or one small ASCII
  character class, because that is what lets CPython's ``re`` skip ahead without trying a match at
  every position (a leading look-behind, ``\\b`` or ``\\d`` is several times slower);
  boundary look-behinds therefore come *after* the first character;
* all digit-based kinds (phone, SSN, card, IPv4, IBAN) share one regex, so ordinary text is
  scanned for digits once; IBANs are anchored on their first check digit;
* candidates are validated in Python (Luhn, IBAN country length + mod-97, SSN ranges, IPv4
  octets, :mod:`ipaddress` for IPv6), which keeps false positives on ordinary numbers low;
* a text longer than 64 K characters is searched a window at a time
  (:mod:`iron_sdk.safety.windows`), with the findings of one search: no single regex call
  holds the GIL for more than a millisecond or two, however long the prompt.

Overlaps are resolved "longest wins, then most specific kind", so an IBAN's digit groups are not
also reported as a card and an IPv4-mapped IPv6 address is one finding.

Deliberate trade-offs (pinned by ``tests/test_detectors.py``):

* the text is normalized first (:mod:`iron_sdk.safety.normalize`: NFKC, zero-width and bidi
  characters removed, Unicode digits, dashes and spaces to ASCII, ``%40``/``&#64;`` to ``@``),
  and the offsets are mapped back, so disguised values are found and redacted exactly;
* digit groups may be separated by any mix of space, ``-`` and ``.``
  (``4111.1111 1111-1111``, ``123 45 6789``, ``555 123 4567``);
* phones need structure: ``+country ...`` (8-15 digits) or US ``(555) 123-4567`` /
  ``555-123-4567`` / ``555 123 4567``; a bare ``5551234567`` is not a phone;
* a dotted quad right after a word such as ``v``, ``version``, ``release``, ``build``,
  ``section`` or ``oid`` is a version/section number, not an IP (``version 1.2.3.4``,
  ``#section-4.1.2.1``); ``10.0.19045.1234`` is never an IP (octet > 255), nor is anything with
  leading-zero octets (``01.02.03.04``);
* IPv6 needs two non-empty groups (one of 3+ characters) and a digit, so slices like
  ``x[1::2]``, ``std::map`` or ``dead::beef`` are not IPs;
* cards must start with 2-6 (Visa/Mastercard/Amex/Discover/JCB/UnionPay/Diners ranges) besides
  passing Luhn, which rejects e.g. millisecond timestamps; grouped cards must use 4-4-4-4(-3) or
  4-6-4/5 groups;
* IBANs (either case) are of a known country and its exact length;
* ``sk-`` keys need 32+ characters and a digit (``sk-spinner-double-bounce`` is a CSS class);
* loopback and "any" addresses (``127.0.0.1``, ``0.0.0.0``, ``::1``) are not reported: they are
  not personal data and are everywhere in code; ``foo==1.0.0.0`` is a version, not an IP;
* a PEM private key block without its END line is redacted as far as its base64 body goes.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_right
from dataclasses import dataclass

from iron_sdk.safety.normalize import needs_normalizing, normalize
from iron_sdk.safety.validators import iban_ok, luhn_ok
from iron_sdk.safety.windows import finditer, search

__all__ = ["HOLDBACK", "KINDS", "Finding", "detect", "placeholder", "redact", "resolve", "scan"]

KINDS: tuple[str, ...] = (
    "email", "phone", "ssn", "credit_card", "iban", "ip_address", "api_key", "private_key", "jwt",
)

# Tie-break between equally long overlapping findings: lower = more specific.
_PRIORITY: dict[str, int] = {
    k: i
    for i, k in enumerate((
        "private_key", "jwt", "api_key", "iban", "credit_card", "ssn", "email", "ip_address",
        "phone",
    ))
}
_PLACEHOLDERS: dict[str, str] = {k: f"[{k.upper()}_REDACTED]" for k in KINDS}

# A stream must hold back this many trailing characters so that a built-in finding is seen
# whole before any of it is released: the longest text a detector needs before it reports
# anything (a 64-character email local part plus '@a.bc', an AWS secret with its label, a
# spaced IBAN, a PEM header) plus the few characters of look-ahead after it. Findings that
# keep growing (keys, JWTs, PEM bodies) are held from their start while they touch the end.
HOLDBACK = 100

_Span = tuple[int, int, str]  # (start, end, kind): findings before overlap resolution


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # one of KINDS
    start: int  # offsets into the scanned text
    end: int


# Kinds of custom patterns and detector plugins: lower-case identifiers ("employee_id").
KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")


def placeholder(kind: str) -> str:
    """The redaction marker for ``kind``, e.g. ``"[EMAIL_REDACTED]"``, ``"[PERSON_REDACTED]"``.

    Any lower-case identifier is a kind (custom patterns, detector plugins); anything else
    raises ValueError.
    """
    try:
        return _PLACEHOLDERS[kind]
    except KeyError:
        if not KIND_RE.fullmatch(kind):
            raise ValueError(f"not a finding kind: {kind!r}") from None
        return f"[{kind.upper()}_REDACTED]"


# --------------------------------------------------------------------------------------- email
# Anchored on '@' (str.find), so text without '@' costs one memchr. The local part is found by
# walking back from the '@' (a regex search there would retry at every window position). Accented
# Latin letters are allowed in the local part and any letters in domain labels (internationalised
# addresses), but the TLD is ASCII so that "john@example.com谢谢" (no space in CJK text) ends at
# ".com"; for the same reason the local part stops at non-Latin letters.
_EMAIL_LOCAL_CHARS = frozenset("._%+-")
_EMAIL_DOMAIN = re.compile(
    r"[^\W_](?:[\w\-]{0,61}[^\W_])?"
    r"(?:\.[^\W_](?:[\w\-]{0,61}[^\W_])?)*"
    r"\.([A-Za-z]{2,24})(?![A-Za-z0-9\-])"
)
# Asset names such as icon@2x.png look exactly like addresses.
_FILE_TLDS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "pdf"})


def _emails(text: str, out: list[_Span]) -> None:
    at = text.find("@")
    while at != -1:
        start = at
        limit = max(0, at - 64)  # RFC 5321: a local part has at most 64 characters
        while start > limit:
            ch = text[start - 1]
            if not ((ch < "\u0250" and ch.isalnum()) or ch in _EMAIL_LOCAL_CHARS):
                break
            start -= 1
        while start < at and text[start] == ".":  # a local part cannot start with '.'
            start += 1
        if start < at:
            dom = _EMAIL_DOMAIN.match(text, at + 1)
            if dom is not None and dom.group(1).lower() not in _FILE_TLDS:
                out.append((start, dom.end(), "email"))
        at = text.find("@", at + 1)


# ------------------------------------------------- phone, SSN, card, IPv4, IBAN: one digit scan
# The leading [0-9] is the only thing re scans for (a leading look-behind or \d would make it try
# every position, several times slower); each branch then checks what came before the digit with
# a fixed-width look-behind. Empty named groups at the end of a branch tell _numbers() which
# branch matched (m.lastgroup).
_NUMERIC = re.compile(
    r"""
    [0-9]
    (?:
        # A digit that starts a token (not inside a word, number or dotted run) and is followed
        # soon by a separator and a digit, or by 12 more digits: a cheap filter that rejects
        # most ordinary numbers (years, prices, counts) before any branch is tried.
        (?<![A-Za-z0-9_.][0-9])
        (?=[0-9]{0,7}[.\- ][0-9]|[0-9]{12})
        (?:
            # IPv4 (octet values and version context checked later); '/' '-' may precede
            [0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![A-Za-z0-9_]|\.[0-9])(?P<ipv4>)
          | (?<![+\-/][0-9])(?<![0-9][ .][0-9])  # not inside a longer number run
            (?:
                # SSN 123-45-6789, 123 45 6789 (ranges checked later)
                [0-9]{2}[ .\-][0-9]{2}[ .\-][0-9]{4}(?![A-Za-z0-9_]|[ .\-][0-9])(?P<ssn>)
                # US '555-123-4567' / '555.123.4567' / '555 123 4567' / '1-800-555-0199'
              | (?:(?<=1)[ .\-][2-9][0-9]{2}[ .\-][0-9]{3}[ .\-][0-9]{4}
                  |(?<=[2-9])[0-9]{2}[ .\-][0-9]{3}[ .\-][0-9]{4})
                (?![A-Za-z0-9_]|[ .\-][0-9])(?P<phone>)
                # cards: 4-4-4-4(-3) or 4-6-4/5 groups, each separator any of ' .-' or none
                # (a removed zero-width separator joins two groups), or 13-19 digits
              | (?:[0-9]{3}[ .\-]?[0-9]{4}[ .\-]?[0-9]{4}[ .\-]?[0-9]{4}(?:[ .\-]?[0-9]{3})?
                  |[0-9]{3}[ .\-]?[0-9]{6}[ .\-]?[0-9]{4,5}
                  |[0-9]{12,18})
                (?![A-Za-z0-9_\-]|[.,][0-9])(?P<card>)
            )
        )
        # IBAN anchored on its first check digit: 'DE89 3704 0044 ...', 'gb82west1234...'
      | (?<=[A-Za-z]{2}[0-9])(?<![A-Za-z0-9][A-Za-z]{2}[0-9])
        [0-9](?:[A-Za-z0-9]{11,30}|(?:[ ][A-Za-z0-9]{4}){2,8}(?:[ ][A-Za-z0-9]{1,3})?)
        (?![A-Za-z0-9])(?P<iban>)
    )
    """,
    re.VERBOSE,
)
# Phones starting with '+' or '(' have their own literal-prefix regexes, run only when the text
# has that character (keeping them out of _NUMERIC saves two failed branches per digit).
_PHONE_PLUS = re.compile(
    r"""
    \+(?<![A-Za-z0-9_+]\+)
    (?=(?:[ .\-()]{0,2}[0-9]){8})  # at least 8 digits: cheap reject of '+5', '+25%', ...
    (?:
        # '+1 555 123 4567', '+1-555-123-4567', '+1 (555) 123-4567', '+15551234567'
        1[ .\-]?(?:\([2-9][0-9]{2}\)|[2-9][0-9]{2})[ .\-]?[0-9]{3}[ .\-]?[0-9]{4}
      # '+44 20 7946 0958', '+33 1 23 45 67 89', '+4915112345678': digits counted later
      | (?P<cc>[2-9])[0-9]{0,2}(?:[ .\-]?\([0-9]{1,4}\))?(?:[ .\-]?[0-9]{1,5}){1,6}
    )
    (?![A-Za-z0-9_]|[.\-][0-9])
    """,
    re.VERBOSE,
)
# '(555) 123-4567', '(555)123-4567'
_PHONE_PAREN = re.compile(
    r"\((?<![A-Za-z0-9_(]\()[2-9][0-9]{2}\) ?[0-9]{3}[ .\-][0-9]{4}(?![A-Za-z0-9_]|[.\-][0-9])"
)
# Words after which a dotted quad is a version/section number rather than an address.
_VERSION_WORDS = frozenset({
    "v", "ver", "version", "release", "build", "section", "sec", "chapter", "step", "clause",
    "appendix", "figure", "fig", "table", "oid", "§",
})
_WORD_CHARS = "abcdefghijklmnopqrstuvwxyz.§"
_VERSION_OPS = ("==", ">=", "<=", "~=", "!=")

# Registry lengths per country (ISO 13616 / SWIFT IBAN registry).
_IBAN_LEN: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def _card_ok(span: str) -> bool:
    digits = span.replace(" ", "").replace("-", "").replace(".", "")
    # 2-6: card network ranges
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits)


def _ssn_ok(span: str) -> bool:
    area, group, serial = span[:3], span[4:6], span[7:]
    return area != "000" and area != "666" and area[0] != "9" and group != "00" and serial != "0000"


def _ipv4_ok(text: str, start: int, span: str) -> bool:
    octets = span.split(".")
    for octet in octets:
        if len(octet) > 1 and (octet[0] == "0" or int(octet) > 255):
            return False
    if octets[0] == "127" or span == "0.0.0.0":  # loopback / "any": not personal, common in code
        return False
    # The word right before it ("version 1.2.3.4", "v. 1.2.3.4", "#section-4.1.2.1",
    # "urn:oid:2.5.4.42"; a 12-char window is enough) or a version specifier ("foo==1.0.0.0").
    before = text[max(0, start - 12):start].rstrip().lower()
    if before.endswith(_VERSION_OPS):
        return False
    before = before.rstrip("-:#")
    word = before[len(before.rstrip(_WORD_CHARS)):]
    return word.rstrip(".") not in _VERSION_WORDS


def _iban_end(text: str, start: int, end: int) -> int:
    """End offset of a valid IBAN starting at ``start`` within ``text[start:end]``, else -1.

    A spaced candidate may run into following groups ("... 0130 00 1234"), so the IBAN is cut
    at the country's length - but only where a group ends.
    """
    length = _IBAN_LEN.get(text[start:start + 2].upper())
    if length is None:
        return -1
    count = 0
    cut = -1
    for i in range(start, end):
        if text[i] != " ":
            count += 1
            if count == length:
                cut = i + 1
                break
    if cut == -1 or (cut < end and text[cut] != " "):
        return -1
    return cut if iban_ok(text[start:cut]) else -1


def _numbers(text: str, out: list[_Span]) -> None:
    for m in finditer(_NUMERIC, text):
        kind = m.lastgroup
        start, end = m.span()
        if kind == "card":
            if _card_ok(m.group()):
                out.append((start, end, "credit_card"))
        elif kind == "ipv4":
            if _ipv4_ok(text, start, m.group()):
                out.append((start, end, "ip_address"))
        elif kind == "ssn":
            if _ssn_ok(m.group()):
                out.append((start, end, "ssn"))
        elif kind == "iban":
            cut = _iban_end(text, start - 2, end)
            if cut != -1:
                out.append((start - 2, cut, "iban"))
        elif kind == "phone":
            out.append((start, end, "phone"))
    if "+" in text:
        for m in finditer(_PHONE_PLUS, text):
            # E.164: at most 15 digits including the country code
            if m.group("cc") is None or 8 <= sum(c.isdigit() for c in m.group()) <= 15:
                out.append((m.start(), m.end(), "phone"))
    if "(" in text:
        out.extend((m.start(), m.end(), "phone") for m in finditer(_PHONE_PAREN, text))


# ------------------------------------------------------------------------------------- IPv6
# Found from its first ':' (a literal prefix, cheap to scan for). The gate already asks for an
# address-like shape - a '::' or eight groups, a group of 3+ hex digits, a boundary at the end -
# so that times ("12:30:45"), MACs, slices ("a[1::2]") and "std::vector" are rejected inside re,
# without a Python-level look at each of them.
_IPV6_GATE = re.compile(
    # Every repetition is bounded (an address has at most 39 hex/colon characters), so a long
    # hex/colon run costs linear time, not quadratic; the possessive run never backtracks (a
    # shorter prefix of the run would fail the final boundary check anyway).
    r":(?=:|[0-9A-Fa-f:]{0,36}::|(?:[0-9A-Fa-f]{1,4}:){6}[0-9A-Fa-f])"
    r"(?:(?<=[0-9A-Fa-f]{3}:)|(?=[0-9A-Fa-f:]{0,36}[0-9A-Fa-f]{3}))"
    r"[0-9A-Fa-f:]{0,38}+(?:\.[0-9]{1,3}){0,3}(?![A-Za-z0-9_:])"
)
_IPV6 = re.compile(
    r"(?:[0-9A-Fa-f]{0,4}:){2,8}"
    r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{1,4})?"
    r"(?![A-Za-z0-9_:]|\.[A-Za-z0-9])"
)
_HEXCOLON = frozenset("0123456789abcdefABCDEF:")
_HEXCOLON_RUN = re.compile(r"[0-9A-Fa-f:]*")
_WORDDOT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")


def _ipv6_ok(s: str) -> bool:
    try:
        addr = ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return not (addr.is_loopback or addr.is_unspecified)


def _ipv6s(text: str, out: list[_Span]) -> None:
    m = search(_IPV6_GATE, text)
    while m is not None:
        colon = m.start()
        lo = colon
        while lo > 0 and colon - lo < 40 and text[lo - 1] in _HEXCOLON:
            lo -= 1
        if lo > 0 and text[lo - 1] in _WORDDOT:  # "Note:dead:..." - the label is not part of it
            lo = colon if text[colon + 1] == ":" else colon + 1
        elif text[lo] == ":" and text[lo + 1] != ":":  # "host:2001:db8::1" - skip the lone ':'
            lo += 1
        cand = _IPV6.match(text, lo)
        if cand is None:  # nothing address-like starts in this hex/colon run: skip all of it
            nxt = _HEXCOLON_RUN.match(text, colon).end()
        else:
            s = cand.group()
            groups = [g for g in s.split(":") if g]
            # Slices ("a[1::2]") and C++ scopes are valid-looking "addresses": require two groups,
            # one of them at least 3 characters long, and a digit.
            if (
                len(groups) >= 2
                and max(map(len, groups)) >= 3
                and any(c.isdigit() for c in s)
                and _ipv6_ok(s)
            ):
                out.append((lo, cand.end(), "ip_address"))
            nxt = max(colon + 1, cand.end())
        m = search(_IPV6_GATE, text, nxt)


# ------------------------------------------------------------------------------ secrets / keys
# Grouped by anchor character so each regex has a literal prefix; the true start (the "sk",
# "ghp", "xoxb" ... before the anchor) is recovered by walking back over letters.
_KEY_UNDERSCORE = re.compile(
    r"_(?:"
    r"(?<=\b[sr]k_)(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe secret / restricted keys
    r"|(?<=\bgh[pousr]_)[A-Za-z0-9]{30,}"  # GitHub tokens
    r"|(?<=\bgithub_)pat_[A-Za-z0-9_]{22,}"  # GitHub fine-grained PAT
    r")(?![A-Za-z0-9_])"
)
_KEY_DASH = re.compile(
    r"-(?:"
    # OpenAI sk-..., sk-proj-..., Anthropic sk-ant-... (all 40+ chars long); 32+ chars and a
    # digit keep slugs such as "sk-spinner-double-bounce" or "sk-kogptv2-kormath-causal" out
    r"(?<=\bsk-)(?=[A-Za-z_\-]{0,100}[0-9])[A-Za-z0-9_\-]{32,}"
    r"|(?<=\bxox[abprs]-)[A-Za-z0-9\-]{10,}"  # Slack
    r")(?![A-Za-z0-9_\-])"
)
_KEY_A = re.compile(
    r"A(?<![A-Za-z0-9_\-]A)(?:"
    r"(?:KIA|SIA)[A-Z0-9]{16}(?![A-Za-z0-9_])"  # AWS access key id
    r"|Iza[A-Za-z0-9_\-]{35}(?![A-Za-z0-9_\-])"  # Google API key
    r")"
)


def _aws_secret_rx(anchor: str) -> re.Pattern[str]:
    # Anchored on the literal "ecret"/"ECRET" (fast scan) instead of a case-insensitive prefix
    # that re cannot skip ahead on; the label is "aws_secret_access_key", "AWS_SECRET_KEY",
    # "SecretAccessKey", ... and only the 40-char value is reported.
    return re.compile(
        anchor + r"(?i:(?<=secret)(?:_?access_?key|(?:(?<=aws_secret)|(?<=awssecret))_?key))"
        r"[\"']?[ \t]*[:=][ \t]*[\"']?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
    )


_AWS_SECRET = (_aws_secret_rx("ecret"), _aws_secret_rx("ECRET"))
# Body: base64, whitespace and "Proc-Type: 4,ENCRYPTED"-style headers, never "-----" (so the scan
# stops at the next marker and stays linear). Without an END line the block is redacted as far
# as the body goes: a truncated key is still a secret, a mere mention ("-----BEGIN ...-----...")
# loses only its header.
_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[A-Za-z0-9+/=\s:,]|-(?!----))*+"
    r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)?"
)
_JWT = re.compile(
    r"eyJ(?<![A-Za-z0-9_\-]eyJ)[A-Za-z0-9_\-]{7,}\.[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*"
)


def _anchored_keys(text: str, rx: re.Pattern[str], out: list[_Span]) -> None:
    for m in finditer(rx, text):
        start = m.start()
        while start > 0 and text[start - 1].isalpha():  # the "sk", "ghp", "github", "xoxb"
            start -= 1
        out.append((start, m.end(), "api_key"))


def _secrets(text: str, out: list[_Span]) -> None:
    if "_" in text:
        _anchored_keys(text, _KEY_UNDERSCORE, out)
    if "-" in text:
        _anchored_keys(text, _KEY_DASH, out)
        if "-----BEGIN " in text:
            out.extend((m.start(), m.end(), "private_key")
                       for m in finditer(_PRIVATE_KEY, text))
    if "A" in text:
        out.extend((m.start(), m.end(), "api_key") for m in finditer(_KEY_A, text))
    if "ecret" in text or "ECRET" in text:
        for rx in _AWS_SECRET:
            out.extend((m.start(1), m.end(1), "api_key") for m in finditer(rx, text))
    if "eyJ" in text:
        out.extend((m.start(), m.end(), "jwt") for m in finditer(_JWT, text))


# ------------------------------------------------------------------------------------ public
def resolve(findings: list[Finding]) -> list[Finding]:
    """Sorted, non-overlapping findings: longest wins, then the more specific kind."""
    return _resolve([(f.start, f.end, f.kind) for f in findings]) if findings else []


def _resolve(spans: list[_Span]) -> list[Finding]:
    """Drop overlaps: longest span wins, then the more specific kind, then the earlier one.

    Spans that overlap nothing are kept as they are; each run of overlapping spans (a
    cluster: no span of it reaches into another cluster) is settled on its own, so a long
    text with many overlaps costs a few small sorts, not one sort of everything."""
    spans.sort()
    if all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1)):
        return [Finding(kind, start, end) for start, end, kind in spans]  # common case
    kept: list[_Span] = []
    cluster: list[_Span] = []
    reach = 0  # the furthest end in the cluster (an empty span reaches its next character)
    for span in spans:
        start, end = span[0], span[1]
        if cluster and start >= reach:
            kept.extend(_winners(cluster) if len(cluster) > 1 else cluster)
            cluster = []
        cluster.append(span)
        reach = max(reach, end if end > start else start + 1)
    kept.extend(_winners(cluster) if len(cluster) > 1 else cluster)
    return [Finding(kind, start, end) for start, end, kind in kept]


def _winners(spans: list[_Span]) -> list[_Span]:
    """The spans kept of overlapping ``spans`` (sorted by start), in order of start."""
    spans.sort(key=lambda s: (s[0] - s[1], _PRIORITY.get(s[2], len(_PRIORITY)), s[0]))
    starts: list[int] = []
    kept: list[_Span] = []  # sorted by start, pairwise disjoint
    for span in spans:
        i = bisect_right(starts, span[0])
        if i > 0 and kept[i - 1][1] > span[0]:
            continue
        if i < len(kept) and kept[i][0] < span[1]:
            continue
        starts.insert(i, span[0])
        kept.insert(i, span)
    return kept


def scan(text: str) -> list[Finding]:
    """All PII/secret findings, sorted by start, non-overlapping (longest/most specific wins).

    The text is normalized first (fast path: plain ASCII is scanned as it is); offsets refer to
    ``text`` itself and cover any removed characters inside a finding.
    """
    if not needs_normalizing(text):  # the fast path: plain ASCII
        return detect(text)
    norm = normalize(text)
    found = detect(norm.text)
    if norm.identity or not found:
        return found
    return [Finding(f.kind, *norm.original_span(f.start, f.end)) for f in found]


def detect(text: str) -> list[Finding]:
    """The built-in detectors on text that is already normalized (no offset mapping)."""
    spans: list[_Span] = []
    if "@" in text:
        _emails(text, spans)
    _secrets(text, spans)
    # Every remaining kind needs a digit; single-char 'in' is a memchr, and unrolled it beats
    # both a generator (call overhead on short prompts) and a regex scan.
    if (
        "0" in text or "1" in text or "2" in text or "3" in text or "4" in text
        or "5" in text or "6" in text or "7" in text or "8" in text or "9" in text
    ):
        _numbers(text, spans)
        if ":" in text:
            _ipv6s(text, spans)
    return _resolve(spans) if spans else []


def redact(text: str, findings: list[Finding] | None = None) -> str:
    """Replace each finding by its placeholder, e.g. [EMAIL_REDACTED], [PHONE_REDACTED], ...

    ``findings=None`` means scan first. Findings from elsewhere may overlap; then the text from
    the first one's start to the furthest end is replaced by the first one's placeholder, so no
    flagged character survives.
    """
    if findings is None:
        findings = scan(text)
    if not findings:
        return text
    parts: list[str] = []
    cursor = 0
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if f.end <= cursor:
            continue
        if f.start >= cursor:
            parts.append(text[cursor:f.start])
            parts.append(placeholder(f.kind))
        cursor = f.end
    parts.append(text[cursor:])
    return "".join(parts)
