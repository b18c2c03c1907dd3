"""Behaviour of the budget ledgers (memory and SQLite), including cross-process atomicity."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iron_sdk.errors import BudgetExceededError, RuntimeUnavailableError, usd
from iron_sdk.ledger import (
    Ledger,
    LedgerError,
    MemoryLedger,
    ScopeState,
    SQLiteLedger,
    UsageRow,
    open_ledger,
)
from tests.ledgers import KINDS, make_ledger

AGENT, TEAM, GLOBAL = "agent:research-bot", "team:search", "global"


@pytest.fixture(params=KINDS)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    led = make_ledger(request, tmp_path / "sub" / "ledger.db")
    yield led
    led.close()


def settle(led: Ledger, rid: str, scopes: list[str], cost: int, agent: str = "a",
           model: str = "m", tokens: tuple[int, int] = (0, 0)) -> list[ScopeState]:
    return led.settle(rid, scopes, cost, agent_id=agent, model=model,
                      input_tokens=tokens[0], output_tokens=tokens[1])


# -- reserve --------------------------------------------------------------------------


def test_reserve_within_limit(ledger: Ledger) -> None:
    ledger.set_limit(AGENT, 100)
    assert ledger.reserve("r1", [AGENT], 60, 30) is True
    assert ledger.reserve("r2", [AGENT], 40, 30) is True  # exactly fills the limit
    assert ledger.state(AGENT) == ScopeState(AGENT, 100, 0, 100)


def test_reserve_exceeding_raises_and_records_nothing(ledger: Ledger) -> None:
    ledger.set_limit(AGENT, 100)
    settle(ledger, "r0", [AGENT], 25)
    ledger.reserve("r1", [AGENT], 35, 30)
    with pytest.raises(BudgetExceededError) as info:
        ledger.reserve("r2", [AGENT], 41, 30)
    err = info.value
    assert (err.scope, err.limit_usd, err.spent_usd, err.requested_usd) == (
        AGENT, usd(100), usd(60), usd(41))
    assert ledger.state(AGENT) == ScopeState(AGENT, 100, 25, 35)
    # The refused id was never written: releasing it frees nothing.
    ledger.release("r2")
    assert ledger.state(AGENT).reserved_micro == 35


def test_second_scope_failing_records_nothing_on_first(ledger: Ledger) -> None:
    ledger.set_limit(AGENT, 100)
    ledger.set_limit(TEAM, 10)
    with pytest.raises(BudgetExceededError) as info:
        ledger.reserve("r1", [AGENT, TEAM], 50, 30)
    assert info.value.scope == TEAM
    assert ledger.state(AGENT).reserved_micro == 0
    assert ledger.state(TEAM).reserved_micro == 0


def test_first_failing_scope_in_caller_order_is_reported(ledger: Ledger) -> None:
    ledger.set_limit(AGENT, 1)
    ledger.set_limit(TEAM, 1)
    with pytest.raises(BudgetExceededError) as info:
        ledger.reserve("r1", [TEAM, AGENT], 5, 30)
    assert info.value.scope == TEAM


def test_unlimited_scopes_fast_path(ledger: Ledger) -> None:
    assert ledger.reserve("r1", [AGENT, TEAM, GLOBAL], 10**12, 30) is False
    assert ledger.state(AGENT) == ScopeState(AGENT, None, 0, 0)
    assert ledger.reserve("r2", [], 5, 30) is False


def test_mixed_scopes_reserve_only_on_limited(ledger: Ledger) -> None:
    ledger.set_limit(TEAM, 100)
    settle(ledger, "r0", [AGENT], 7)  # AGENT now has a row but still no limit
    assert ledger.reserve("r1", [AGENT, TEAM], 10, 30) is True
    assert ledger.state(AGENT) == ScopeState(AGENT, None, 7, 0)
    assert ledger.state(TEAM) == ScopeState(TEAM, 100, 0, 10)


def test_removing_a_limit_returns_to_fast_path(ledger: Ledger) -> None:
    ledger.set_limit(AGENT, 5)
    with pytest.raises(BudgetExceededError):
        ledger.reserve("r1", [AGENT], 10, 30)
    ledger.set_limit(AGENT, None)
    assert ledger.reserve("r2", [AGENT], 10, 30) is False
    assert ledger.state(AGENT).limit_micro is None


def test_negative_amounts_are_rejected(ledger: Ledger) -> None:
    ledger.set_limit(AGENT, 100)
    with pytest.raises(ValueError):
        ledger.reserve("r1", [AGENT], -1, 30)
    with pytest.raises(ValueError):
        settle(ledger, "r1", [AGENT], -1)
    with pytest.raises(TypeError):
        ledger.reserve("r1", AGENT, 1, 30)
    assert ledger.state(AGENT) == ScopeState(AGENT, 100, 0, 0)


# -- settle / release -----------------------------------------------------------------


def test_settle_charges_all_scopes_and_drops_reservation(ledger: Ledger) -> None:
    ledger.set_limit(AGENT, 100)
    ledger.set_limit(TEAM, 1000)
    ledger.reserve("keep", [TEAM], 5, 30)
    ledger.reserve("r1", [AGENT, TEAM, GLOBAL], 50, 30)
    states = settle(ledger, "r1", [AGENT, TEAM, GLOBAL], 30)
    assert states == [ScopeState(AGENT, 100, 30, 0), ScopeState(TEAM, 1000, 30, 5),
                      ScopeState(GLOBAL, None, 30, 0)]
    assert ledger.state(GLOBAL) == ScopeState(GLOBAL, None, 30, 0)
    # Settling twice is a no-op: a retry never charges twice.
    assert settle(ledger, "r1", [AGENT], 1)[0] == ScopeState(AGENT, 100, 30, 0)


def test_settle_dedupes_repeated_scopes(ledger: Ledger) -> None:
    states = settle(ledger, "r1", [AGENT, AGENT, GLOBAL], 4)
    assert states == [ScopeState(AGENT, None, 4, 0), ScopeState(GLOBAL, None, 4, 0)]


def test_release_frees_budget(ledger: Ledger) -> None:
    ledger.set_limit(AGENT, 100)
    ledger.reserve("r1", [AGENT], 80, 30)
    with pytest.raises(BudgetExceededError):
        ledger.reserve("r2", [AGENT], 30, 30)
    ledger.release("r1")
    ledger.release("never-existed")
    assert ledger.state(AGENT) == ScopeState(AGENT, 100, 0, 0)
    assert ledger.reserve("r2", [AGENT], 30, 30) is True


def test_settle_more_than_reserved_charges_honestly(ledger: Ledger) -> None:
    ledger.set_limit(AGENT, 100)
    ledger.reserve("r1", [AGENT], 10, 30)
    assert settle(ledger, "r1", [AGENT], 150) == [ScopeState(AGENT, 100, 150, 0)]
    with pytest.raises(BudgetExceededError) as info:
        ledger.reserve("r2", [AGENT], 1, 30)
    assert info.value.spent_usd == usd(150)


def test_reset_keeps_limit(ledger: Ledger) -> None:
    ledger.set_limit(AGENT, 100)
    settle(ledger, "r1", [AGENT], 100)
    ledger.reset(AGENT)
    ledger.reset("scope:unknown")
    assert ledger.state(AGENT) == ScopeState(AGENT, 100, 0, 0)
    assert ledger.reserve("r2", [AGENT], 100, 30) is True


# -- leases ---------------------------------------------------------------------------


def test_expired_reservation_is_charged_then_adjusted(ledger: Ledger,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ledger.set_limit(AGENT, 100)
    ledger.reserve("short", [AGENT], 80, 30)
    with pytest.raises(BudgetExceededError):
        ledger.reserve("r2", [AGENT], 30, 30)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 31)
    # The lease ran out: charged at its reserved amount, never forgotten.
    assert ledger.state(AGENT) == ScopeState(AGENT, 100, 80, 0)
    assert ledger.reserve("r2", [AGENT], 20, 30) is True
    # The late settle replaces the reserved charge by the true cost, exactly once.
    assert settle(ledger, "short", [AGENT], 20) == [ScopeState(AGENT, 100, 20, 20)]
    assert settle(ledger, "short", [AGENT], 20) == [ScopeState(AGENT, 100, 20, 20)]


# -- usage ----------------------------------------------------------------------------


def test_usage_aggregates_per_agent_and_model(ledger: Ledger) -> None:
    settle(ledger, "1", [GLOBAL], 10, agent="b", model="gpt-4o", tokens=(100, 10))
    settle(ledger, "2", [GLOBAL], 20, agent="a", model="gpt-4o-mini", tokens=(200, 20))
    settle(ledger, "3", [GLOBAL], 30, agent="a", model="gpt-4o", tokens=(300, 30))
    settle(ledger, "4", [GLOBAL], 40, agent="a", model="gpt-4o", tokens=(400, 40))
    assert ledger.usage() == [
        UsageRow("a", "gpt-4o", 2, 700, 70, 70),
        UsageRow("a", "gpt-4o-mini", 1, 200, 20, 20),
        UsageRow("b", "gpt-4o", 1, 100, 10, 10),
    ]
    assert ledger.state(GLOBAL).spent_micro == 100


# -- concurrency ----------------------------------------------------------------------


def _drain(led: Ledger, tag: str, scope: str, amount: int) -> int:
    """Reserve then settle the full amount until refused; return the number of settles."""
    n = 0
    while True:
        rid = f"{tag}-{n}"
        try:
            led.reserve(rid, [scope], amount, 30)
        except BudgetExceededError:
            return n
        led.settle(rid, [scope], amount, agent_id=tag, model="m", input_tokens=1,
                   output_tokens=1)
        n += 1


def test_threads_never_overspend(ledger: Ledger) -> None:
    ledger.set_limit(TEAM, 1000)
    counts: list[int] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        counts.append(_drain(ledger, f"t{i}", TEAM, 7))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(counts) == 8
    assert ledger.state(TEAM) == ScopeState(TEAM, 1000, sum(counts) * 7, 0)
    assert sum(counts) * 7 == 1000 // 7 * 7


def _process_worker(url: str, tag: str, limit_scope: str, amount: int,
                    barrier: Any, results: Any) -> None:
    try:
        led = open_ledger(url)
        barrier.wait(30)
        results.put((tag, _drain(led, tag, limit_scope, amount)))
        led.close()
    except BaseException as exc:  # report instead of dying silently in the child
        results.put((tag, repr(exc)))


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_processes_never_overspend(kind: str, tmp_path: Path,
                                   request: pytest.FixtureRequest) -> None:
    path = str(tmp_path / "shared.db") if kind == "sqlite" else request.getfixturevalue(
        "redis_url")
    limit, amount, nproc = 3000, 7, 4
    with open_ledger(path) as led:
        led.set_limit(TEAM, limit)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(nproc), ctx.Queue()
    procs = [ctx.Process(target=_process_worker,
                         args=(path, f"p{i}", TEAM, amount, barrier, results))
             for i in range(nproc)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert all(isinstance(n, int) for n in got.values()), got
    settled = sum(got.values())
    with open_ledger(path) as led:
        state = led.state(TEAM)
        usage = led.usage()
    assert state.spent_micro == settled * amount == limit // amount * amount
    assert state.reserved_micro == 0
    assert {row.agent_id: row.calls for row in usage} == {t: n for t, n in got.items() if n}


def test_limit_set_by_second_instance_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with SQLiteLedger(path) as first, SQLiteLedger(path) as admin:
        assert first.reserve("r1", [AGENT], 20, 30) is False
        admin.set_limit(AGENT, 10)
        with pytest.raises(BudgetExceededError) as info:
            first.reserve("r2", [AGENT], 20, 30)
        assert info.value.limit_usd == usd(10)
        admin.set_limit(AGENT, 100)
        assert first.reserve("r3", [AGENT], 20, 30) is True
        assert admin.state(AGENT) == ScopeState(AGENT, 100, 0, 20)
        settle(first, "r3", [AGENT], 15)
        admin.reset(AGENT)
        assert first.state(AGENT) == ScopeState(AGENT, 100, 0, 0)


def test_limit_set_by_another_process_is_seen_by_a_process_that_knew_none(
        tmp_path: Path) -> None:
    """A process remembers which scope lists have no limit (no query per reservation);
    a limit another process sets must end that at its next reservation."""
    import subprocess
    import sys

    path = tmp_path / "ledger.db"
    with SQLiteLedger(path) as led:
        for i in range(3):  # learnt: no limit, asked once
            assert led.reserve(f"r{i}", [AGENT, TEAM], 20, 30) is False
        subprocess.run([sys.executable, "-c",
                        "import sys; from iron_sdk.ledger import SQLiteLedger; "
                        "SQLiteLedger(sys.argv[1]).set_limit(sys.argv[2], 10)",
                        str(path), TEAM], check=True, timeout=60)
        with pytest.raises(BudgetExceededError) as info:
            led.reserve("r9", [AGENT, TEAM], 20, 30)
        assert info.value.scope == TEAM
        assert led.reserve("r10", [AGENT, TEAM], 10, 30) is True
        assert led.state(TEAM) == ScopeState(TEAM, 10, 0, 10)


def test_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with SQLiteLedger(path) as led:
        led.set_limit(AGENT, 100)
        settle(led, "r1", [AGENT], 40, agent="x")
    with SQLiteLedger(path) as led:
        assert led.state(AGENT) == ScopeState(AGENT, 100, 40, 0)
        assert led.usage() == [UsageRow("x", "m", 1, 0, 0, 40)]


# -- failures -------------------------------------------------------------------------


def test_corrupt_file_raises_ledger_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a sqlite database at all" * 200)
    with pytest.raises(LedgerError) as info:
        SQLiteLedger(path)
    assert isinstance(info.value, RuntimeUnavailableError)
    assert str(path) in str(info.value)


def test_unwritable_path_raises_ledger_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a regular file where a directory is needed")
    with pytest.raises(LedgerError):
        SQLiteLedger(blocker / "ledger.db")
    with pytest.raises(LedgerError):
        SQLiteLedger(tmp_path)  # a directory is not a database file


def test_closed_ledger_raises_ledger_error(tmp_path: Path) -> None:
    led = SQLiteLedger(tmp_path / "ledger.db")
    led.set_limit(AGENT, 10)
    led.close()
    with pytest.raises(LedgerError):
        led.reserve("r1", [AGENT], 1, 30)


def test_budget_error_passes_through_sqlite_untouched(tmp_path: Path) -> None:
    with SQLiteLedger(tmp_path / "ledger.db") as led:
        led.set_limit(AGENT, 0)
        with pytest.raises(BudgetExceededError) as info:
            led.reserve("r1", [AGENT], 1, 30)
        assert not isinstance(info.value, LedgerError)
        assert led.reserve("r2", [AGENT], 0, 30) is True  # the connection is still usable


# -- open_ledger ----------------------------------------------------------------------


def test_open_ledger_forms(tmp_path: Path) -> None:
    mem = open_ledger("memory")
    assert isinstance(mem, MemoryLedger)
    url_path = tmp_path / "a" / "url.db"
    with open_ledger(f"sqlite://{url_path}") as led:
        assert isinstance(led, SQLiteLedger)
    assert url_path.exists()
    plain = tmp_path / "plain.db"
    with open_ledger(str(plain)) as led:
        assert isinstance(led, SQLiteLedger)
    assert plain.exists()


@pytest.mark.parametrize("url", ["postgres://user:hunter2@x/y", "", "sqlite://relative.db"])
def test_open_ledger_rejects_unknown_forms(url: str) -> None:
    with pytest.raises(ValueError) as info:
        open_ledger(url)
    msg = str(info.value)
    assert "memory" in msg and "sqlite:///" in msg
    assert "hunter2" not in msg


def test_scopes_lists_limited_and_charged(tmp_path) -> None:
    for ledger in (MemoryLedger(), SQLiteLedger(tmp_path / "s.db")):
        ledger.set_limit("team:a", 10)
        ledger.settle("r", ["agent:b"], 3, agent_id="b", model="m", input_tokens=1,
                      output_tokens=1)
        assert ledger.scopes() == ["agent:b", "team:a"]
        ledger.close()


def test_unreachable_redis_is_a_ledger_error_without_credentials() -> None:
    led = open_ledger("redis://user:hunter2@127.0.0.1:1/0")
    with pytest.raises(LedgerError) as info:
        led.reserve("r", [AGENT], 1, 1)
    assert "127.0.0.1:1" in str(info.value) and "hunter2" not in str(info.value)
