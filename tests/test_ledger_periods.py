"""Periodic budgets (daily/weekly/monthly in a time zone), on every ledger; time is moved."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from iron_sdk.errors import BudgetExceededError
from iron_sdk.ledger import Ledger, ScopeState, SQLiteLedger, UsageRow, open_ledger
from tests.ledgers import KINDS, Clock, make_ledger

AGENT = "agent:bot"
UTC = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
       zone: ZoneInfo = UTC) -> float:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=zone).timestamp()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock(at(2026, 3, 10, 12))
    monkeypatch.setattr(time, "time", c)
    return c


@pytest.fixture(params=KINDS)
def ledger(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    led = make_ledger(request, tmp_path / "ledger.db")
    yield led
    led.close()


def spend(led: Ledger, rid: str, amount: int, cost: int | None = None) -> None:
    led.reserve(rid, [AGENT], amount, 30, agent_id="bot", model="m")
    led.settle(rid, [AGENT], amount if cost is None else cost, agent_id="bot", model="m",
               input_tokens=1, output_tokens=1)


def test_daily_refuses_at_its_limit_and_allows_after_midnight(ledger: Ledger,
                                                              clock: Clock) -> None:
    ledger.set_limit(AGENT, 100, period="daily")
    clock.now = at(2026, 3, 10, 23, 0)
    spend(ledger, "a", 60)
    with pytest.raises(BudgetExceededError):
        ledger.reserve("b", [AGENT], 50, 30)
    assert ledger.state(AGENT) == ScopeState(AGENT, 100, 60, 0, "daily", at(2026, 3, 10),
                                             at(2026, 3, 11))
    clock.now = at(2026, 3, 10, 23, 59, 59)
    with pytest.raises(BudgetExceededError):
        ledger.reserve("b", [AGENT], 50, 30)
    clock.now = at(2026, 3, 11, 0, 0, 1)
    assert ledger.state(AGENT) == ScopeState(AGENT, 100, 0, 0, "daily", at(2026, 3, 11),
                                             at(2026, 3, 12))
    spend(ledger, "b", 100)  # the whole day's budget again
    with pytest.raises(BudgetExceededError):
        ledger.reserve("c", [AGENT], 1, 30)
    assert ledger.usage() == [UsageRow("bot", "m", 2, 2, 2, 160)]


def test_monthly_resets_on_the_first_in_its_zone_not_at_utc_midnight(ledger: Ledger,
                                                                     clock: Clock) -> None:
    ledger.set_limit(AGENT, 100, period="monthly", tz="Europe/Paris")
    ledger.set_limit("team:utc", 100, period="monthly")
    clock.now = at(2026, 3, 31, 23, 30, zone=PARIS)  # 21:30 UTC
    spend(ledger, "a", 100)
    ledger.reserve("u", ["team:utc"], 100, 30)
    ledger.settle("u", ["team:utc"], 100, agent_id="bot", model="m", input_tokens=0,
                  output_tokens=0)
    with pytest.raises(BudgetExceededError):
        ledger.reserve("b", [AGENT], 1, 30)
    clock.now = at(2026, 4, 1, 0, 30, zone=PARIS)  # still March 31 in UTC
    state = ledger.state(AGENT)
    assert state == ScopeState(AGENT, 100, 0, 0, "monthly", at(2026, 4, 1, zone=PARIS),
                               at(2026, 5, 1, zone=PARIS))
    assert state.period_start == at(2026, 3, 31, 22)  # Paris is UTC+2 in April
    assert ledger.reserve("b", [AGENT], 100, 30) is True
    with pytest.raises(BudgetExceededError):  # the UTC month has not turned yet
        ledger.reserve("v", ["team:utc"], 1, 30)


def test_reserved_before_midnight_settled_after_is_charged_to_the_old_day(
        ledger: Ledger, clock: Clock) -> None:
    ledger.set_limit(AGENT, 100, period="daily")
    clock.now = at(2026, 3, 10, 23, 59, 50)
    ledger.reserve("late", [AGENT], 80, 30, agent_id="bot", model="m")
    clock.now = at(2026, 3, 11, 0, 0, 5)
    # The old day's reservation does not hold the new day's budget.
    assert ledger.state(AGENT) == ScopeState(AGENT, 100, 0, 0, "daily", at(2026, 3, 11),
                                             at(2026, 3, 12))
    assert ledger.reserve("new", [AGENT], 100, 30) is True
    states = ledger.settle("late", [AGENT], 70, agent_id="bot", model="m", input_tokens=1,
                           output_tokens=1)
    assert states == [ScopeState(AGENT, 100, 70, 0, "daily", at(2026, 3, 10), at(2026, 3, 11))]
    assert ledger.state(AGENT) == ScopeState(AGENT, 100, 0, 100, "daily", at(2026, 3, 11),
                                             at(2026, 3, 12))


def test_weekly_is_the_iso_week_from_monday(ledger: Ledger, clock: Clock) -> None:
    ledger.set_limit(AGENT, 10, period="weekly")
    clock.now = at(2026, 3, 15, 23)  # a Sunday
    spend(ledger, "a", 10)
    state = ledger.state(AGENT)
    assert (state.period_start, state.resets_at) == (at(2026, 3, 9), at(2026, 3, 16))
    clock.now = at(2026, 3, 16, 0, 0, 1)  # Monday
    assert ledger.reserve("b", [AGENT], 10, 30) is True


def test_changing_the_period_is_seen_by_another_instance(tmp_path: Path, clock: Clock) -> None:
    with SQLiteLedger(tmp_path / "l.db") as first, SQLiteLedger(tmp_path / "l.db") as admin:
        clock.now = at(2026, 3, 10, 23)
        spend(first, "a", 50)
        admin.set_limit(AGENT, 60, period="daily")
        with pytest.raises(BudgetExceededError):  # a new period starts from zero: 61 > 60
            first.reserve("b", [AGENT], 61, 30)
        assert first.reserve("b", [AGENT], 60, 30) is True
        admin.set_limit(AGENT, 1000)  # back to total: the 50 spent before is there again
        assert first.state(AGENT) == ScopeState(AGENT, 1000, 50, 0)  # "b" holds its day
        first.settle("b", [AGENT], 5, agent_id="bot", model="m", input_tokens=0,
                     output_tokens=0)
        assert first.state(AGENT) == ScopeState(AGENT, 1000, 50, 0)


def test_a_known_period_changed_or_removed_elsewhere_is_seen_by_the_next_reservation(
        tmp_path: Path, clock: Clock) -> None:
    # The second reservation of known-limited scopes is one statement built from the
    # configs last seen; a change made by another instance must still be judged right.
    team = "team:ops"
    with SQLiteLedger(tmp_path / "l.db") as first, SQLiteLedger(tmp_path / "l.db") as admin:
        admin.set_limit(AGENT, 100, period="daily")
        admin.set_limit(team, 1000, period="daily")
        spend(first, "a", 10)
        spend(first, "b", 10)  # first knows AGENT as daily: 20 spent today
        admin.set_limit(AGENT, 50, period="monthly")
        spend(admin, "c", 45)  # 45 this month; still 20 on the day first knows
        with pytest.raises(BudgetExceededError):
            first.reserve("d", [AGENT], 10, 30)
        admin.set_limit(AGENT, 1000)  # total again: nothing was spent under it
        assert first.reserve("e", [AGENT, team], 5, 30, agent_id="bot", model="m") is True
        first.release("e")
        # The team's daily limit goes; a reservation of both scopes that runs out of lease
        # charges the team's total, not the day this process last knew.
        admin.set_limit(team, None)
        assert first.reserve("f", [AGENT, team], 7, 30, agent_id="bot", model="m") is True
        clock.now += 60
        assert first.expire_leases() == 1
        assert admin.state(team) == ScopeState(team, None, 7, 0)
        assert admin.state(AGENT) == ScopeState(AGENT, 1000, 7, 0)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_settle_after_a_period_change_elsewhere_lands_in_the_new_period(
        kind: str, tmp_path: Path, clock: Clock, request: pytest.FixtureRequest) -> None:
    url = str(tmp_path / "l.db") if kind == "sqlite" else request.getfixturevalue("redis_url")
    with open_ledger(url) as first, open_ledger(url) as admin:
        first.settle("a", [AGENT], 5, agent_id="bot", model="m", input_tokens=0,
                     output_tokens=0)  # this process now knows AGENT as 'total'
        admin.set_limit(AGENT, 100, period="daily")
        [state] = first.settle("b", [AGENT], 7, agent_id="bot", model="m", input_tokens=0,
                               output_tokens=0)  # no reservation: the current period
        assert state == ScopeState(AGENT, 100, 7, 0, "daily", at(2026, 3, 10), at(2026, 3, 11))
        assert admin.state(AGENT).spent_micro == 7


def test_bad_period_or_zone_is_refused(ledger: Ledger) -> None:
    with pytest.raises(ValueError):
        ledger.set_limit(AGENT, 10, period="hourly")
    with pytest.raises(ValueError):
        ledger.set_limit(AGENT, 10, period="daily", tz="Mars/Olympus")
    assert ledger.state(AGENT).limit_micro is None


# -- SQLite schema migration ------------------------------------------------------------

_V0 = (
    "CREATE TABLE scopes (scope TEXT PRIMARY KEY, limit_micro INTEGER, "
    "spent_micro INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
    "CREATE TABLE reservations (id TEXT NOT NULL, scope TEXT NOT NULL, amount_micro INTEGER "
    "NOT NULL, expires REAL NOT NULL, PRIMARY KEY (id, scope)) WITHOUT ROWID",
    "CREATE INDEX reservations_by_scope ON reservations (scope, expires, amount_micro)",
    "CREATE TABLE usage (agent_id TEXT NOT NULL, model TEXT NOT NULL, calls INTEGER NOT NULL, "
    "input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, cost_micro INTEGER NOT "
    "NULL, PRIMARY KEY (agent_id, model)) WITHOUT ROWID",
    "INSERT INTO scopes VALUES ('agent:bot', 100, 40), ('global', NULL, 70)",
    "INSERT INTO reservations VALUES ('old', 'agent:bot', 30, 9e99)",
    "INSERT INTO usage VALUES ('bot', 'gpt-4o', 3, 300, 30, 70)",
)


def test_an_old_ledger_file_is_migrated(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path)
    for stmt in _V0:
        conn.execute(stmt)
    conn.commit()
    conn.close()
    with SQLiteLedger(path) as led:
        assert led.state(AGENT) == ScopeState(AGENT, 100, 40, 0)
        assert led.state("global") == ScopeState("global", None, 70, 0)
        assert led.usage() == [UsageRow("bot", "gpt-4o", 3, 300, 30, 70, 0)]
        assert led.scopes() == [AGENT, "global"]
        spend(led, "new", 60)
        with pytest.raises(BudgetExceededError):
            led.reserve("more", [AGENT], 1, 30)
    with SQLiteLedger(path) as led:  # a second open finds the new version
        assert led.state(AGENT).spent_micro == 100
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    conn.close()


def test_a_version_2_file_keeps_its_calls_in_flight(tmp_path: Path, clock: Clock) -> None:
    # Version 2 summed the held rows through an index; version 3 keeps the sums in a table.
    path = tmp_path / "ledger.db"
    with SQLiteLedger(path) as led:
        led.set_limit(AGENT, 100, period="daily")
        spend(led, "done", 10)
        led.reserve("a", [AGENT, "global"], 30, 3600, agent_id="bot", model="m")
        led.reserve("b", [AGENT], 20, 3600, agent_id="bot", model="m")
    conn = sqlite3.connect(path)
    conn.executescript("""
        DROP TRIGGER held_added; DROP TRIGGER held_removed; DROP TABLE held_sum;
        CREATE INDEX held_by_scope ON held (scope, pkey, amount_micro);
        PRAGMA user_version = 2;""")
    conn.close()
    with SQLiteLedger(path) as led:
        assert led.state(AGENT) == ScopeState(AGENT, 100, 10, 50, "daily", at(2026, 3, 10),
                                              at(2026, 3, 11))
        with pytest.raises(BudgetExceededError):
            led.reserve("c", [AGENT], 41, 30)
        led.settle("a", [AGENT, "global"], 25, agent_id="bot", model="m", input_tokens=1,
                   output_tokens=1)
        led.release("b")
        assert led.state(AGENT).reserved_micro == 0
        assert led.reserve("c", [AGENT], 65, 30) is True  # 10 + 25 spent, 65 fits
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    conn.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(Exception, match="schema version 99"):
        SQLiteLedger(path)


# -- CLI --------------------------------------------------------------------------------


def test_cli_budget_set_and_show_periods(iron_home: Path, clock: Clock,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from iron_sdk.cli import main

    clock.now = at(2026, 3, 31, 23, 30, zone=PARIS)
    assert main(["budget", "set", "bot", "--usd", "2", "--period", "monthly",
                 "--tz", "Europe/Paris"]) == 0
    assert "monthly (Europe/Paris)" in capsys.readouterr().out
    assert main(["budget", "show", "bot", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["period"] == "monthly" and row["limit_usd"] == 2.0
    assert row["period_start"] == "2026-02-28T23:00:00+00:00"
    assert row["resets_at"] == "2026-03-31T22:00:00+00:00"
    assert main(["budget", "set", "bot", "--usd", "2", "--tz", "Nowhere/Else",
                 "--period", "daily"]) == 2
    assert "unknown time zone" in capsys.readouterr().err
    assert main(["budget", "set", "team:x", "--usd", "1"]) == 0
    assert main(["budget", "show", "team:x", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert (row["period"], row["period_start"], row["resets_at"]) == ("total", None, None)


def test_held_sums_always_match_the_held_rows(tmp_path: Path, clock: Clock) -> None:
    # The sums are kept by triggers on every way a reservation comes and goes: reserve
    # (one statement or the full check), settle, release, lease expiry; across periods.
    import random

    rng = random.Random(7)
    team = "team:ops"
    with SQLiteLedger(tmp_path / "l.db") as led:
        led.set_limit(AGENT, 10**9, period="daily")
        led.set_limit(team, 10**9)
        live: list[str] = []
        for n in range(400):
            op = rng.random()
            if op < 0.5 or not live:
                rid = f"r{n}"
                led.reserve(rid, rng.choice([[AGENT], [AGENT, team], [team, "global"]]),
                            rng.randrange(1, 1000), rng.choice([5, 3600]), agent_id="bot",
                            model="m")
                live.append(rid)
            elif op < 0.75:
                led.settle(live.pop(rng.randrange(len(live))), [AGENT, team],
                           rng.randrange(0, 1000), agent_id="bot", model="m",
                           input_tokens=1, output_tokens=1)
            elif op < 0.9:
                led.release(live.pop(rng.randrange(len(live))))
            else:
                clock.now += rng.choice([1, 10, 4 * 3600])  # leases run out, days pass
                led.expire_leases()
        conn = sqlite3.connect(tmp_path / "l.db")
        kept = dict(((s, k), a) for s, k, a in conn.execute(
            "SELECT scope, pkey, amount_micro FROM held_sum WHERE amount_micro != 0"))
        summed = dict(((s, k), a) for s, k, a in conn.execute(
            "SELECT scope, pkey, SUM(amount_micro) FROM held GROUP BY scope, pkey"))
        conn.close()
        assert summed and kept == summed
        assert led.state(team).reserved_micro == summed.get((team, ""), 0)
