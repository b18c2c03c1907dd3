"""Write-behind: validation in the caller's thread, idempotent settlement, a poison item
isolated, and nothing acknowledged lost to kill -9 (a real process, a real journal)."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from iron_sdk.ledger import (
    InvalidAmountError,
    Ledger,
    LedgerError,
    ScopeState,
    Settlement,
    SQLiteLedger,
    UsageRow,
    open_ledger,
)
from iron_sdk.ledger.journal import Journal
from iron_sdk.ledger.redis import RedisLedger
from iron_sdk.ledger.writer import WriteBehindLedger, replay_journals

AGENT, TEAM = "agent:bot", "team:t"


def poisoned(base: type[Ledger]) -> type[Ledger]:
    """The real ledger, except that a batch holding the id "poison" writes its first half
    and then fails (like a script that dies midway), and "poison" alone always fails."""

    class Poisoned(base):  # type: ignore[valid-type, misc]
        def settle_many(self, items: Sequence[Settlement]) -> list[list[ScopeState]]:
            if any(i.reservation_id == "poison" for i in items):
                good = [i for i in items if i.reservation_id != "poison"]
                super().settle_many(good[: len(good) // 2])
                raise LedgerError("injected failure")
            return super().settle_many(items)

    return Poisoned


@pytest.fixture(params=["sqlite", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(kind: str, tmp_path: Path, request: pytest.FixtureRequest,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """make(cls=None) -> a fresh instance of the real ledger (or of a subclass of it)."""
    monkeypatch.setenv("IRON_HOME", str(tmp_path / "home"))
    url = str(tmp_path / "ledger.db") if kind == "sqlite" else request.getfixturevalue(
        "redis_url")
    opened: list[Ledger] = []

    def factory(wrap: type[Ledger] | None = None) -> Ledger:
        base = SQLiteLedger if kind == "sqlite" else RedisLedger
        led = (wrap or base)(url)
        opened.append(led)
        return led

    factory.url = url  # type: ignore[attr-defined]
    yield factory
    for led in opened:
        led.close()


def settle(led: Ledger, rid: str, cost: int, **kw: object) -> object:
    args: dict[str, object] = {"agent_id": "bot", "model": "m", "input_tokens": 1,
                               "output_tokens": 1}
    args.update(kw)
    return led.settle(rid, [AGENT, TEAM], cost, **args)  # type: ignore[arg-type]


# -- validation -------------------------------------------------------------------------

BAD = [True, 1.0, -1, 2**62, "3", None]


@pytest.mark.parametrize("bad", BAD)
def test_bad_numbers_raise_in_the_callers_thread_and_queue_nothing(make, bad) -> None:  # noqa: ANN001
    wb = WriteBehindLedger(make(), window_s=0)
    try:
        for field in ("cost", "input_tokens", "output_tokens"):
            kw = {} if field == "cost" else {field: bad}
            with pytest.raises(InvalidAmountError) as info:
                settle(wb, "r1", bad if field == "cost" else 1, **kw)
            assert isinstance(info.value, ValueError)
        with pytest.raises(ValueError):
            wb.reserve("r1", [AGENT], bad, 30)
        assert wb.journal is not None and wb.journal.path is None  # nothing was journaled
        wb.flush()
        assert wb.usage() == [] and wb.state(AGENT) == ScopeState(AGENT, None, 0, 0)
    finally:
        wb.close()


def test_the_largest_valid_amount_is_accepted(make) -> None:  # noqa: ANN001
    led = make()
    settle(led, "big", 2**62 - 1, input_tokens=2**62 - 1)
    assert led.state(AGENT).spent_micro == 2**62 - 1


# -- idempotency ------------------------------------------------------------------------


def test_settle_and_release_are_idempotent_by_id(make) -> None:  # noqa: ANN001
    led = make()
    led.set_limit(AGENT, 1000)
    led.reserve("a", [AGENT, TEAM], 100, 30, agent_id="bot", model="m")
    settle(led, "a", 40)
    settle(led, "a", 40)
    led.release("a")
    led.reserve("b", [AGENT, TEAM], 100, 30)
    led.release("b")
    settle(led, "b", 70)  # a released call is finished: nothing more to charge
    settle(led, "free", 5)  # no reservation at all (never limited)
    settle(led, "free", 5)
    assert led.state(AGENT) == ScopeState(AGENT, 1000, 45, 0)
    assert led.state(TEAM) == ScopeState(TEAM, None, 45, 0)
    assert led.usage() == [UsageRow("bot", "m", 2, 2, 2, 45)]
    with pytest.raises(LedgerError, match="already in use"):
        led.reserve("a", [AGENT], 1, 30)


def test_an_id_twice_in_one_batch_is_charged_once(make) -> None:  # noqa: ANN001
    led = make()
    led.set_limit(AGENT, 1000)
    led.reserve("a", [AGENT], 100, 30)
    item = Settlement("a", (AGENT, TEAM), 30, "bot", "m", 1, 1)
    other = Settlement("b", (AGENT, TEAM), 5, "bot", "m", 1, 1)
    states = led.settle_many([item, other, item])
    assert [s[0].spent_micro for s in states] == [30, 35, 35]
    assert led.state(AGENT) == ScopeState(AGENT, 1000, 35, 0)
    assert led.usage() == [UsageRow("bot", "m", 2, 2, 2, 35)]


def test_finished_ids_are_kept_a_day_then_forgotten(make, kind: str,  # noqa: ANN001
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    led = make()
    settle(led, "old", 1)
    if kind == "redis":
        import redis

        ttl = redis.Redis.from_url(make.url).ttl("iron:r:old")
        assert 24 * 3600 <= ttl <= 26 * 3600
        return
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 25 * 3600 + 1)
    for i in range(300):  # the sweep runs every 256 settlements
        settle(led, f"new{i}", 1)
    ids = {r[0] for r in led._conn().execute("SELECT id FROM settled")}  # type: ignore[attr-defined]
    assert "old" not in ids and "new0" in ids


# -- one bad item never hurts the others -------------------------------------------------


def test_a_poison_item_is_isolated(make, kind: str,  # noqa: ANN001
                                   caplog: pytest.LogCaptureFixture) -> None:
    inner = make(poisoned(SQLiteLedger if kind == "sqlite" else RedisLedger))
    inner.set_limit(AGENT, 10_000)
    wb = WriteBehindLedger(inner, window_s=0.2)  # one batch for everything below
    try:
        ids = [f"c{i}" for i in range(10)]
        for rid in [*ids, "poison"]:
            wb.reserve(rid, [AGENT, TEAM], 100, 30, agent_id="bot", model="m")
        with caplog.at_level(logging.ERROR, logger="iron_sdk.ledger"):
            for rid in ids[:5]:
                settle(wb, rid, 7)
            settle(wb, "poison", 7)
            for rid in ids[5:]:
                settle(wb, rid, 7)
            # A value that validation would refuse, sent past it: the ledger itself fails.
            wb._submit(Settlement("overflow", (AGENT, TEAM), 2**63, "bot", "m", 1, 1))
            wb.flush()
        # Every good call is charged exactly once; the poison's reservation is left held.
        assert wb.state(AGENT) == ScopeState(AGENT, 10_000, 70, 100)
        assert wb.state(TEAM) == ScopeState(TEAM, None, 70, 0)
        assert wb.usage() == [UsageRow("bot", "m", 10, 10, 10, 70)]
        messages = [r.getMessage() for r in caplog.records]
        assert any("poison" in m for m in messages) and any("overflow" in m for m in messages)
        assert not any("bot" in m or str(2**63) in m for m in messages)  # ids only
        # Later batches flow as usual.
        wb.reserve("after", [AGENT], 100, 30)
        settle(wb, "after", 3)
        assert wb.state(AGENT) == ScopeState(AGENT, 10_000, 73, 100)
        assert wb.journal is not None and wb.journal.path is not None
        header, entries = wb.journal.path.read_bytes().split(b"\n", 1)
        assert json.loads(header)["ledger"] == wb.identity
        assert entries.strip(b"\0") == b""  # everything committed or given up: no entry left
    finally:
        wb.close()


# -- nothing acknowledged is lost to kill -9 --------------------------------------------

_CHILD = textwrap.dedent("""
    import os, signal, sys
    from iron_sdk.ledger import open_ledger
    from iron_sdk.ledger.writer import WriteBehindLedger, replay_journals

    led = WriteBehindLedger(open_ledger(sys.argv[1]), window_s=60)  # would write in a minute
    led.set_limit("agent:k", 10_000)
    led.reserve("k1", ["agent:k"], 500, 30, agent_id="k", model="m")
    led.reserve("k2", ["agent:k"], 400, 30, agent_id="k", model="m")
    led.settle("k1", ["agent:k"], 123, agent_id="k", model="m", input_tokens=4,
               output_tokens=5)
    led.release("k2")
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_acknowledged_settlement_survives_kill_9(make, kind: str,  # noqa: ANN001
                                                tmp_path: Path) -> None:
    env = {**os.environ, "IRON_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-c", _CHILD, make.url], env=env, timeout=60,
                          capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    journal = (tmp_path if kind == "sqlite" else tmp_path / "home") / "journal"
    [left] = journal.glob("*.jsonl")
    assert stat.S_IMODE(left.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.stat().st_mode) == 0o700
    for _ in range(2):  # the next opener replays it; the one after finds nothing to do
        with open_ledger(make.url) as led:
            assert led.state("agent:k") == ScopeState("agent:k", 10_000, 123, 0)
            assert led.usage() == [UsageRow("k", "m", 1, 4, 5, 123)]
    assert list(journal.glob("*.jsonl")) == []


def test_a_live_process_journal_is_not_replayed(make, tmp_path: Path) -> None:  # noqa: ANN001
    led = make()
    directory = led.home / "journal"
    journal = Journal(directory, led.identity)
    journal.append(Settlement("live", (AGENT,), 9, "bot", "m", 1, 1))
    with open_ledger(make.url) as other:
        assert other.state(AGENT).spent_micro == 0  # its owner is alive: not replayed
    journal.close()  # closed with an entry never committed: left for the next opener
    with open_ledger(make.url) as other:
        assert other.state(AGENT).spent_micro == 9
    assert list(directory.glob("*.jsonl")) == []


def test_openers_racing_replay_a_dead_journal_once(make) -> None:  # noqa: ANN001
    led = make()
    journal = Journal(led.home / "journal", led.identity)
    for i in range(20):
        journal.append(Settlement(f"d{i}", (AGENT,), 3, "bot", "m", 1, 1))
    journal.close()  # as if its process died before committing
    counts: list[int] = []
    openers = [make() for _ in range(4)]
    threads = [threading.Thread(target=lambda o=o: counts.append(replay_journals(o)))
               for o in openers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(counts) == [0, 0, 0, 20]
    assert led.state(AGENT).spent_micro == 60


def test_a_journal_of_another_ledger_is_left_alone(tmp_path: Path) -> None:
    with SQLiteLedger(tmp_path / "a.db") as a, SQLiteLedger(tmp_path / "b.db") as b:
        journal = Journal(tmp_path / "journal", a.identity)
        journal.append(Settlement("x", (AGENT,), 9, "bot", "m", 1, 1))
        journal.close()
        assert replay_journals(b) == 0
        assert b.state(AGENT).spent_micro == 0
        assert replay_journals(a) == 1
        assert a.state(AGENT).spent_micro == 9


def test_a_journal_grows_past_its_first_map_and_replays_every_entry(tmp_path: Path) -> None:
    """Entries are copied into a memory map of the file; more than it first holds grow
    it, committed ones are zeroed, and a dead owner's entries all replay."""
    with SQLiteLedger(tmp_path / "a.db") as led:
        journal = Journal(tmp_path / "journal", led.identity)
        journal.append(Settlement("early", (AGENT,), 1, "bot", "m", 1, 1))
        journal.committed(1)  # written to the ledger (as the writer would say): zeroed
        n = 2_000  # ~100 bytes each: three times what the first map holds
        for i in range(n):
            journal.append(Settlement(f"call-{i:05d}", (AGENT, TEAM), 3, "bot", "m", 2, 1))
        assert journal.path is not None and journal.path.stat().st_size > 64 * 1024
        journal.close()  # as if its process died before committing them
        assert replay_journals(led) == n
        assert led.state(AGENT).spent_micro == led.state(TEAM).spent_micro == 3 * n
        assert led.usage() == [UsageRow("bot", "m", n, 2 * n, n, 3 * n)]


def test_a_clean_close_leaves_no_journal(make) -> None:  # noqa: ANN001
    wb = WriteBehindLedger(make())
    settle(wb, "r", 5)
    path = wb.journal.path  # type: ignore[union-attr]
    assert path is not None and path.exists()
    wb.close()
    assert not path.exists()


def test_wal_checkpoints_move_to_the_writer_thread(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A caller's commit never copies the WAL into the database (a millisecond stall with
    # its sync); the write-behind thread does, after a batch, once the WAL is big enough.
    import sqlite3

    import iron_sdk.ledger.sqlite as sqlite_ledger

    def on_disk(scope: str) -> int:  # what the database file holds, WAL ignored
        uri = f"file:{tmp_path / 'l.db'}?mode=ro&immutable=1"
        with sqlite3.connect(uri, uri=True) as conn:
            try:
                row = conn.execute("SELECT COALESCE(SUM(spent_micro), 0) FROM spend "
                                   "WHERE scope = ?", (scope,)).fetchone()
            except sqlite3.OperationalError:  # not even the tables are there yet
                return 0
        return row[0]

    monkeypatch.setattr(sqlite_ledger, "_CHECKPOINT_BYTES", 1 << 40)  # never due
    monkeypatch.setattr(sqlite_ledger, "_LOOK_EVERY", 1)
    inner = SQLiteLedger(tmp_path / "l.db")
    led = WriteBehindLedger(inner, window_s=0)
    try:
        led.set_limit(AGENT, 10**9)
        led.reserve("a", [AGENT], 10, 30, agent_id="bot", model="m")
        led.settle("a", [AGENT], 7, agent_id="bot", model="m", input_tokens=1,
                   output_tokens=1)
        led.flush()
        conns = list(inner._conns)
        assert conns and all(c.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
                             for c in conns)
        for i in range(300):  # far past SQLite's own 1000-page mark, were it on
            led.reserve(f"r{i}", [AGENT], 10, 30, agent_id="bot", model="m")
            led.settle(f"r{i}", [AGENT], 1, agent_id="bot", model="m", input_tokens=1,
                       output_tokens=1)
        led.flush()
        assert led.state(AGENT).spent_micro == 307
        assert on_disk(AGENT) < 307  # still only in the WAL: nobody checkpointed
        monkeypatch.setattr(sqlite_ledger, "_CHECKPOINT_BYTES", 0)  # due
        led.settle("b", [AGENT], 1, agent_id="bot", model="m", input_tokens=1,
                   output_tokens=1)
        led.flush()
        assert on_disk(AGENT) == 308
    finally:
        led.close()
