"""The router's admin API (issue 9) on a real router process with the real SQLite ledger
and the local stand-in provider: only an admin token is accepted, every change is audited
and applies to the router's next request; CLI changes reach the running router within 1 s."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iron_sdk.identity import issue_token
from iron_sdk.ledger import SQLiteLedger
from iron_sdk.policies.audit import read_events
from iron_sdk.standin import StandInProvider
from tests.router_util import RouterProcess, run_cli, seconds_until

PROVIDER_KEY = "sk-provider-admin-test-0a1b2c3d"
MSG = [{"role": "user", "content": "Say hello to the admin."}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, RouterProcess,
                                                                      StandInProvider]]:
    home = tmp_path_factory.mktemp("admin") / "iron"
    issue_token(home, "bootstrap")  # creates the secret the router verifies with
    with StandInProvider() as provider, RouterProcess(home=home, env={
            "OPENAI_BASE_URL": provider.url, "OPENAI_API_KEY": PROVIDER_KEY}) as router:
        yield home, router, provider


def _admin_token(home: Path) -> str:
    return issue_token(home, "ops", admin=True)


def _chat(router: RouterProcess, token: str, model: str = "gpt-4o-mini",
          **extra: Any) -> httpx.Response:
    return httpx.post(router.url + "/v1/chat/completions", json={
        "model": model, "messages": MSG, **extra},
        headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _admin(router: RouterProcess, token: str | None, method: str, path: str,
           body: Any = None, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    content = None if body is None else json.dumps(body).encode()  # \u-escapes surrogates
    return httpx.request(method, router.url + "/v1/admin" + path, content=content,
                         headers={**headers, "content-type": "application/json"},
                         timeout=30, **kwargs)


def _code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def test_only_an_admin_token_is_accepted(setup):
    home, router, _ = setup
    agent = issue_token(home, "sneaky")
    assert _admin(router, None, "GET", "/policies").status_code == 401
    response = _admin(router, "not-a-token", "GET", "/policies")
    assert response.status_code == 401 and _code(response) == "invalid_ic_token"
    response = _admin(router, agent, "PATCH", "/policies/sneaky", {"rpm": 1000})
    assert response.status_code == 403 and _code(response) == "admin_required"
    response = _admin(router, agent, "POST", "/agents/victim/disable")
    assert response.status_code == 403
    forged = issue_token(home.parent / "elsewhere", "ops", admin=True)  # another secret
    assert _admin(router, forged, "GET", "/tokens").status_code == 401
    assert _admin(router, _admin_token(home), "GET", "/policies").status_code == 200


def test_policy_changes_apply_to_the_next_request_and_are_audited(setup):
    home, router, provider = setup
    admin = _admin_token(home)
    bob = issue_token(home, "bob")
    assert _chat(router, bob).status_code == 200
    response = _admin(router, admin, "PATCH", "/policies/bob",
                      {"models": ["claude-*"], "max_tokens": 50})
    assert response.status_code == 200, response.text
    assert response.json() == {"scope": "agent:bob",
                               "stored": {"models": ["claude-*"], "max_tokens": 50}}
    sent = len(provider.requests)
    response = _chat(router, bob)
    assert response.status_code == 403 and _code(response) == "model_not_allowed"
    assert len(provider.requests) == sent  # nothing sent
    view = _admin(router, admin, "GET", "/policies/bob").json()
    assert view["effective"]["models"] == [{"value": ["claude-*"], "source": "agent:bob"}]
    assert _admin(router, admin, "DELETE", "/policies/bob",
                  {"fields": ["models"]}).json()["stored"] == {"max_tokens": 50}
    response = _chat(router, bob, max_tokens=51)
    assert response.status_code == 403 and _code(response) == "policy_violation"
    assert response.json()["error"]["field"] == "max_tokens"
    assert _chat(router, bob, max_tokens=50).status_code == 200
    assert _admin(router, admin, "DELETE", "/policies/bob").json()["stored"] == {}

    seconds_until(lambda: len([e for e in read_events(home / "audit.jsonl")
                         if e["type"] == "admin_change"]) >= 3, 5)
    events = [e for e in read_events(home / "audit.jsonl") if e["type"] == "admin_change"]
    assert [e["action"] for e in events][:3] == ["policy_set", "policy_clear", "policy_clear"]
    assert all(e["actor"] == "ops" and e["actor_token_id"] for e in events)
    assert events[0]["scope"] == "agent:bob" and events[0]["fields"] == ["max_tokens", "models"]


def test_kill_switch_and_revocation_over_the_api(setup):
    home, router, _ = setup
    admin = _admin_token(home)
    carol = issue_token(home, "carol")
    assert _chat(router, carol).status_code == 200
    assert _admin(router, admin, "POST", "/agents/carol/disable").json() == {
        "scope": "agent:carol", "disabled": True}
    response = _chat(router, carol)
    assert response.status_code == 403 and _code(response) == "agent_disabled"
    assert _admin(router, admin, "POST", "/agents/carol/enable").json()["disabled"] is False
    assert _chat(router, carol).status_code == 200

    import jwt

    jti = jwt.decode(carol, options={"verify_signature": False})["jti"]
    response = _admin(router, admin, "POST", "/tokens/revoke", {"token": jti})
    assert response.json()["id"] == jti
    response = _chat(router, carol)
    assert response.status_code == 401 and _code(response) == "invalid_ic_token"
    assert "revoked" in response.json()["error"]["message"]
    # An admin token can be revoked too, and then it is refused.
    other_admin = _admin_token(home)
    _admin(router, admin, "POST", "/tokens/revoke", {"token": other_admin})
    assert _admin(router, other_admin, "GET", "/tokens").status_code == 401


def test_cli_changes_reach_the_running_router_within_a_second(setup):
    home, router, _ = setup
    dave = run_cli(home, "token", "issue", "--agent", "dave").stdout.strip()
    assert _chat(router, dave).status_code == 200
    assert run_cli(home, "agent", "disable", "dave").returncode == 0
    assert seconds_until(lambda: _chat(router, dave).status_code == 403, 1.0) < 1.0
    assert run_cli(home, "agent", "enable", "dave").returncode == 0
    seconds_until(lambda: _chat(router, dave).status_code == 200, 1.0)
    assert run_cli(home, "token", "revoke", "--agent", "dave").returncode == 0
    assert seconds_until(lambda: _chat(router, dave).status_code == 401, 1.0) < 1.0
    admin = _admin_token(home)
    tokens = _admin(router, admin, "GET", "/tokens", params={"agent": "dave"}).json()["tokens"]
    assert len(tokens) == 1 and tokens[0]["revoked"] is not None


def test_rate_limit_is_a_429_with_retry_after(setup):
    home, router, _ = setup
    admin = _admin_token(home)
    erin = issue_token(home, "erin")
    assert _admin(router, admin, "PATCH", "/policies/erin", {"rpm": 2}).status_code == 200
    assert [_chat(router, erin).status_code for _ in range(2)] == [200, 200]
    response = _chat(router, erin)
    assert response.status_code == 429 and _code(response) == "rate_limited"
    assert 1 <= int(response.headers["retry-after"]) <= 61  # one-second windows


def test_budgets_over_the_api(setup):
    home, router, _ = setup
    admin = _admin_token(home)
    response = _admin(router, admin, "PUT", "/budgets/team:search", {"usd": 2.5})
    assert response.status_code == 200, response.text
    assert response.json()["limit_micro"] == 2_500_000
    assert response.json()["limit_usd"] == 2.5
    ledger = SQLiteLedger(home / "ledger.db")
    try:
        assert ledger.state("team:search").limit_micro == 2_500_000
    finally:
        ledger.close()
    scopes = [b["scope"] for b in _admin(router, admin, "GET", "/budgets").json()["budgets"]]
    assert "team:search" in scopes
    assert _admin(router, admin, "GET", "/budgets/team:search").json()["spent_micro"] == 0
    assert _admin(router, admin, "PUT", "/budgets/team:search",
                  {"usd": 0}).json()["limit_micro"] is None


@pytest.mark.parametrize(("method", "path", "body"), [
    ("PATCH", "/policies/bob", {"rpm": 0}),
    ("PATCH", "/policies/bob", {"rpm": "ten"}),
    ("PATCH", "/policies/bob", {"pii": "none"}),
    ("PATCH", "/policies/bob", {"nope": 1}),
    ("PATCH", "/policies/bob", {"models": "gpt-4o"}),
    ("PATCH", "/policies/bob", {"rpm": None}),
    ("PATCH", "/policies/bob", {}),
    ("PATCH", "/policies/bob", {"disabled": False}),
    ("PATCH", "/policies/x:y", {"rpm": 1}),
    ("PATCH", "/policies/bob", [1, 2]),
    ("DELETE", "/policies/bob", {"fields": "rpm"}),
    ("DELETE", "/policies/bob", {"fields": ["nope"]}),
    ("POST", "/tokens/revoke", {}),
    ("POST", "/tokens/revoke", {"token": "a", "agent": "b"}),
    ("POST", "/tokens/revoke", {"token": 5}),
    ("POST", "/tokens/revoke", {"token": "\ud800"}),
    ("POST", "/tokens/revoke", {"agent": "\ud800"}),
    ("PATCH", "/policies/bob", {"models": ["\ud800"]}),
    ("PUT", "/budgets/bob", {"usd": "5"}),
    ("PUT", "/budgets/bob", {"usd": 1e308}),
    ("PUT", "/budgets/bob", {"usd": 1, "extra": 1}),
])
def test_bad_input_is_a_400_never_a_500(setup, method, path, body):
    home, router, _ = setup
    response = _admin(router, _admin_token(home), method, path, body)
    assert response.status_code == 400, response.text
    assert _code(response) == "invalid_request"


def test_malformed_bodies(setup):
    home, router, _ = setup
    headers = {"Authorization": f"Bearer {_admin_token(home)}"}
    url = router.url + "/v1/admin/policies/bob"
    for raw in (b"{", b'{"rpm": NaN}', b'{"tpm": Infinity}', b'"x"', b"[" * 60_000):
        response = httpx.patch(url, content=raw, headers=headers, timeout=30)
        assert response.status_code in (400, 413), (raw[:20], response.text)
    response = httpx.patch(url, content=b" " * 70_000, headers=headers, timeout=30)
    assert response.status_code == 413


def test_door_two_sdk_gets_the_same_typed_errors(setup):
    """The SDK over HTTP (RemoteRuntime) raises the library-mode exceptions."""
    from iron_sdk.errors import AgentDisabledError, ModelNotAllowedError, ToolNotAllowedError
    from iron_sdk.remote import RemoteRuntime
    from iron_sdk.request import LlmRequest

    home, router, _ = setup
    admin = _admin_token(home)
    frank = issue_token(home, "frank")
    _admin(router, admin, "PATCH", "/policies/frank", {"models": ["claude-*"],
                                                       "deny_tools": ["shell"]})
    remote = RemoteRuntime(router.url)
    try:
        session = remote.open_session(ic_token=frank)
        with pytest.raises(ModelNotAllowedError):
            remote.begin_call(session, LlmRequest.chat("gpt-4o-mini", MSG))
        with pytest.raises(ToolNotAllowedError):
            remote.begin_tool(session, "shell")
        _admin(router, admin, "POST", "/agents/frank/disable")
        with pytest.raises(AgentDisabledError):
            remote.begin_call(session, LlmRequest.chat("claude-3-haiku", MSG))
    finally:
        remote.close()
