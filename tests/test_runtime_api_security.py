"""The runtime API against a hostile local client (issue 8): a real router process with
its operator's default settings (no anonymous sessions), the real SQLite ledger.

Each test is one of the attacks the issue reproduced; each asserts the answer the
attack now gets and that every other agent's spend stays exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iron_sdk.identity import issue_token
from iron_sdk.ledger import SQLiteLedger
from iron_sdk.policies.audit import read_events
from tests.router_util import RouterProcess

MSG = [{"role": "user", "content": "hello"}]
CHAT = {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 10}


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    proc = RouterProcess(home=tmp_path_factory.mktemp("secure") / "iron", config={"iron": {
        "safety": {"pii": "block"}, "budget": {"session_usd": 0.0005}}})
    proc.start()
    yield proc
    proc.close()


class Agent:
    """A client of the runtime API holding one agent's IC token."""

    def __init__(self, router: RouterProcess, name: str | None) -> None:
        self.api = router.url + "/v1/runtime"
        self.token = issue_token(router.home, name) if name else None
        self.http = httpx.Client(trust_env=False, timeout=20)

    def post(self, path: str, body: Any = None, token: str | None = "mine") -> httpx.Response:
        token = self.token if token == "mine" else token
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return self.http.post(self.api + path, json=body, headers=headers)

    def session(self, **body: Any) -> str:
        r = self.post("/sessions", body)
        assert r.status_code == 200, r.text
        return r.json()["session_id"]

    def begin(self, sid: str, request: dict[str, Any] = CHAT) -> dict[str, Any]:
        r = self.post("/calls", {"session_id": sid, "request": request})
        assert r.status_code == 200, r.text
        return r.json()


def _spent(router: RouterProcess, agent: str) -> int:
    httpx.post(router.url + "/v1/runtime/flush", trust_env=False, timeout=20,
               headers={"authorization": f"Bearer {issue_token(router.home, 'flusher')}"})
    with SQLiteLedger(router.home / "ledger.db") as ledger:
        return ledger.state(f"agent:{agent}").spent_micro


def _code(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


def test_no_token_no_session(router):
    anonymous = Agent(router, None)
    r = anonymous.post("/sessions", {"agent_id": "victim"})
    assert _code(r) == (401, "invalid_ic_token")
    assert "ic_token" in r.json()["error"]["message"]
    assert _spent(router, "victim") == 0


def test_ids_are_unguessable_and_owned(router):
    alice, bob = Agent(router, "alice"), Agent(router, "bob")
    sid = alice.session()
    call = alice.begin(sid)
    # a millisecond timestamp, then 128 random bits; hex
    assert len(sid) == 44 and len(call["call_id"]) == 44
    usage = {"usage": {"input_tokens": 10, "output_tokens": 100_000}}
    for path, body in ((f"/calls/{call['call_id']}/settle", usage),
                       (f"/calls/{call['call_id']}/fail", {}),
                       ("/calls", {"session_id": sid, "request": CHAT}),
                       ("/tools", {"session_id": sid, "name": "t"})):
        assert bob.post(path, body).status_code == 404  # as if the id did not exist
        assert alice.post(path, body, token=None).status_code in (401, 404)
    closed = bob.http.delete(f"{bob.api}/sessions/{sid}",
                             headers={"authorization": f"Bearer {bob.token}"})
    assert closed.status_code == 404
    ok = alice.post(f"/calls/{call['call_id']}/settle",
                    {"usage": {"input_tokens": 10, "output_tokens": 5}})
    assert ok.status_code == 200 and ok.json()["outcome"] == "completed"
    assert _spent(router, "bob") == 0
    assert _spent(router, "alice") == ok.json()["cost_micro"]


@pytest.mark.parametrize("body, field", [
    ({"safety": {"pii": "off"}}, "safety.pii"),
    ({"budget": {"scopes": ["agent:bob"]}}, "budget.scopes"),
    # The router fails closed by default: "open" is looser, "closed" its own rule.
    ({"budget": {"on_ledger_error": "open"}}, "budget.on_ledger_error"),
    ({"budget": {"on_ledger_error": "closed"}, "safety": {"pii": "block"}}, None),
])
def test_a_client_cannot_loosen_the_operators_policy(router, body, field):
    mallory = Agent(router, "mallory")
    r = mallory.post("/sessions", body)
    if field is None:
        assert r.status_code == 200  # the operator's own rule: nothing looser
        return
    assert _code(r) == (403, "policy_violation") and r.json()["error"]["field"] == field


def test_a_client_can_only_lower_the_cap_and_never_the_lease(router):
    carol = Agent(router, "carol")
    r = carol.post("/sessions", {"budget_usd": 1000, "budget": {"lease_s": 1e-6}})
    assert r.status_code == 200
    assert r.json()["cap_micro"] == 500  # the operator's session cap stands
    assert r.json()["budget"]["lease_s"] > 1  # leases are the operator's
    sid = r.json()["session_id"]
    big = {**CHAT, "max_tokens": 100}  # about 62 µ$ reserved each: 8 fit in 500 µ$
    granted = 0
    for _ in range(20):
        if carol.post("/calls", {"session_id": sid, "request": big}).status_code == 200:
            granted += 1
    per_call = carol.begin(carol.session(), big)["reserved_micro"]
    assert 2 < granted == 500 // per_call  # exactly what the cap fits, lease or not


@pytest.mark.parametrize("usage", [
    {"input_tokens": 10, "output_tokens": 100_000_000},
    {"input_tokens": -1},
    {"input_tokens": 1.5},
    {"input_tokens": True},
    {"input_tokens": 2**70},
])
def test_usage_reports_are_checked(router, usage):
    dave = Agent(router, f"dave-{abs(hash(str(usage))) % 1000}")
    call = dave.begin(dave.session())
    r = dave.post(f"/calls/{call['call_id']}/settle", {"usage": usage})
    assert _code(r) == (400, "invalid_request")


def test_failure_reports_open_the_circuit_for_the_reporter_only(router):
    mallory, alice = Agent(router, "mallory-cb"), Agent(router, "alice-cb")
    sid = mallory.session()
    for _ in range(5):
        call = mallory.begin(sid)
        assert mallory.post(f"/calls/{call['call_id']}/fail",
                            {"error": "APIError", "status": 500}).status_code == 200
    refused = mallory.post("/calls", {"session_id": sid, "request": CHAT})
    assert _code(refused) == (503, "circuit_open")
    assert alice.post("/calls", {"session_id": alice.session(),
                                 "request": CHAT}).status_code == 200


def test_client_events_are_checked_and_marked(router):
    erin = Agent(router, "erin")
    sid = erin.session()
    bad = erin.post("/events", {"type": "call_completed", "session_id": sid, "cost_micro": 9})
    assert _code(bad) == (400, "invalid_request")
    free_text = erin.post("/events", {"type": "usage_missing", "session_id": sid,
                                      "model": "x" * 5000})
    assert _code(free_text) == (400, "invalid_request")
    ok = erin.post("/events", {"type": "usage_missing", "session_id": sid,
                               "model": "gpt-4o-mini", "prompt": "secret text"})
    assert ok.status_code == 200
    stranger = Agent(router, "stranger").post("/events", {"type": "usage_missing",
                                                          "session_id": sid})
    assert stranger.status_code == 404
    _spent(router, "erin")  # flushes the audit log too
    events = [e for e in read_events(Path(router.home) / "audit.jsonl")
              if e["type"] == "usage_missing" and e.get("agent_id") == "erin"]
    assert len(events) == 1 and events[0]["source"] == "client"
    assert "prompt" not in events[0]


@pytest.mark.parametrize("raw", [
    b'{"budget_usd": NaN}', b'{"budget_usd": 1e309}', b'{"budget_usd": Infinity}',
    b'{"agent_id": "\\ud800"}',
])
def test_hostile_numbers_and_strings_are_client_mistakes(router, raw):
    frank = Agent(router, "frank")
    r = frank.http.post(frank.api + "/sessions", content=raw,
                        headers={"authorization": f"Bearer {frank.token}"})
    assert r.status_code == 400, r.text
