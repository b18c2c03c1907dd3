"""Leases: renewed while a call runs; when they run out the reservation is charged and
marked unsettled, and a late settle or release corrects it exactly once. Time is moved."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iron_sdk import Runtime, RuntimeConfig
from iron_sdk.call import Usage
from iron_sdk.config import BudgetConfig
from iron_sdk.errors import BudgetExceededError
from iron_sdk.ledger import Ledger, MemoryLedger, ScopeState, SQLiteLedger, UsageRow
from iron_sdk.ledger.leases import LeaseKeeper
from iron_sdk.request import LlmRequest
from tests.ledgers import KINDS, Clock, make_ledger

AGENT, GLOBAL = "agent:bot", "global"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock(1_800_000_000.0)
    monkeypatch.setattr(time, "time", c)
    return c


@pytest.fixture(params=KINDS)
def ledger(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    led = make_ledger(request, tmp_path / "ledger.db")
    led.set_limit(AGENT, 100)
    yield led
    led.close()


def settle(led: Ledger, rid: str, cost: int, tokens: tuple[int, int] = (5, 6)) -> None:
    led.settle(rid, [AGENT, GLOBAL], cost, agent_id="bot", model="m", input_tokens=tokens[0],
               output_tokens=tokens[1])


def test_default_lease_is_30_seconds() -> None:
    assert BudgetConfig().lease_s == 30.0
    for bad in (0, -1, float("inf"), float("nan"), 1e9):
        with pytest.raises(ValueError):
            BudgetConfig(lease_s=bad)


def test_expired_reservation_is_charged_and_marked_unsettled(ledger: Ledger,
                                                             clock: Clock) -> None:
    ledger.reserve("r1", [AGENT, GLOBAL], 80, 30, agent_id="bot", model="m")
    clock.now += 29
    assert ledger.state(AGENT) == ScopeState(AGENT, 100, 0, 80)
    clock.now += 2
    assert ledger.state(AGENT) == ScopeState(AGENT, 100, 80, 0)
    assert ledger.state(GLOBAL) == ScopeState(GLOBAL, None, 80, 0)  # every scope of the call
    assert ledger.usage() == [UsageRow("bot", "m", 0, 0, 0, 80, unsettled_calls=1)]
    with pytest.raises(BudgetExceededError):  # never a free pass: the charge stays
        ledger.reserve("r2", [AGENT], 21, 30)


def test_late_settle_replaces_the_reserved_charge_exactly_once(ledger: Ledger,
                                                               clock: Clock) -> None:
    ledger.reserve("r1", [AGENT, GLOBAL], 80, 30, agent_id="bot", model="m")
    clock.now += 31
    assert ledger.expire_leases() == 1
    assert ledger.expire_leases() == 0
    settle(ledger, "r1", 25)
    settle(ledger, "r1", 25)  # a retry
    assert ledger.state(AGENT) == ScopeState(AGENT, 100, 25, 0)
    assert ledger.state(GLOBAL) == ScopeState(GLOBAL, None, 25, 0)
    assert ledger.usage() == [UsageRow("bot", "m", 1, 5, 6, 25, unsettled_calls=0)]


def test_late_release_refunds_the_reserved_charge_once(ledger: Ledger, clock: Clock) -> None:
    ledger.reserve("r1", [AGENT], 80, 30, agent_id="bot", model="m")
    clock.now += 31
    assert ledger.state(AGENT).spent_micro == 80
    ledger.release("r1")
    ledger.release("r1")
    settle(ledger, "r1", 50)  # finished: charges nothing
    assert ledger.state(AGENT) == ScopeState(AGENT, 100, 0, 0)
    assert ledger.usage() == [UsageRow("bot", "m", 0, 0, 0, 0, unsettled_calls=0)]


def test_renew_keeps_a_long_call_alive(ledger: Ledger, clock: Clock) -> None:
    ledger.reserve("r1", [AGENT], 80, 30, agent_id="bot", model="m")
    ledger.reserve("r2", [AGENT], 10, 30, agent_id="bot", model="m")
    clock.now += 20
    assert ledger.renew(["r1", "unknown"], 30) == 1
    clock.now += 20  # 40 s after the reservation, 20 s after the renewal
    assert ledger.state(AGENT) == ScopeState(AGENT, 100, 10, 80)  # r2 ran out, r1 did not
    assert ledger.renew(["r2"], 30) == 0  # too late: already charged
    settle(ledger, "r1", 30)
    assert ledger.state(AGENT) == ScopeState(AGENT, 100, 40, 0)
    assert ledger.usage() == [UsageRow("bot", "m", 1, 5, 6, 40, unsettled_calls=1)]


def test_lease_keeper_renews_what_it_holds(ledger: Ledger, clock: Clock) -> None:
    keeper = LeaseKeeper(ledger)
    try:
        ledger.reserve("r1", [AGENT], 80, 30, agent_id="bot", model="m")
        keeper.hold("r1", 30)
        for _ in range(10):  # five minutes of a live call
            clock.now += 25
            assert keeper.renew_now() == 1
        assert ledger.state(AGENT) == ScopeState(AGENT, 100, 0, 80)
        keeper.drop("r1")
        assert keeper.renew_now() == 0
        clock.now += 31  # its process stopped renewing it
        assert ledger.state(AGENT) == ScopeState(AGENT, 100, 80, 0)
    finally:
        keeper.close()


def test_runtime_holds_the_lease_of_each_call_in_flight(tmp_path: Path, clock: Clock) -> None:
    rt = Runtime(RuntimeConfig(home=tmp_path, ledger=str(tmp_path / "ledger.db"),
                               prices={"m": {"input_per_mtok": 1, "output_per_mtok": 1}},
                               load_entry_points=False))
    try:
        rt.ledger.set_limit("agent:bot", 10**9)
        keeper = rt.pm.get_plugin("iron.budget").leases
        session = rt.open_session("bot")
        call = rt.begin_call(session, LlmRequest.chat(
            "m", [{"role": "user", "content": "hi"}], max_tokens=10))
        assert keeper.held() == {call.call_id: 30.0}
        clock.now += 25
        assert keeper.renew_now() == 1
        clock.now += 25
        rt.settle_call(call, Usage(input_tokens=3, output_tokens=2))
        assert keeper.held() == {}
        failed = rt.begin_call(session, LlmRequest.chat(
            "m", [{"role": "user", "content": "x"}], max_tokens=10))
        rt.fail_call(failed, RuntimeError("boom"))
        assert keeper.held() == {}
        rt.flush()
        state = rt.ledger.state("agent:bot")
        assert (state.spent_micro, state.reserved_micro) == (5, 0)
        assert [(r.calls, r.unsettled_calls) for r in rt.ledger.usage()] == [(1, 0)]
    finally:
        rt.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_the_keeper_thread_renews_on_its_own(kind: str, tmp_path: Path) -> None:
    led: Ledger = MemoryLedger() if kind == "memory" else SQLiteLedger(tmp_path / "l.db")
    led.set_limit(AGENT, 100)
    keeper = LeaseKeeper(led)
    try:
        led.reserve("r1", [AGENT], 80, 0.15)
        keeper.hold("r1", 0.15)  # renewed every 50 ms by the thread
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            assert led.state(AGENT) == ScopeState(AGENT, 100, 0, 80)
            time.sleep(0.02)
    finally:
        keeper.close()
        led.close()


def test_a_sleeping_keeper_wakes_for_a_shorter_lease(tmp_path: Path) -> None:
    led = MemoryLedger()
    led.set_limit(AGENT, 100)
    keeper = LeaseKeeper(led)
    try:
        keeper.hold("warmup", 30)
        deadline = time.monotonic() + 5
        while keeper._basis != 30 and time.monotonic() < deadline:  # asleep for 10 s now
            time.sleep(0.01)
        keeper.drop("warmup")
        led.reserve("r1", [AGENT], 80, 0.15)
        keeper.hold("r1", 0.15)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            assert led.state(AGENT).reserved_micro == 80
            time.sleep(0.02)
    finally:
        keeper.close()
