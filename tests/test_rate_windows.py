"""Rate windows in shared memory (iron_sdk.policy.rate_windows): the same decisions as the
other stores, shared by processes (forked or not), and SQL when a scope has no slot.
The 4-process test in test_policy.py runs the SQLite store, and so these windows, too."""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path
from typing import Any

import pytest

from iron_sdk.policy.memory import MemoryPolicyStore
from iron_sdk.policy.rate_windows import NoWindow, RateWindows
from iron_sdk.policy.sqlite import SQLitePolicyStore

T0 = 5_000_000.0


@pytest.mark.parametrize("seed", range(12))
def test_windows_decide_every_call_as_the_memory_store_does(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    windows, memory = RateWindows(tmp_path / "ledger.db"), MemoryPolicyStore()
    rpm = rng.choice([None, 5, 20])
    tpm = rng.choice([None, 100, 400]) if rpm else 300
    now, refused = T0, 0
    for _ in range(500):  # pauses from none to longer than the ring
        now += rng.choice([0, 0.1, 0.5, 1, 3, 20, 70])
        tokens = rng.randint(1, 60)
        got = windows.take("agent:a", tokens, rpm, tpm, now)
        want = memory.take("agent:a", tokens, rpm, tpm, now)
        assert got == pytest.approx(want)
        refused += got is not None
    assert 0 < refused < 500  # both ways were exercised
    windows.close()


def test_a_clock_that_goes_back_is_counted_like_the_other_stores(tmp_path: Path) -> None:
    windows, memory = RateWindows(tmp_path / "ledger.db"), MemoryPolicyStore()
    for now in (T0 + 200, T0 + 201, T0, T0 + 62, T0 + 200.5, T0 + 1):
        for _ in range(3):
            assert windows.take("agent:a", 10, 4, None, now) == pytest.approx(
                memory.take("agent:a", 10, 4, None, now))


def _take_in_child(windows: RateWindows, out: Any) -> None:
    out.put([windows.take("agent:a", 1, 5, None, T0 + 1) for _ in range(3)])


def test_a_forked_child_counts_in_the_parents_windows(tmp_path: Path) -> None:
    windows = RateWindows(tmp_path / "ledger.db")
    assert [windows.take("agent:a", 1, 5, None, T0) for _ in range(3)] == [None] * 3
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_take_in_child, args=(windows, out))
    child.start()
    got = out.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    assert got[:2] == [None, None]  # 3 + 2 = the 5 a minute allows
    assert got[2] == pytest.approx(60.0)  # the parent's first bucket leaves at T0 + 61
    assert windows.take("agent:a", 1, 5, None, T0 + 1) is not None  # and the parent sees it
    windows.close()


def test_a_scope_without_a_slot_is_counted_in_sql(tmp_path: Path) -> None:
    small = RateWindows(tmp_path / "ledger.db", slots=1)
    assert small.take("agent:a", 1, 1, None, T0) is None
    with pytest.raises(NoWindow):
        small.take("agent:b", 1, 1, None, T0)
    store = SQLitePolicyStore(tmp_path / "ledger.db")
    store._windows = small  # the table is full for agent:b
    assert store.take("agent:b", 1, 1, None, T0) is None
    assert store.take("agent:b", 1, 1, None, T0 + 30) == pytest.approx(31.0)
    assert store.take("agent:a", 1, 1, None, T0 + 30) == pytest.approx(31.0)
    store.close()


def test_two_stores_on_one_ledger_share_a_window(tmp_path: Path) -> None:
    first, second = SQLitePolicyStore(tmp_path / "l.db"), SQLitePolicyStore(tmp_path / "l.db")
    assert first.take("agent:a", 10, None, 25, T0) is None
    assert second.take("agent:a", 10, None, 25, T0 + 1) is None
    assert first.take("agent:a", 10, None, 25, T0 + 2) is not None
    assert (tmp_path / "l.db.rates").stat().st_mode & 0o777 == 0o600
    first.close()
    second.close()


def _lock_in_child(shared: Any, out: Any) -> None:
    with shared.locked():
        out.put("locked")


def test_a_forked_child_and_its_parent_exclude_each_other(tmp_path: Path) -> None:
    # flock belongs to the open file, which fork shares: a child locking through the file
    # it inherited would not wait for its parent (the limits version and the windows
    # would lose updates). SharedMap opens the file again in the child.
    import queue

    from iron_sdk.shared_map import SharedMap

    shared = SharedMap(tmp_path / "x.map", 8)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    with shared.locked():
        child = ctx.Process(target=_lock_in_child, args=(shared, out))
        child.start()
        with pytest.raises(queue.Empty):  # the child waits for the parent's lock
            out.get(timeout=0.5)
    assert out.get(timeout=30) == "locked"  # and gets it once the parent lets go
    child.join(30)
    assert child.exitcode == 0
    shared.close()


def test_a_free_lock_is_taken_holding_the_gil_a_held_one_is_waited_for(tmp_path: Path) -> None:
    """``SharedMap.locked`` tries the lock without letting go of the GIL (no other thread
    of this process gets to run in the middle of a rate-limited call); a lock another open
    file holds makes the try fail, and it waits for it as ``fcntl.flock`` does."""
    import fcntl
    import os
    import threading

    from iron_sdk.shared_map import SharedMap, _flock_holding_gil

    path = tmp_path / "map"
    shared = SharedMap(path, 64)
    other = os.open(path, os.O_RDWR)  # another open file: flock excludes it like a process
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        assert _flock_holding_gil(shared._fd, fcntl.LOCK_EX | fcntl.LOCK_NB) != 0
        entered = threading.Event()

        def lock_it() -> None:
            with shared.locked():
                entered.set()

        waiter = threading.Thread(target=lock_it)
        waiter.start()
        assert not entered.wait(0.2)  # waits for the other holder
        fcntl.flock(other, fcntl.LOCK_UN)
        assert entered.wait(10)
        waiter.join(10)
        assert _flock_holding_gil(shared._fd, fcntl.LOCK_EX | fcntl.LOCK_NB) == 0
        assert _flock_holding_gil(shared._fd, fcntl.LOCK_UN) == 0
    finally:
        os.close(other)
        shared.close()
