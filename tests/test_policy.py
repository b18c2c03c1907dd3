"""Operator policy (issue 9): per-scope records beside the ledger, the strictest-wins
effective policy, the OperatorPolicy plugin in library mode (the real Runtime, the real
SQLite ledger, the openai client against the local stand-in), the CLI, rate limits across
4 real processes (SQLite and Redis), revocation and the kill switch seen within 1 s."""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from iron_sdk import (
    InvalidTokenError,
    RateLimitedError,
    Runtime,
    RuntimeConfig,
    SafetyConfig,
    current_session,
    protect_agent,
    set_runtime,
)
from iron_sdk.cli import main as cli
from iron_sdk.errors import (
    AgentDisabledError,
    InvalidRequestError,
    ModelNotAllowedError,
    PolicyViolationError,
    ToolNotAllowedError,
    error_from_body,
)
from iron_sdk.identity import issue_token
from iron_sdk.policies.audit import read_events
from iron_sdk.policy import (
    MemoryPolicyStore,
    Policy,
    PolicyStore,
    effective,
    open_policy_store,
    scope_of,
)
from iron_sdk.policy.store import WINDOW_S, window_decision
from iron_sdk.request import LlmRequest
from tests.router_util import run_cli, seconds_until

MSG = [{"role": "user", "content": "Say hello to the operator."}]
MINI = "gpt-4o-mini"
ROOT = Path(__file__).resolve().parents[1]


def _store(runtime: Runtime) -> PolicyStore:
    store = runtime.pm.get_plugin("iron.operator").store
    assert store is not None
    return store


def _refused(fn: Callable[[], Any], error: type[BaseException]) -> Callable[[], bool]:
    def check() -> bool:
        try:
            fn()
        except error:
            return True
        return False
    return check


# -- the effective policy ------------------------------------------------------------------
def test_effective_is_the_strictest_of_every_layer_and_names_sources():
    eff = effective(
        {"global": Policy(deny_models=("gpt-4o",), rpm=100, pii="log"),
         "team:search": Policy(models=("gpt-4o*", "claude-*"), max_tokens=800, tpm=9000),
         "agent:bob": Policy(models=("gpt-4o*",), rpm=30, pii="redact")},
        defaults=Policy(max_tokens=2000, tools=("search", "calc")),
        requested=Policy(rpm=50, pii="block", max_tokens=500, deny_tools=("calc",)))
    assert eff.rpm.value == 30 and eff.rpm.source == "agent:bob"  # request cannot loosen
    assert eff.max_tokens.value == 500 and eff.max_tokens.source == "agent code"
    assert eff.pii.value == "block" and eff.pii.source == "agent code"
    assert eff.tpm.value == 9000 and eff.tpm.source == "team:search"
    assert eff.model_refusal("gpt-4o-mini") is None
    assert eff.model_refusal("gpt-4o") == "global"  # denylists win over allowlists
    assert eff.model_refusal("claude-3") == "agent:bob"  # allowlists intersect
    assert eff.tool_refusal("search") is None
    assert eff.tool_refusal("calc") == "agent code" and eff.tool_refusal("shell") == "config"
    doc = eff.to_json()
    assert doc["models"] == [{"value": ["gpt-4o*", "claude-*"], "source": "team:search"},
                             {"value": ["gpt-4o*"], "source": "agent:bob"}]
    assert json.loads(json.dumps(doc)) == doc
    assert not effective({}).restricts_calls
    assert effective({"global": Policy(disabled=True)},
                     requested=Policy(disabled=False)).disabled.source == "global"


def test_bad_policy_input_is_a_typed_error():
    store = MemoryPolicyStore()
    for bad in ({"rpm": 0}, {"rpm": -1}, {"rpm": 1.5}, {"pii": "none"}, {"models": ["a b"]},
                {"tpm": float("nan")}, {"max_tokens": 10**12}, {"nope": 1}):
        with pytest.raises(InvalidRequestError):
            store.set("agent:x", **bad)
    with pytest.raises(InvalidRequestError):
        store.clear("agent:x", ["nope"])
    for bad_name in ("team:", "x:y", "a b", "", "agent:" + "x" * 200):
        with pytest.raises(InvalidRequestError):
            scope_of(bad_name)
    assert scope_of("bob") == "agent:bob" and scope_of("team:t") == "team:t"
    assert store.version() == 0 and store.all() == {}


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
def test_store_records_versions_and_revocations(backend, tmp_path, request):
    url = {"memory": "memory", "sqlite": str(tmp_path / "ledger.db")}.get(backend) or \
        request.getfixturevalue("redis_url")
    store = open_policy_store(url)
    other = store if backend == "memory" else open_policy_store(url)  # another "process"
    try:
        v0 = store.version()
        store.set("agent:a", models=["gpt-4o*"], rpm=5)
        store.set("agent:a", tpm=100)
        assert store.get("agent:a") == Policy(models=("gpt-4o*",), rpm=5, tpm=100)
        store.clear("agent:a", ["rpm"])
        assert store.get("agent:a") == Policy(models=("gpt-4o*",), tpm=100)
        assert store.version() > v0
        seconds_until(
            lambda: other.snapshot().policies.get("agent:a") == store.get("agent:a"), 1.0)
        store.clear("agent:a")
        assert store.all() == {}
        claims = {"sub": "a", "jti": "j1", "iat": 1000}
        assert other.is_revoked(claims) is None
        store.revoke_token("j1", 2000.0)
        seconds_until(lambda: other.is_revoked(claims) is not None, 1.0)
        store.revoke_agent("b", 1500.0)
        seconds_until(lambda: other.is_revoked({"sub": "b", "jti": "x", "iat": 1500}), 1.0)
        assert other.is_revoked({"sub": "b", "jti": "y", "iat": 1501}) is None
        assert other.is_revoked({"sub": "b", "jti": "z"}) is not None  # no iat: revoked
    finally:
        store.close()
        if other is not store:
            other.close()


def test_window_decision_counts_requests_and_tokens():
    buckets = [(0, 1, 100), (10, 1, 100), (20, 1, 100)]  # (second, requests, tokens)
    assert window_decision(buckets, 30.0, 1, rpm=4, tpm=None) is None
    # A bucket counts until a whole window after its end: second + 1 + 60.
    assert window_decision(buckets, 30.0, 1, rpm=3, tpm=None) == pytest.approx(31.0)
    assert window_decision(buckets, 30.0, 150, rpm=None, tpm=400) == pytest.approx(31.0)
    assert window_decision(buckets, 30.0, 250, rpm=None, tpm=400) == pytest.approx(41.0)
    assert window_decision(buckets, 30.0, 100, rpm=None, tpm=400) is None
    assert window_decision([(5, 3, 30)], 6.5, 1, rpm=3, tpm=None) == pytest.approx(59.5)
    assert window_decision([], 0.0, 10, rpm=1, tpm=10) is None


# -- library mode: the real runtime, ledger and client -------------------------------------
def _agent(client, name: str, model: str = MINI, **kwargs: Any) -> Callable[[], Any]:
    @protect_agent(agent_id=name)
    def run() -> Any:
        return client.chat.completions.create(model=model, messages=MSG, **kwargs)
    return run


def test_model_outside_allowlist_is_refused_before_anything(runtime, provider, client):
    store = _store(runtime)
    store.set("agent:picky", models=["gpt-4o*"])
    store.set("global", deny_models=["gpt-4o"])
    runtime.ledger.set_limit("agent:picky", 1_000_000)
    with pytest.raises(ModelNotAllowedError) as err:
        _agent(client, "picky", "gpt-3.5-turbo")()
    assert err.value.status == 403 and err.value.code == "model_not_allowed"
    assert "agent:picky" in str(err.value)
    with pytest.raises(ModelNotAllowedError, match="global"):
        _agent(client, "picky", "gpt-4o")()
    assert provider.requests == []  # nothing sent
    state = runtime.ledger.state("agent:picky")
    assert state.spent_micro == 0 and state.reserved_micro == 0  # nothing reserved
    _agent(client, "picky")()  # gpt-4o-mini matches and is not denied
    assert len(provider.requests) == 1
    runtime.flush()
    blocked = [e for e in read_events(runtime.config.home / "audit.jsonl")
               if e["type"] == "call_blocked"]
    assert [e["reason"] for e in blocked] == ["model_not_allowed"] * 2
    # The error survives the HTTP error shape (router/SDK mapping).
    again = error_from_body(err.value.to_body())
    assert isinstance(again, ModelNotAllowedError) and again.model == "gpt-3.5-turbo"


def test_kill_switch_refuses_the_next_call_and_enable_restores(runtime, provider, client,
                                                                monkeypatch):
    # The store re-reads its version at most every CHECK_EVERY_S (changes apply within 1 s,
    # tested with real processes below); here every call checks.
    monkeypatch.setattr("iron_sdk.policy.sqlite.CHECK_EVERY_S", 0.0)
    store = _store(runtime)
    run = _agent(client, "switch")
    run()
    cli(["agent", "disable", "switch"])
    with pytest.raises(AgentDisabledError) as err:
        run()
    assert err.value.code == "agent_disabled" and err.value.status == 403
    store.set("team:ops", disabled=True)  # a disabled team disables its members
    cli(["agent", "enable", "switch"])
    run()
    assert len(provider.requests) == 2

    @protect_agent(agent_id="member", budget=None)
    def member() -> Any:
        session = current_session()
        session.scopes = (*session.scopes, "team:ops")
        return client.chat.completions.create(model=MINI, messages=MSG)

    with pytest.raises(AgentDisabledError):
        member()


def test_max_tokens_over_the_ceiling_is_refused_and_absent_gets_the_ceiling(
        runtime, provider, client):
    seen: list[int | None] = []

    class Spy:
        from iron_sdk.hookspecs import hookimpl

        @hookimpl(trylast=True)
        def iron_llm_request(self, call: Any) -> None:
            seen.append(call.max_tokens)

    runtime.pm.register(Spy())
    _store(runtime).set("global", max_tokens=64)
    with pytest.raises(PolicyViolationError) as err:
        _agent(client, "long", max_tokens=65)()
    assert err.value.field == "max_tokens" and err.value.code == "policy_violation"
    _agent(client, "long", max_tokens=64)()
    _agent(client, "long")()
    assert seen == [64, 64]  # the reservation was made for the ceiling
    assert len(provider.requests) == 2


def test_pii_floor_overrides_a_weaker_agent_setting(iron_home, provider, client):
    runtime = Runtime(RuntimeConfig(home=iron_home, safety=SafetyConfig(pii="log")))
    previous = set_runtime(runtime)
    _store(runtime).set("agent:leaky", pii="redact")

    @protect_agent(agent_id="leaky")
    def agent() -> Any:
        return client.chat.completions.create(model=MINI, messages=[
            {"role": "user", "content": "mail ops@example.org please"}])

    agent()
    assert "ops@example.org" not in provider.requests[0]["messages"][0]["content"]
    _store(runtime).set("global", pii="block")
    from iron_sdk import SafetyViolationError

    try:
        with pytest.raises(SafetyViolationError):
            agent()
        assert len(provider.requests) == 1
    finally:
        set_runtime(previous)
        runtime.close()


def test_tools_allow_and_deny(runtime):
    _store(runtime).set("agent:tooler", tools=["search*", "calc"])
    _store(runtime).set("global", deny_tools=["search_web"])

    @protect_agent(agent_id="tooler")
    def agent(name: str) -> None:
        session = current_session()
        call = runtime.begin_tool(session, name)
        runtime.end_tool(call, "ok")

    agent("calc")
    agent("search_docs")
    with pytest.raises(ToolNotAllowedError, match="global"):
        agent("search_web")
    with pytest.raises(ToolNotAllowedError) as err:
        agent("shell")
    assert err.value.code == "tool_not_allowed" and err.value.tool == "shell"


def test_rate_limit_refuses_then_allows_after_the_window(runtime, provider, client,
                                                         monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    _store(runtime).set("agent:fast", rpm=2)
    run = _agent(client, "fast")
    run()
    run()
    with pytest.raises(RateLimitedError) as err:
        run()
    assert 60 < err.value.retry_after <= 61 and err.value.status == 429
    assert len(provider.requests) == 2
    clock[0] += 30
    with pytest.raises(RateLimitedError) as err:
        run()
    assert err.value.retry_after == pytest.approx(31, abs=0.01)
    clock[0] += 31.01
    run()
    assert len(provider.requests) == 3


def test_tpm_counts_input_and_reserved_output(runtime, provider, client, monkeypatch):
    clock = [2_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    _store(runtime).set("agent:wordy", tpm=300)
    run = _agent(client, "wordy", max_tokens=100)
    run()
    run()  # ~2 x (input ~15 + 100 output)
    with pytest.raises(RateLimitedError):
        run()
    with pytest.raises(PolicyViolationError) as err:  # can never fit: not a retry
        _agent(client, "wordy", max_tokens=400)()
    assert err.value.field == "tpm"
    clock[0] += WINDOW_S + 1
    run()
    assert len(provider.requests) == 3


def test_a_cli_change_reaches_a_running_runtime_within_a_second(runtime, provider, client,
                                                                iron_home):
    run = _agent(client, "live")
    run()
    done = run_cli(iron_home, "policy", "set", "live", "--models", "claude-*")
    assert done.returncode == 0, done.stderr
    assert seconds_until(_refused(run, ModelNotAllowedError), 1.0) < 1.0
    done = run_cli(iron_home, "policy", "clear", "live", "--models")
    assert done.returncode == 0, done.stderr
    seconds_until(lambda: not _refused(run, ModelNotAllowedError)(), 1.0)


def test_revoked_token_is_refused_within_a_second(runtime, provider, client, iron_home):
    done = run_cli(iron_home, "token", "issue", "--agent", "holder")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    other = issue_token(iron_home, "holder2")

    def call(tok: str) -> Any:
        @protect_agent(tok)
        def agent() -> Any:
            return client.chat.completions.create(model=MINI, messages=MSG)
        return agent()

    call(token)
    session = runtime.open_session(ic_token=token)  # a long-lived session

    assert run_cli(iron_home, "token", "revoke", token).returncode == 0
    seconds_until(_refused(lambda: call(token), InvalidTokenError), 1.0)
    with pytest.raises(InvalidTokenError, match="revoked"):
        runtime.begin_call(session, LlmRequest.chat(MINI, MSG))
    call(other)  # another agent's token still works

    assert run_cli(iron_home, "token", "revoke", "--agent", "holder2").returncode == 0
    seconds_until(_refused(lambda: call(other), InvalidTokenError), 1.0)
    listed = json.loads(run_cli(iron_home, "token", "list", "--json").stdout)["tokens"]
    assert [(t["agent"], t["revoked"] is not None) for t in listed] == [("holder", True)]
    # A token issued after the revocation is good (iat has whole seconds: the next one).
    revoked_at = time.time()
    seconds_until(lambda: int(time.time()) > revoked_at, 1.1)
    call(issue_token(iron_home, "holder2"))


def test_cli_surface_and_errors(iron_home, capsys):
    assert cli(["policy", "set", "bob", "--models", "gpt-4o*,claude-*", "--deny-models",
                "gpt-4o", "--pii", "redact", "--rpm", "10", "--tpm", "5000",
                "--max-tokens", "700", "--tools", "search,calc", "--deny-tools", "shell"]) == 0
    assert cli(["policy", "set", "global", "--rpm", "5"]) == 0
    capsys.readouterr()
    assert cli(["policy", "show", "bob", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    view = doc["policies"][0]
    assert view["scope"] == "agent:bob"
    assert view["stored"]["models"] == ["gpt-4o*", "claude-*"]
    assert view["effective"]["rpm"] == {"value": 5, "source": "global"}
    assert view["effective"]["max_tokens"] == {"value": 700, "source": "agent:bob"}
    assert cli(["policy", "clear", "bob", "--rpm", "--tools"]) == 0
    capsys.readouterr()
    assert cli(["policy", "show", "--json"]) == 0
    scopes = [v["scope"] for v in json.loads(capsys.readouterr().out)["policies"]]
    assert scopes == ["agent:bob", "global"]
    assert cli(["policy", "show", "bob"]) == 0  # the table renders
    assert "global" in capsys.readouterr().out
    assert cli(["token", "issue", "--agent", "ops", "--admin"]) == 0
    capsys.readouterr()
    assert cli(["token", "list", "--agent", "ops", "--json"]) == 0
    (tok,) = json.loads(capsys.readouterr().out)["tokens"]
    assert tok["admin"] is True and tok["revoked"] is None
    for bad in (["policy", "set", "x:y", "--rpm", "3"], ["policy", "set", "bob"],
                ["policy", "set", "bob", "--models", "a b"], ["token", "revoke"],
                ["token", "revoke", "abc", "--agent", "bob"], ["token", "revoke", "a.b.c"]):
        assert cli(bad) == 2, bad
        assert "error" in capsys.readouterr().err
    for bad in (["policy", "set", "bob", "--rpm", "0"], ["policy", "set", "bob", "--pii", "x"]):
        with pytest.raises(SystemExit) as exited:
            cli(bad)
        assert exited.value.code == 2


def test_redis_ledger_runtime_sees_policy_from_another_process(redis_url, iron_home, client,
                                                               provider):
    rt = Runtime(RuntimeConfig(home=iron_home, ledger=redis_url))
    previous = set_runtime(rt)
    try:
        run = _agent(client, "far")
        run()
        done = run_cli(iron_home, "agent", "disable", "far", ledger=redis_url)
        assert done.returncode == 0, done.stderr
        assert seconds_until(_refused(run, AgentDisabledError), 1.0) < 1.0
    finally:
        set_runtime(previous)
        rt.close()


# -- rate limits across 4 real processes ---------------------------------------------------
T0 = 5_000_000.0
STEPS = 150  # simulated seconds: two and a half windows
TRIES = 3  # takes per process per step


def _taker(url: str, barrier: Any, out: Any, rpm: int | None, tpm: int | None,
           tokens: int) -> None:
    store = open_policy_store(url)
    granted = []
    for step in range(STEPS):
        barrier.wait()  # every process is at the same simulated second
        for _ in range(TRIES):
            if store.take("agent:shared", tokens, rpm, tpm, T0 + step) is None:
                granted.append(step)
    store.close()
    out.put(granted)


def _expected(rpm: int | None, tpm: int | None, tokens: int, procs: int) -> list[int]:
    store, granted = MemoryPolicyStore(), []
    for step in range(STEPS):
        for _ in range(TRIES * procs):
            if store.take("agent:shared", tokens, rpm, tpm, T0 + step) is None:
                granted.append(step)
    return granted


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
@pytest.mark.parametrize(("rpm", "tpm", "tokens"), [(20, None, 1), (None, 500, 40)])
def test_rate_limits_hold_across_four_processes(backend, rpm, tpm, tokens, tmp_path, request):
    url = str(tmp_path / "ledger.db") if backend == "sqlite" else \
        request.getfixturevalue("redis_url")
    open_policy_store(url).close()  # create the tables once
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_taker, args=(url, barrier, out, rpm, tpm, tokens))
             for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    granted = sorted(s for r in results for s in r)
    assert all(results)  # every process got some
    per_window = rpm if rpm else tpm // tokens
    for t in granted:  # no sliding minute holds more than the limit allows
        assert sum(1 for u in granted if t - WINDOW_S < u <= t) <= per_window
    assert len(granted) >= 2 * per_window
    assert granted == _expected(rpm, tpm, tokens, 4)  # and nothing more was refused
