"""Regex searches over long texts, a window at a time, with the matches of one search.

CPython's ``re`` holds the GIL for the whole of one search: over a 10 MB prompt with no
match, the digit scan alone holds it for ~200 ms, and the router's event loop (``/healthz``)
waits that long although the scan runs in a worker thread. :func:`finditer` and
:func:`search` give the same matches as ``rx.finditer(text)`` and ``rx.search(text, pos)``,
but no single ``re`` call searches more than :data:`WINDOW` characters (plus the pattern's
look-ahead), so the GIL changes hands between windows. Texts of at most one window go
straight to ``re`` (the common case costs one length check).

How a pattern is cut depends on what its parse tree says (:func:`plan`, cached):

* **bounded** (every match attempt reads at most ``reach`` characters from where it
  starts: ``[0-9]{3}``, look-aheads included): each window is searched with ``endpos``
  ``reach`` characters past its end, and only matches that start inside it are taken. An
  attempt there never reads as far as ``endpos``, so it sees what it would see in the
  whole text: the matches are exactly re's;
* **unbounded with a literal start** (``eyJ[...]{7,}\\.[...]*``, ``-----BEGIN ...``): a
  *gate* is searched for instead, windowed as above: the pattern cut where it stops being
  bounded, an open repeat kept at its minimum (``eyJ[...]{7}``). Every match starts
  where the gate matches, so the pattern is matched there on the whole text: exactly re's
  matches, however long, at re's speed between candidates;
* **unbounded, no literal start** (an operator's ``\\b[A-Z]+-\\d+``): windows as for
  bounded patterns with :data:`MAX_REACH` characters of look-ahead, and a match that runs
  into a window's end is matched again on the whole text. A match attempt that must read
  more than :data:`MAX_REACH` characters past a window's end *and fail there* (a lazy
  ``BEGIN.*?END`` spanning more than that, say) can differ from re's; bound the pattern
  (``{1,64}`` rather than ``+``) or give it a literal start to keep it exact (a gate
  of a pattern without one, ``\\b[A-Z]``, would stop at every capital);
* a pattern that can match the empty string is searched whole (windows cannot reproduce
  re's rule for the match after an empty one).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["MAX_REACH", "WINDOW", "Plan", "finditer", "plan", "search"]

WINDOW = 64 * 1024  # characters one re call searches at most (plus a pattern's reach)
MAX_REACH = 4096  # look-ahead granted past a window to a pattern without a bound
_MARGIN = 4  # end-of-text checks ('$' looks one past a final newline) and rounding

Match = re.Match[str]
Pattern = re.Pattern[str]


@dataclass(frozen=True, slots=True)
class Plan:
    """How :func:`search` cuts one pattern (see the module docstring)."""

    reach: int | None  # characters an attempt reads from its start (None: no bound)
    # unbounded: a bounded pattern that matches where rx can start a match, and its plan
    gate: tuple[Pattern, Plan] | None = None
    whole: bool = False  # may match the empty string: never cut

    @property
    def lookahead(self) -> int:
        return MAX_REACH if self.reach is None else self.reach + _MARGIN


def finditer(rx: Pattern, text: str) -> Iterator[Match]:
    """``rx.finditer(text)``: the same matches, the GIL given up between windows."""
    if len(text) <= WINDOW:
        return rx.finditer(text)
    p = plan(rx)
    return rx.finditer(text) if p.whole else _iterate(rx, text, p)


def _iterate(rx: Pattern, text: str, p: Plan) -> Iterator[Match]:
    pos = 0
    while (m := _search(rx, text, pos, p)) is not None:
        yield m
        pos = m.end()  # > m.start(): a plan that is not ``whole`` never matches empty


def search(rx: Pattern, text: str, pos: int = 0) -> Match | None:
    """``rx.search(text, pos)``: the same match, the GIL given up between windows."""
    if len(text) - pos <= WINDOW:
        return rx.search(text, pos)
    p = plan(rx)
    return rx.search(text, pos) if p.whole else _search(rx, text, pos, p)


def _search(rx: Pattern, text: str, pos: int, p: Plan) -> Match | None:
    if p.gate is not None:
        return _gated(rx, text, pos, p.gate)
    n = len(text)
    ahead = p.lookahead
    while True:
        end = pos + WINDOW + ahead
        if end >= n:
            return rx.search(text, pos)
        m = rx.search(text, pos, end)
        if m is not None and m.start() < end - ahead:
            if p.reach is None and m.end() == end:  # may go on past the window: whole
                whole = rx.match(text, m.start())
                if whole is None:
                    pos = m.start() + 1
                    continue
                return whole
            return m
        pos = end - ahead


def _gated(rx: Pattern, text: str, pos: int, gate: tuple[Pattern, Plan]) -> Match | None:
    """The first match at or after ``pos``, tried only where the gate matches."""
    match = rx.match
    pattern, gate_plan = gate
    while (g := _search(pattern, text, pos, gate_plan)) is not None:
        m = match(text, g.start())
        if m is not None:
            return m
        pos = g.start() + 1
    return None


# -- reading a pattern's parse tree ------------------------------------------------------------
@lru_cache(maxsize=1024)
def plan(rx: Pattern) -> Plan:
    """How :func:`finditer` and :func:`search` cut ``rx`` (cached per pattern)."""
    try:
        from re import _constants as c  # type: ignore[attr-defined]
        from re import _parser  # type: ignore[attr-defined]

        tree = _parser.parse(rx.pattern, rx.flags)
        if tree.getwidth()[0] == 0:
            return Plan(None, whole=True)
        shape = _shape(tree, c)
        if shape is not None:
            return Plan(shape[1])
        if tree.state.flags & re.IGNORECASE or not _literal_start(tree, c):
            return Plan(None)
        return Plan(None, gate=_gate(tree, rx.flags, c))
    except Exception:  # re's parser is private: if it ever changes, search whole
        return Plan(None, whole=True)


def _shape(items: Any, c: Any) -> tuple[int, int] | None:
    """(widest match, farthest character read from the start) of a sequence of parse
    items, or None without a bound (a ``*``, ``+``, ``{n,}`` or a back-reference)."""
    width = reach = 0
    for op, av in items:
        one = _item(op, av, c)
        if one is None:
            return None
        w, r = one
        reach = max(reach, width + r)
        width += w
    return width, max(reach, width)


def _item(op: Any, av: Any, c: Any) -> tuple[int, int] | None:
    if op in (c.LITERAL, c.NOT_LITERAL, c.ANY, c.IN):
        return 1, 1
    if op is c.AT:  # \b, $, ...: reads the next character at most
        return 0, 1
    if op is c.SUBPATTERN:
        return _shape(av[-1], c)
    if op is c.ATOMIC_GROUP:
        return _shape(av, c)
    if op is c.BRANCH:
        shapes = [_shape(b, c) for b in av[1]]
        if any(s is None for s in shapes):
            return None
        return max(s[0] for s in shapes), max(s[1] for s in shapes)  # type: ignore[index]
    if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
        low, high, sub = av
        inner = _shape(sub, c)
        if inner is None or high == c.MAXREPEAT:
            return None
        if high == 0:
            return 0, 0
        w, r = inner
        return high * w, (high - 1) * w + r
    if op in (c.ASSERT, c.ASSERT_NOT):
        direction, sub = av
        inner = _shape(sub, c)
        if inner is None:
            return None
        w, r = inner
        return 0, (r if direction > 0 else max(0, r - w))  # a look-behind reads backwards
    if op is c.GROUPREF_EXISTS:
        yes = _shape(av[1], c)
        no = _shape(av[2], c) if av[2] is not None else (0, 0)
        if yes is None or no is None:
            return None
        return max(yes[0], no[0]), max(yes[1], no[1])
    return None  # back-references and anything unknown: no bound


def _literal_start(items: Any, c: Any) -> bool:
    """Whether every match starts with one of a few literal characters."""
    for op, av in items:
        if op in (c.AT, c.ASSERT, c.ASSERT_NOT):
            continue  # reads, consumes nothing: the first character comes after
        if op is c.LITERAL:
            return True
        if op is c.BRANCH:
            return all(_literal_start(branch, c) for branch in av[1])
        if op is c.SUBPATTERN and not av[1] & re.IGNORECASE:
            return _literal_start(av[-1], c)
        return False
    return False


def _gate(tree: Any, flags: int, c: Any) -> tuple[Pattern, Plan] | None:
    """A bounded pattern that matches wherever ``tree`` can start a match, and its plan
    (None if the cut leaves nothing that consumes a character)."""
    from re import _compiler  # type: ignore[attr-defined]

    items, _ = _necessary(tree, tree.state, c)
    gate = type(tree)(tree.state, items)
    shape = _shape(gate, c)
    if gate.getwidth()[0] == 0 or shape is None:
        return None
    return _compiler.compile(gate, flags), Plan(shape[1])


def _necessary(items: Any, state: Any, c: Any) -> tuple[list[Any], bool]:
    """The items up to the first unbounded one, which is kept at its minimum (a repeat) or
    left out (a look-around): what a match must match at its start. ``True`` when nothing
    was cut."""
    out: list[Any] = []
    for op, av in items:
        if _item(op, av, c) is not None:
            out.append((op, av))
        elif op in (c.ASSERT, c.ASSERT_NOT):
            continue  # an unbounded look-around, left out: the gate only gets looser
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            low, _, sub = av
            if low and _shape(sub, c) is not None:
                out.append((c.MAX_REPEAT, (low, low, sub)))
            return out, False
        elif op is c.SUBPATTERN:
            inner, whole = _necessary(av[-1], state, c)
            out.append((op, (*av[:-1], type(av[-1])(state, inner))))
            if not whole:
                return out, False
        elif op is c.BRANCH:
            cut = [_necessary(branch, state, c) for branch in av[1]]
            out.append((op, (av[0], [type(av[1][0])(state, b) for b, _ in cut])))
            if not all(whole for _, whole in cut):
                return out, False
        else:
            return out, False  # a back-reference, a conditional group: cut before it
    return out, True
