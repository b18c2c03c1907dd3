"""Long texts: regex searches a window at a time (:mod:`iron_sdk.safety.windows`) with
exactly re's matches, the same findings whatever the window, overlaps settled per cluster."""

from __future__ import annotations

import random
import re
import sys
from typing import Any

import pytest

from iron_sdk.config import SafetyConfig
from iron_sdk.safety import windows
from iron_sdk.safety.detectors import _PRIORITY, _resolve, scan
from iron_sdk.safety.scanner import Scanner
from iron_sdk.safety.windows import WINDOW, finditer, plan, search

FILLER = "lorem ipsum dolor sit amet, consectetur adipiscing elit. "


def padded(value: str, start: int, total: int = WINDOW + 4096) -> str:
    """``value`` at offset ``start`` of plain filler, ``total`` characters in all."""
    head = (FILLER * (start // len(FILLER) + 1))[:start - 1] + " "
    rest = total - start - len(value)
    return head + value + " " + (FILLER * (rest // len(FILLER) + 1))[:rest - 1]


def found(text: str, scanner: Scanner | None = None) -> list[tuple[str, str]]:
    findings = scanner.scan(text) if scanner else scan(text)
    return [(f.kind, text[f.start:f.end]) for f in findings]


@pytest.mark.parametrize("value, kind", [
    ("4111 1111 1111 1111", "credit_card"),  # the digit scan: bounded, windowed
    ("+44 20 7946 0958", "phone"),  # the '+' phone scan
    ("sk-proj-" + "Ab3dEf6hIj9lMn2pQr5tUv8xYz" * 2, "api_key"),  # unbounded, literal start
    ("jane.doe@example.com", "email"),
])
def test_a_finding_across_the_window_edge_is_found_once(value: str, kind: str) -> None:
    # The first window ends at WINDOW (the filler has no match): put the edge at every
    # character of the value and a little before and after it.
    for start in range(WINDOW - len(value) - 2, WINDOW + 3):
        assert found(padded(value, start)) == [(kind, value)], start


def test_a_long_token_across_the_window_edge_is_found_whole() -> None:
    # Longer than any look-ahead past a window: found from its literal start ('eyJ').
    jwt = "eyJhbGciOiJIUzI1NiJ9." + "eyJzdWIiOiIxMjM0NTY3ODkwIn0" * 300 + ".c2lnbmF0dXJl"
    for start in (WINDOW - len(jwt) + 1, WINDOW - 30, WINDOW - 1):
        assert found(padded(jwt, start, WINDOW + 16_384)) == [("jwt", jwt)]


def test_a_custom_match_across_the_window_edge_is_found_once() -> None:
    scanner = Scanner(SafetyConfig(patterns=[
        {"kind": "employee_id", "regex": r"EMP-[0-9]{6}"},  # bounded
        {"kind": "ticket", "regex": r"\b[A-Z]{2,}-[0-9]+\b"},  # unbounded, no literal start
    ]))
    long_ticket = "ACME-" + "7" * 6000  # longer than the look-ahead granted past a window
    for value, kind in (("EMP-004211", "employee_id"), ("OPS-1234", "ticket"),
                        (long_ticket, "ticket")):
        for start in (WINDOW - len(value) + 1, WINDOW - len(value) // 2, WINDOW - 1):
            assert found(padded(value, start, WINDOW + 8192), scanner) == [(kind, value)]


class Recording:
    """A pattern that records the range of text each re call may read."""

    def __init__(self, rx: re.Pattern[str]) -> None:
        self.rx, self.pattern, self.flags = rx, rx.pattern, rx.flags
        self.calls: list[int] = []

    def search(self, text: str, pos: int = 0, endpos: int = sys.maxsize) -> Any:
        self.calls.append(min(endpos, len(text)) - pos)
        return self.rx.search(text, pos, endpos)

    def match(self, text: str, pos: int = 0) -> Any:
        return self.rx.match(text, pos)

    def finditer(self, text: str) -> Any:
        self.calls.append(len(text))
        return self.rx.finditer(text)


def test_no_re_call_searches_more_than_a_window() -> None:
    text = (FILLER * 20_000)[:1_000_000] + " 555-123-4567"  # one match, at the very end
    rx = Recording(re.compile(r"[0-9]{3}-[0-9]{3}-[0-9]{4}"))
    assert [m.span() for m in finditer(rx, text)] == [  # type: ignore[arg-type]
        m.span() for m in rx.rx.finditer(text)]
    assert len(rx.calls) > 1_000_000 // WINDOW
    assert max(rx.calls) <= WINDOW + plan(rx).lookahead  # type: ignore[arg-type]
    short = Recording(rx.rx)
    list(finditer(short, text[:WINDOW]))  # type: ignore[arg-type]
    assert short.calls == [WINDOW]  # one window: re's own finditer


def test_plans() -> None:
    assert plan(re.compile(r"EMP-[0-9]{6}(?![0-9])")).reach == 11
    assert plan(re.compile(r"(?<=\bsk-)x{3}")).reach == 3  # a look-behind reads backwards
    # Unbounded with a literal start: a bounded gate, the open repeat at its minimum.
    gate = plan(re.compile(r"eyJ[a-z]+\.")).gate
    assert gate is not None and gate[1].reach == 4
    assert gate[0].match("eyJa") and not gate[0].match("eyJ.")
    gate = plan(re.compile(r"%40|&#0*64;")).gate
    assert gate is not None and gate[0].match("%40") and gate[0].match("&#x")
    assert not gate[0].match("%4") and not gate[0].match("&x")
    capped = plan(re.compile(r"\b[A-Z]+-[0-9]+"))  # no literal start: windows, capped
    assert (capped.reach, capped.gate, capped.lookahead) == (None, None, windows.MAX_REACH)
    assert plan(re.compile(r"(?i)eyJ[a-z]+")).gate is None  # any case: no literal
    assert plan(re.compile(r"x|(?=y)")).whole  # may match empty: never cut


@pytest.mark.parametrize("pattern", [
    r"[0-9]{3}-[0-9]{2}",  # bounded
    r"[0-9]{2}(?=[a-c]{0,3}-)",  # bounded, with a look-ahead
    r"(?<![a-z])ab[a-z]{0,5}",  # bounded, with a look-behind
    r"-[a-z0-9]+-",  # unbounded, literal start
    r"ab[^b\n]+c",  # unbounded, literal start, its gate overlapping the next start
    r"%4|&#0*6;",  # unbounded, a set of first characters
    r"\b[a-c]+[0-9]+\b",  # unbounded, no literal start
    r"[a-z]+-$",  # the end of the text
    r"(ab)\1",  # a back-reference
])
def test_windowed_matches_are_re_matches(monkeypatch: pytest.MonkeyPatch,
                                         pattern: str) -> None:
    rng = random.Random(pattern)
    text = "".join(rng.choice(["a", "b", "c", "x", "0", "1", "4", "6", "-", " ", "%", "&#",
                               ";", "\n", "abab", "%4", "&#006;"]) for _ in range(20_000))
    text += "abc-"
    rx = re.compile(pattern)
    expected = [m.span() for m in rx.finditer(text)]
    assert expected
    for window in (7, 61, 500):
        monkeypatch.setattr(windows, "WINDOW", window)
        assert [m.span() for m in finditer(rx, text)] == expected, window
        pos = len(text) // 3
        got = search(rx, text, pos)
        want = rx.search(text, pos)
        assert (got and got.span()) == (want and want.span())


SAMPLES = [
    "jane.doe@example.com", "zoë@exämple.com", "jane&#64;example.com", "bob%40corp.io",
    "+1 (555) 123-4567", "555-123-4567", "(555) 123-4567", "+44 20 7946 0958",
    "123-45-6789", "4111 1111 1111 1111", "4111\u200b1111\u200b1111\u200b1111",
    "４１１１１１１１１１１１１１１１", "DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432",
    "192.168.1.20", "version 1.2.3.4", "2001:db8::8a2e:370:7334", "::ffff:10.0.0.1",
    "sk-proj-" + "Ab3dEf6hIj9lMn2pQr5tUv8xYz" * 2, "ghp_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6",
    "AKIA" + "IOSFODNN7EXAMPLE", "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/" + "b" * 18,
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl",
    "-----BEGIN PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM\n-----END PRIVATE KEY-----",
    "EMP-004211", "OPS-1234", "10.0.19045.1234", "x[1::2]", "icon@2x.png", "sk-spinner-a-b",
    "5551234567", "١٢٣-٤٥-٦٧٨٩", "555\u2013123\u20134567", "é ü 😀", "a\u00a0b",
]


def test_findings_do_not_depend_on_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    glue = [" ", "\n", ", ", "-", "_", ":", "@", "", "x", "1", "\t", " 12 "]
    text = "".join(rng.choice(SAMPLES) + rng.choice(glue) for _ in range(3000))
    scanner = Scanner(SafetyConfig(patterns=[
        {"kind": "employee_id", "regex": r"EMP-[0-9]{6}"},
        {"kind": "ticket", "regex": r"\b[A-Z]{2,}-[0-9]+\b"},
    ], allow={"jane.doe@example.com"}))
    monkeypatch.setattr(windows, "WINDOW", sys.maxsize)  # re's own searches
    expected = (scan(text), scanner.scan(text))
    assert len(expected[0]) > 1000
    for window in (29, 97, 1000):
        monkeypatch.setattr(windows, "WINDOW", window)
        assert (scan(text), scanner.scan(text)) == expected, window


def _greedy(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Overlaps settled all at once: longest first, then the more specific kind."""
    kept: list[tuple[int, int, str]] = []
    for s in sorted(sorted(spans), key=lambda s: (s[0] - s[1], _PRIORITY.get(s[2], 99), s[0])):
        if not any(k[0] <= s[0] < k[1] or s[0] < k[0] < s[1] for k in kept):
            kept.append(s)
    return sorted(kept)


def test_overlaps_are_settled_per_cluster_as_if_all_at_once() -> None:
    rng = random.Random(3)
    kinds = ["email", "phone", "credit_card", "iban", "custom_a", "custom_b"]
    for _ in range(3000):
        spans = []
        for _ in range(rng.randint(1, 12)):
            start = rng.randint(0, 40)
            spans.append((start, start + rng.choice([1, 2, 3, 5, 8]), rng.choice(kinds)))
        got = [(f.start, f.end, f.kind) for f in _resolve(list(spans))]
        assert got == _greedy(spans), spans
