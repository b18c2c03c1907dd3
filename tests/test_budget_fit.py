"""Reserve what the call can cost (issue 10): no worst-case wall for calls without an
output limit, images reserved by their size, in library mode and through the router."""

from __future__ import annotations

import base64
import os
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from iron_sdk import (
    BudgetConfig,
    BudgetExceededError,
    Runtime,
    RuntimeConfig,
    protect_agent,
    set_runtime,
)
from iron_sdk.identity import issue_token
from iron_sdk.ledger import SQLiteLedger
from iron_sdk.policies.audit import read_events
from tests.router_util import RouterProcess, wait_until
from tests.test_router import provider_env

MSG = [{"role": "user", "content": "Summarise the plan."}]
CAP_MICRO = 1_000  # $0.001


def _png(width: int, height: int, size: int) -> str:
    """A data URL of a PNG of ``width``×``height`` padded to about ``size`` bytes (the
    estimate reads the header only, as providers' formulas need)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    png = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
           + struct.pack(">I", zlib.crc32(chunk)) + os.urandom(size))
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _image_message() -> list[dict[str, Any]]:
    return [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": _png(1024, 1024, 30_000)}}]}]


@pytest.fixture
def budgeted(iron_home: Path) -> Iterator[Runtime]:
    rt = Runtime(RuntimeConfig(home=iron_home))
    rt.ledger.set_limit("agent:thrifty", CAP_MICRO)
    previous = set_runtime(rt)
    yield rt
    set_runtime(previous)
    rt.close()


def test_a_call_without_max_tokens_gets_the_limit_the_budget_affords(budgeted, provider,
                                                                      client):
    @protect_agent(agent_id="thrifty")
    def agent() -> str:
        return client.chat.completions.create(model="gpt-4o-mini",
                                              messages=MSG).choices[0].message.content

    assert agent()
    sent = provider.requests[0]["max_tokens"]  # the stand-in saw the cap
    assert 16 <= sent < 16_384  # below gpt-4o-mini's maximum output
    budgeted.flush()
    capped = [e for e in read_events(budgeted.config.home / "audit.jsonl")
              if e["type"] == "output_capped"]
    assert capped[0]["max_tokens"] == sent
    state = budgeted.ledger.state("agent:thrifty")
    assert 0 < state.spent_micro <= CAP_MICRO


def test_the_operator_can_refuse_instead(iron_home, provider, client):
    rt = Runtime(RuntimeConfig(home=iron_home, budget=BudgetConfig(reserve="model_max")))
    rt.ledger.set_limit("agent:strict", CAP_MICRO)
    previous = set_runtime(rt)
    try:
        @protect_agent(agent_id="strict")
        def agent() -> None:
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)

        with pytest.raises(BudgetExceededError):
            agent()
        assert provider.requests == []
    finally:
        set_runtime(previous)
        rt.close()


def test_a_minimal_answer_that_cannot_be_afforded_is_refused(budgeted, provider, client):
    budgeted.ledger.set_limit("agent:thrifty", 2)  # 2 µ$: not even 16 output tokens

    @protect_agent(agent_id="thrifty")
    def agent() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)

    with pytest.raises(BudgetExceededError):
        agent()
    assert provider.requests == []


def test_concurrent_image_calls_stay_under_the_cap(budgeted, provider, client):
    @protect_agent(agent_id="thrifty")
    def one() -> str:
        try:
            client.chat.completions.create(model="gpt-4o-mini", max_tokens=50,
                                           messages=_image_message())
        except BudgetExceededError:
            return "refused"
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: one(), range(8)))
    budgeted.flush()
    state = budgeted.ledger.state("agent:thrifty")
    assert state.spent_micro <= CAP_MICRO and state.reserved_micro == 0
    assert outcomes.count("ok") == len(provider.requests)


# -- through the router ----------------------------------------------------------------------
@pytest.fixture
def router(tmp_path: Path, provider: Any) -> Iterator[tuple[RouterProcess, Path]]:
    home = tmp_path / "iron"
    with RouterProcess(home=home, env=provider_env(provider)) as proc:
        with SQLiteLedger(home / "ledger.db") as ledger:
            ledger.set_limit("agent:thrifty", CAP_MICRO)
        yield proc, home


def test_router_caps_the_output_and_says_so(router, provider):
    proc, home = router
    headers = {"authorization": f"Bearer {issue_token(home, 'thrifty')}"}
    r = httpx.post(f"{proc.url}/v1/chat/completions", headers=headers, timeout=20,
                   json={"model": "gpt-4o-mini", "messages": MSG})
    assert r.status_code == 200, r.text
    sent = provider.requests[0]["max_tokens"]
    assert r.headers["x-iron-output-capped"] == str(sent) and 16 <= sent < 16_384


def test_router_concurrent_image_calls_stay_under_the_cap(router, provider):
    proc, home = router
    headers = {"authorization": f"Bearer {issue_token(home, 'thrifty')}"}

    def one(_: int) -> int:
        return httpx.post(f"{proc.url}/v1/chat/completions", headers=headers, timeout=30,
                          json={"model": "gpt-4o-mini", "max_tokens": 50,
                                "messages": _image_message()}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(8)))
    assert set(statuses) <= {200, 402}
    assert statuses.count(200) == len(provider.requests)

    def settled() -> Any:
        with SQLiteLedger(home / "ledger.db") as ledger:
            state = ledger.state("agent:thrifty")
        return state if state.reserved_micro == 0 else None

    state = wait_until(settled, "reservations to settle")
    assert state.spent_micro <= CAP_MICRO
