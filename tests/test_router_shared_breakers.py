"""Circuit breakers shared by routers on one Redis ledger (iron_router.breaker_store): two
breaker sets on a real redis-server with a moved clock, then two real router processes
in front of real stand-in providers; and the per-process fallback without Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from iron_router.breaker_store import CLAIM_TTL_S, SharedBreakers, breakers_for
from iron_router.config import parse_config
from iron_router.deployments import Deployments
from iron_sdk.identity import issue_token
from iron_sdk.policies.reliability import DeploymentBreakers
from iron_sdk.standin import StandInProvider
from tests.router_util import RouterProcess, free_port, wait_until
from tests.test_router import MSG
from tests.test_router_gateway import deployment

KEY = ("chat", "http://bob:s3cret@10.0.0.7:8000/v1?api-key=k3y")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def pair(url: str, clock: Callable[[], float], allowed_fails: int = 2
         ) -> tuple[SharedBreakers, SharedBreakers]:
    a, b = (SharedBreakers(url, allowed_fails, 5.0, clock=clock) for _ in range(2))
    for breakers in (a, b):
        breakers.watch(KEY)
        breakers.sync()
    return a, b


def sync(*breakers: SharedBreakers) -> None:
    for b in breakers:
        b.sync()


# -- two breaker sets, one Redis, a moved clock -----------------------------------------
def test_a_breaker_one_router_opens_is_open_everywhere_and_one_router_takes_the_trial(
        redis_url: str) -> None:
    clock = Clock()
    a, b = pair(redis_url, clock)
    try:
        assert a.connected and b.connected
        a.failure(KEY)
        a.failure(KEY)  # allowed_fails: open here at once, before Redis is involved
        assert a.state(KEY) == "open" and b.state(KEY) == "closed"
        sync(a, b)
        assert b.state(KEY) == "open" and not b.acquire(KEY)
        assert b.retry_after(KEY) == pytest.approx(5.0, abs=0.01)
        clock.now += 5.0
        # Half-open on both; each wants the trial, only the one that claims it sends it.
        assert b.state(KEY) == a.state(KEY) == "half_open"
        assert not b.acquire(KEY) and not a.acquire(KEY)
        sync(b, a)
        assert [b.acquire(KEY), a.acquire(KEY), b.acquire(KEY)] == [True, False, False]
        b.failure(KEY)  # the trial failed: open everywhere again
        sync(b, a)
        assert a.state(KEY) == b.state(KEY) == "open"
        clock.now += 5.0
        assert not a.acquire(KEY)
        sync(a, b)
        assert a.acquire(KEY) and not b.acquire(KEY)
        a.success(KEY)  # the trial succeeded: closed everywhere
        sync(a, b)
        assert a.state(KEY) == b.state(KEY) == "closed"
        assert a.acquire(KEY) and b.acquire(KEY)
    finally:
        a.close()
        b.close()


def test_failures_count_across_routers_and_a_success_anywhere_resets_them(
        redis_url: str) -> None:
    clock = Clock()
    a, b = pair(redis_url, clock, allowed_fails=3)
    try:
        a.failure(KEY)
        b.failure(KEY)
        sync(a, b)
        assert a.state(KEY) == b.state(KEY) == "closed"
        b.success(KEY)  # consecutive failures across the fleet: this one resets them
        sync(b, a)
        a.failure(KEY)
        b.failure(KEY)
        sync(a, b)
        assert a.state(KEY) == b.state(KEY) == "closed"
        a.failure(KEY)  # the third in a row, counted on two routers
        sync(a, b)
        assert a.state(KEY) == b.state(KEY) == "open"
    finally:
        a.close()
        b.close()


def test_an_unused_trial_claim_lapses_for_another_router(redis_url: str) -> None:
    clock = Clock()
    a, b = pair(redis_url, clock)
    try:
        a.failure(KEY)
        a.failure(KEY)
        sync(a, b)
        clock.now += 5.0
        assert not a.acquire(KEY) and not b.acquire(KEY)
        sync(a, b)  # a claims it, b is told to wait
        clock.now += CLAIM_TTL_S + 0.01  # a never sent it
        sync(b)
        assert b.acquire(KEY) and not a.acquire(KEY)
    finally:
        a.close()
        b.close()


def test_the_store_holds_no_url_or_credential(redis_url: str) -> None:
    import redis

    clock = Clock()
    a, b = pair(redis_url, clock)
    a.failure(KEY)
    a.failure(KEY)
    sync(a)
    a.close()
    b.close()
    client = redis.Redis.from_url(redis_url)
    try:
        dump = b"".join(k + b"".join(f + v for f, v in client.hgetall(k).items())
                        for k in client.keys("*"))
    finally:
        client.close()
    assert dump and not any(s in dump for s in (b"bob", b"s3cret", b"k3y", b"10.0.0.7"))


def test_without_redis_the_breakers_are_the_per_process_ones() -> None:
    clock = Clock()
    down = SharedBreakers(f"redis://127.0.0.1:{free_port()}/0", 2, 5.0, clock=clock)
    try:
        down.watch(KEY)
        down.sync()  # never raises
        assert not down.connected
        assert down.acquire(KEY)
        down.failure(KEY)
        down.failure(KEY)
        down.sync()
        assert down.state(KEY) == "open" and not down.acquire(KEY)
        clock.now += 5.0
        assert down.acquire(KEY) and not down.acquire(KEY)  # the local half-open trial
        down.success(KEY)
        down.sync()
        assert down.state(KEY) == "closed" and down.acquire(KEY)
    finally:
        down.close()


def test_only_a_redis_ledger_shares_breakers(redis_url: str, tmp_path: Path) -> None:
    assert type(breakers_for(str(tmp_path / "ledger.db"), 3, 5.0)) is DeploymentBreakers
    shared = breakers_for(redis_url, 3, 5.0)
    assert isinstance(shared, SharedBreakers)
    shared.close()
    config = parse_config({"model_list": [{"model_name": "chat", "litellm_params": {
        "model": "openai/gpt-4o-mini", "api_base": "http://127.0.0.1:9/v1"}}],
        "iron": {"ledger": redis_url}})
    d = Deployments(config)
    assert isinstance(d.breakers, SharedBreakers)
    d.close()


# -- two router processes on one redis-server ---------------------------------------------
def _states(router: RouterProcess) -> dict[str, str]:
    return httpx.get(router.url + "/healthz", timeout=5).json()["deployments"]["chat"]


def _label(provider: StandInProvider) -> str:
    return f"chat@http://127.0.0.1:{provider.port}"


def _fire(routers: list[RouterProcess], token: str, until: Callable[[], bool],
          timeout_s: float) -> list[int]:
    """Requests to every router, concurrently, until ``until()`` or ``timeout_s``."""
    statuses: list[int] = []
    deadline = time.monotonic() + timeout_s

    def loop(router: RouterProcess) -> None:
        with httpx.Client(timeout=30) as client:
            while not until() and time.monotonic() < deadline:
                r = client.post(router.url + "/v1/chat/completions",
                                headers={"authorization": f"Bearer {token}"},
                                json={"model": "chat", "messages": MSG, "max_tokens": 5})
                statuses.append(r.status_code)

    threads = [threading.Thread(target=loop, args=(r,)) for r in routers for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def test_two_routers_share_a_deployment_breaker_through_redis(tmp_path: Path,
                                                              redis_url: str) -> None:
    home = tmp_path / "iron"
    cooldown = 2.0
    with StandInProvider() as bad, StandInProvider() as good:
        config: dict[str, Any] = {
            "model_list": [deployment("chat", "gpt-4o-mini", bad),
                           deployment("chat", "gpt-4o-mini", good)],
            "router_settings": {"allowed_fails": 2, "cooldown_time": cooldown},
            "iron": {"ledger": redis_url}}
        with RouterProcess(home=home, config=config) as r1, \
                RouterProcess(home=home, config=config) as r2:
            token = issue_token(home, "fleet")
            bad.force = "fail-500"
            # Router 1 alone: the bad deployment fails twice and its breaker opens.
            for _ in range(8):
                response = httpx.post(r1.url + "/v1/chat/completions", timeout=30,
                                      headers={"authorization": f"Bearer {token}"},
                                      json={"model": "chat", "messages": MSG, "max_tokens": 5})
                assert response.status_code == 200, response.text  # retried on the good one
                if _states(r1)[_label(bad)] == "open":
                    break
            assert _states(r1)[_label(bad)] == "open"
            opened = time.monotonic()
            # Router 2 never talked to it, and knows within a second.
            wait_until(lambda: _states(r2)[_label(bad)] == "open",
                       "router 2 to see the breaker open", timeout_s=1.0)
            assert time.monotonic() - opened < 1.0
            sent = len(bad.requests)
            assert sent == 2
            statuses = _fire([r2], token, lambda: False, timeout_s=0.5)
            assert statuses and set(statuses) == {200}
            assert len(bad.requests) == sent  # router 2 skips it too

            # After the cooldown, both routers busy: exactly one trial reaches it (it
            # fails, so the breaker opens again for another cooldown).
            statuses = _fire([r1, r2], token, lambda: len(bad.requests) > sent,
                             timeout_s=cooldown + 3.0)
            trials = len(bad.requests) - sent
            assert trials == 1, f"{trials} trials after the cooldown; one was due"
            statuses += _fire([r1, r2], token, lambda: False, timeout_s=cooldown / 2)
            assert set(statuses) == {200}
            assert len(bad.requests) == sent + 1  # one trial for both routers
            assert _states(r1)[_label(bad)] == _states(r2)[_label(bad)] == "open"

            # Healthy again: the next trial succeeds and closes it on both routers.
            bad.force = None
            _fire([r1, r2], token, lambda: len(bad.requests) > sent + 1,
                  timeout_s=cooldown + 3.0)
            for router in (r1, r2):
                wait_until(lambda r=router: _states(r)[_label(bad)] == "closed",
                           "the breaker to close on both routers", timeout_s=2.0)
            before = len(bad.requests)
            _fire([r2], token, lambda: len(bad.requests) > before, timeout_s=2.0)
            assert len(bad.requests) > before  # router 2 sends to it again
