"""HTTP mode (door 2): the same test bodies pass with the in-process runtime and with the
SDK talking to a real router process over its runtime API.

In HTTP mode only governance goes to the router; the agent's request still goes from
the official openai client straight to the stand-in provider. Ledger state is read from
the shared SQLite file after a flush, as another process would read it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from iron_sdk import (
    BudgetConfig,
    BudgetExceededError,
    CircuitOpenError,
    InvalidRequestError,
    InvalidTokenError,
    IronCageError,
    ModelNotAllowedError,
    Policy,
    PolicyViolationError,
    RateLimitedError,
    ReliabilityConfig,
    Runtime,
    RuntimeConfig,
    RuntimeUnavailableError,
    SafetyConfig,
    SafetyViolationError,
    ToolNotAllowedError,
    UnknownModelPriceError,
    current_session,
    get_runtime,
    llm_call,
    protect_agent,
    set_runtime,
)
from iron_sdk.call import Usage
from iron_sdk.config import ModelPriceConfig
from iron_sdk.identity import issue_token
from iron_sdk.ledger import ScopeState, SQLiteLedger
from iron_sdk.policies.audit import read_events
from iron_sdk.remote import RemoteRuntime
from iron_sdk.request import LlmRequest
from tests.helpers import expected_micro
from tests.router_util import ROOT, RouterProcess, free_port, wait_until

MSG = [{"role": "user", "content": "Say hello to the ledger."}]
# The stand-in's failing models, priced the same way in both modes.
PRICES = {m: {"input_per_mtok": 1.0, "output_per_mtok": 1.0} for m in ("fail-500", "fail-503")}


@dataclass
class Mode:
    """The runtime under test and where its state lives."""

    name: str
    runtime: Any
    home: Path

    def state(self, scope: str) -> ScopeState:
        """A scope's ledger state as another process reads it, after a flush."""
        self.runtime.flush()
        with SQLiteLedger(self.home / "ledger.db") as ledger:
            return ledger.state(scope)

    def set_limit(self, scope: str, micro: int) -> None:
        with SQLiteLedger(self.home / "ledger.db") as ledger:
            ledger.set_limit(scope, micro)

    def events(self, type_: str, agent_id: str) -> list[dict[str, Any]]:
        self.runtime.flush()
        return [e for e in read_events(self.home / "audit.jsonl")
                if e["type"] == type_ and e.get("agent_id") == agent_id]


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    """One router for the module's HTTP-mode tests (each test uses its own agents). Its
    operator allows token-less sessions, so the same bodies run in both modes; what a
    router without that setting refuses is tested in ``test_runtime_api_security.py``."""
    proc = RouterProcess(home=tmp_path_factory.mktemp("router") / "iron",
                         config={"iron": {"prices": PRICES, "anonymous_sessions": True}})
    proc.start()
    yield proc
    proc.close()


@pytest.fixture(params=["library", "http"])
def mode(request: pytest.FixtureRequest, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Mode]:
    if request.param == "library":
        home = tmp_path / "iron"
        rt: Any = Runtime(RuntimeConfig(home=home, prices={
            m: ModelPriceConfig(**p) for m, p in PRICES.items()}))
    else:
        router = request.getfixturevalue("router")
        home, rt = router.home, RemoteRuntime(router.url)
    monkeypatch.setenv("IRON_HOME", str(home))
    monkeypatch.delenv("IRON_SECRET", raising=False)
    monkeypatch.delenv("IRON_LEDGER", raising=False)
    previous = set_runtime(rt)
    yield Mode(request.param, rt, home)
    set_runtime(previous)
    rt.close()


def _usage(reply: Any) -> dict[str, Any]:
    return reply.usage.model_dump()


# -- the same bodies, library and HTTP mode ---------------------------------------------------
def test_spend_equals_price_times_reported_usage(mode, provider, client):
    @protect_agent(agent_id="spender")
    def agent() -> tuple[list[Any], float, int]:
        replies = [client.chat.completions.create(model=m, messages=MSG, max_tokens=50)
                   for m in ("gpt-4o-mini", "gpt-4o")]
        s = current_session()
        return replies, s.spent_usd, s.calls

    replies, spent, calls = agent()
    want = sum(expected_micro(r.model, _usage(r)) for r in replies)
    assert calls == 2 and len(provider.requests) == 2
    assert round(spent * 1_000_000) == want > 0
    state = mode.state("agent:spender")
    assert state.spent_micro == want and state.reserved_micro == 0
    completed = mode.events("call_completed", "spender")
    assert sorted(e["model"] for e in completed) == ["gpt-4o", "gpt-4o-mini"]
    assert all(e["source"] == "openai" and e["provider"] == "openai" for e in completed)


def test_over_budget_raises_before_the_provider_sees_a_request(mode, provider, client):
    @protect_agent(agent_id="tight", budget_usd=0.000001)
    def agent():
        return client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=500)

    with pytest.raises(BudgetExceededError) as info:
        agent()
    assert provider.requests == []
    err = info.value
    assert err.scope == "session:tight"
    assert err.limit_usd == pytest.approx(0.000001)
    assert err.spent_usd == 0
    assert err.requested_usd > err.limit_usd
    assert "lower max_tokens" in str(err)
    assert mode.state("agent:tight").reserved_micro == 0
    assert mode.events("call_blocked", "tight")[0]["reason"] == "budget_exceeded"


def test_agent_budget_from_ledger_spans_invocations(mode, provider, client):
    mode.set_limit("agent:bounded", 200)  # 200 µ$, set from "another process"

    @protect_agent(agent_id="bounded")
    def agent():
        return client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=40)

    done = 0
    with pytest.raises(BudgetExceededError) as info:
        for _ in range(100):
            agent()
            done += 1
    state = mode.state("agent:bounded")
    assert info.value.scope == "agent:bounded"
    assert info.value.limit_usd == pytest.approx(0.0002)
    assert 0 < done == len(provider.requests)
    assert state.spent_micro <= 200 and state.reserved_micro == 0


def test_redaction_reaches_the_provider(mode, provider, client):
    @protect_agent(agent_id="redactor")
    def agent():
        return client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Mail bob@corp.example, card 4111 1111 1111 1111."}])

    agent()
    sent = provider.requests[0]["messages"]
    assert "bob@corp.example" not in sent[1]["content"] and "4111" not in sent[1]["content"]
    assert "[EMAIL_REDACTED]" in sent[1]["content"]
    assert "[CREDIT_CARD_REDACTED]" in sent[1]["content"]
    assert sent[0]["content"] == "You are helpful."
    found = mode.events("pii_detected", "redactor")
    assert found[0]["kinds"] == {"credit_card": 1, "email": 1} and found[0]["action"] == "redact"


def test_block_mode_raises_with_kinds_and_sends_nothing(mode, provider, client):
    @protect_agent(agent_id="strict", safety=SafetyConfig(pii="block"))
    def agent():
        return client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": "My SSN is 123-45-6789"}])

    with pytest.raises(SafetyViolationError) as info:
        agent()
    assert provider.requests == []
    assert info.value.kinds == ["ssn"]
    assert "123-45-6789" not in str(info.value)
    assert mode.events("call_blocked", "strict")[0]["reason"] == "safety_violation"


def test_streaming_is_charged_and_the_usage_chunk_hidden(mode, provider, client):
    @protect_agent(agent_id="streamer")
    def agent() -> list[Any]:
        return list(client.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                                   stream=True))

    chunks = agent()
    assert all(c.choices for c in chunks), "the user did not ask for the usage chunk"
    assert provider.requests[0]["stream_options"] == {"include_usage": True}
    event = mode.events("call_completed", "streamer")[0]
    assert event["stream"] is True and event["usage_counted"] is False
    assert event["output_tokens"] == provider.reply_words
    assert mode.state("agent:streamer").spent_micro == expected_micro(
        "gpt-4o-mini", {"prompt_tokens": event["input_tokens"],
                        "completion_tokens": event["output_tokens"]})


def test_abandoned_stream_is_charged_for_what_was_streamed(mode, provider, client):
    @protect_agent(agent_id="quitter")
    def agent() -> None:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()

    agent()
    event = mode.events("call_completed", "quitter")[0]
    assert event["usage_counted"] is True and 0 < event["output_tokens"] < provider.reply_words
    state = mode.state("agent:quitter")
    assert state.spent_micro == event["cost_micro"] > 0 and state.reserved_micro == 0


async def test_async_client_and_async_stream(mode, provider, aclient):
    @protect_agent(agent_id="async-agent", budget_usd=1.0)
    async def agent() -> tuple[Any, float]:
        reply = await aclient.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        stream = await aclient.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                                       stream=True)
        async for _ in stream:
            pass
        return reply, current_session().spent_usd

    reply, spent = await agent()
    assert len(provider.requests) == 2
    assert round(spent * 1e6) > expected_micro("gpt-4o-mini", _usage(reply)) > 0
    assert mode.state("agent:async-agent").spent_micro == round(spent * 1e6)


async def test_async_budget_block_and_redaction(mode, provider, aclient):
    @protect_agent(agent_id="async-strict", budget_usd=0.000001)
    async def broke():
        await aclient.chat.completions.create(model="gpt-4o-mini", messages=MSG)

    with pytest.raises(BudgetExceededError):
        await broke()
    assert provider.requests == []

    @protect_agent(agent_id="async-redact")
    async def redacting():
        await aclient.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": "key sk-proj-abcdefghijklmnopqrstuvwxyz0123456789AB"}])

    await redacting()
    assert "[API_KEY_REDACTED]" in provider.requests[0]["messages"][0]["content"]


def test_embeddings_are_charged_and_redacted(mode, provider, client):
    @protect_agent(agent_id="embedder")
    def agent():
        return client.embeddings.create(model="text-embedding-3-small",
                                        input=["alpha text", "mail a@b.example"])

    reply = agent()
    assert provider.requests[0]["input"] == ["alpha text", "mail [EMAIL_REDACTED]"]
    assert mode.state("agent:embedder").spent_micro == expected_micro(
        "text-embedding-3-small", {"prompt_tokens": reply.usage.prompt_tokens})


def test_llm_call_record_and_release_on_exception(mode):
    @protect_agent(agent_id="manual", budget_usd=0.05)
    def agent() -> tuple[list[Any], float, float]:
        with llm_call(model="gpt-4o-mini", messages=[
                {"role": "user", "content": "reach me at +44 20 7946 0958"}],
                max_tokens=500) as call:
            sent = call.messages
            reserved = current_session().reserved_micro
            call.record(input_tokens=1000, output_tokens=500)
        with pytest.raises(RuntimeError), llm_call(model="gpt-4o-mini", messages=MSG,
                                                   max_tokens=100):
            assert current_session().reserved_micro > 0
            raise RuntimeError("client blew up")
        assert current_session().reserved_micro == 0
        return sent, reserved, current_session().spent_usd

    sent, reserved, spent = agent()
    assert sent[0]["content"] == "reach me at [PHONE_REDACTED]"
    assert reserved > 0
    assert spent == pytest.approx(0.00045)  # the issue's worked example
    state = mode.state("agent:manual")
    assert state.spent_micro == 450 and state.reserved_micro == 0
    assert mode.events("call_failed", "manual")[0]["error"] == "RuntimeError"


def test_llm_call_without_record_charges_the_reservation(mode):
    @protect_agent(agent_id="forgetful")
    def agent() -> int:
        with llm_call(model="gpt-4o-mini", messages=MSG, max_tokens=100) as call:
            pass
        return call.call.reserved_micro

    reserved = agent()
    assert mode.state("agent:forgetful").spent_micro == reserved > 0
    assert len(mode.events("usage_missing", "forgetful")) == 1  # an SDK-side event


def test_ic_token_names_the_agent(mode, provider, client):
    token = issue_token(mode.home, "token-agent", expires_in_s=600)

    @protect_agent(ic_token=token)
    def agent() -> str:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=20)
        return current_session().agent_id

    assert agent() == "token-agent"
    assert mode.state("agent:token-agent").spent_micro > 0


def test_forged_token_is_refused(mode, provider, client, tmp_path):
    issue_token(mode.home, "someone")  # the runtime's secret exists
    forged = issue_token(tmp_path / "elsewhere", "token-agent")  # signed with another one

    @protect_agent(ic_token=forged)
    def agent():
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)

    with pytest.raises(InvalidTokenError, match="not valid here"):
        agent()
    assert provider.requests == []


def test_provider_error_releases_and_opens_the_circuit(mode, provider, client):
    import openai

    @protect_agent(agent_id="unlucky", budget_usd=0.01,
                   reliability=ReliabilityConfig(circuit_failures=2, circuit_reset_s=60))
    def agent(model: str):
        try:
            client.chat.completions.create(model=model, messages=MSG, max_tokens=10)
        finally:
            assert current_session().reserved_micro == 0

    with pytest.raises(openai.InternalServerError):
        agent("fail-500")
    assert mode.events("call_failed", "unlucky")[0]["status"] == 500
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            agent("fail-503")
    with pytest.raises(CircuitOpenError) as info:
        agent("fail-503")
    assert info.value.target == "fail-503" and 0 < info.value.retry_after <= 60
    assert len(provider.requests) == 3
    state = mode.state("agent:unlucky")
    assert state.spent_micro == 0 and state.reserved_micro == 0


def test_rate_limit_and_unknown_price(mode, provider, client):
    @protect_agent(agent_id="limited", reliability=ReliabilityConfig(requests_per_minute=2))
    def agent(model: str = "gpt-4o-mini"):
        client.chat.completions.create(model=model, messages=MSG)

    agent()
    agent()
    with pytest.raises(RateLimitedError) as info:
        agent()
    assert 0 < info.value.retry_after <= 30

    @protect_agent(agent_id="pricey")
    def unknown():
        client.chat.completions.create(model="no-such-model", messages=MSG)

    with pytest.raises(UnknownModelPriceError, match="no-such-model") as err:
        unknown()
    assert err.value.model == "no-such-model"
    assert len(provider.requests) == 2


def test_one_session_shared_by_threads(mode):
    @protect_agent(agent_id="threaded", budget_usd=1.0)
    def agent() -> tuple[int, int, int]:
        session = current_session()

        def work() -> None:
            for _ in range(5):
                session.runtime.settle_call(session.runtime.begin_call(
                    session, LlmRequest.chat("gpt-4o-mini", MSG, max_tokens=10)),
                    Usage(100, 10))

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return session.calls, session.spent_micro, session.reserved_micro

    calls, spent, reserved = agent()
    assert calls == 30 and reserved == 0
    assert spent == 30 * expected_micro("gpt-4o-mini", {"prompt_tokens": 100,
                                                        "completion_tokens": 10})
    assert mode.state("agent:threaded").spent_micro == spent


def test_tool_calls_are_audited(mode):
    @protect_agent(agent_id="tooler")
    def agent() -> None:
        session = current_session()
        tool = session.runtime.begin_tool(session, "search", {"q": "weather"})
        session.runtime.end_tool(tool, result=["sunny"])
        failing = session.runtime.begin_tool(session, "fetch")
        session.runtime.end_tool(failing, error=TimeoutError("slow"))

    agent()
    used = mode.events("tool_called", "tooler")
    assert [(e["tool"], e["outcome"]) for e in used] == [("search", "completed"),
                                                         ("fetch", "failed")]


def test_the_agents_own_policy_tightens_the_operators_and_never_widens_it(
        mode, provider, client):
    """``@protect_agent(policy=...)``: the code narrows what the operator allows (models,
    tools, the output ceiling, rpm); a wider list or a higher ceiling than the operator's
    changes nothing. The same in both modes (over HTTP the router applies it)."""
    from iron_sdk.cli import main as cli

    cli(["policy", "set", "careful", "--models", "gpt-4o*", "--tools", "search*,calc",
         "--max-tokens", "200"])

    @protect_agent(agent_id="careful", policy={
        "models": ["gpt-4o-mini", "claude-*"], "tools": ["calc", "shell"],
        "max_tokens": 500, "rpm": 3})
    def agent(model: str = "gpt-4o-mini", tool: str | None = None, **kwargs: Any) -> Any:
        session = current_session()
        assert session.policy == Policy(models=("gpt-4o-mini", "claude-*"),
                                        tools=("calc", "shell"), max_tokens=500, rpm=3)
        if tool is not None:
            session.runtime.end_tool(session.runtime.begin_tool(session, tool))
            return None
        return client.chat.completions.create(model=model, messages=MSG, **kwargs)

    def refused(error: type[IronCageError], **kwargs: Any) -> IronCageError | None:
        try:
            agent(**kwargs)
        except error as exc:
            return exc
        return None

    # The operator's record reaches a running router at its next version check (<1 s).
    shell = wait_until(lambda: refused(ToolNotAllowedError, tool="shell"),
                       "the operator's tool list")
    assert "policy of agent:careful" in str(shell)  # the code allowed it: not widened
    assert "policy of agent code" in str(refused(ToolNotAllowedError, tool="search_docs"))
    assert agent(tool="calc") is None
    claude = refused(ModelNotAllowedError, model="claude-3-haiku-20240307")
    assert claude is not None and "policy of agent:careful" in str(claude)
    gpt4o = refused(ModelNotAllowedError, model="gpt-4o")
    assert gpt4o is not None and "policy of agent code" in str(gpt4o)
    ceiling = refused(PolicyViolationError, max_tokens=300)
    assert ceiling is not None and "ceiling of 200" in str(ceiling)  # not the code's 500
    assert provider.requests == []
    agent(max_tokens=200)
    agent()
    assert provider.requests[-1]["max_tokens"] == 200  # the ceiling written in
    agent()
    limited = refused(RateLimitedError)  # the code's rpm of 3 (the operator set none)
    assert isinstance(limited, RateLimitedError) and limited.retry_after > 0
    assert len(provider.requests) == 3
    with pytest.raises(InvalidRequestError, match="rpm"):
        protect_agent(agent_id="careful", policy={"rpm": 0})
    with pytest.raises(InvalidRequestError, match="Policy"):
        protect_agent(agent_id="careful", policy="gpt-4o")  # type: ignore[arg-type]


def test_audit_has_no_prompt_text_pii_or_keys(mode, provider, client):
    @protect_agent(agent_id="audited")
    def agent():
        client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": "secret plan for carol@example.com"}])

    agent()
    mode.runtime.flush()
    raw = (mode.home / "audit.jsonl").read_text()
    assert "carol@example.com" not in raw and "secret plan" not in raw
    assert "sk-test-not-a-real-key" not in raw
    assert mode.events("call_completed", "audited")[0]["outcome"] == "completed"


# -- HTTP mode only ---------------------------------------------------------------------------
def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_env_var_selects_the_remote_runtime(monkeypatch):
    url = _dead_url()
    monkeypatch.setenv("IRON_RUNTIME_URL", url)
    previous = set_runtime(None)
    try:
        rt = get_runtime()
        assert isinstance(rt, RemoteRuntime) and rt.url == url
        rt.close()
    finally:
        set_runtime(previous)


def test_unreachable_router_fails_closed_naming_the_url(iron_home, provider, client):
    url = _dead_url()
    previous = set_runtime(RemoteRuntime(url))
    try:
        @protect_agent(agent_id="careful", budget=BudgetConfig(on_ledger_error="closed"))
        def agent():
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)

        with pytest.raises(RuntimeUnavailableError, match=url.replace(".", r"\.")) as info:
            agent()
        assert "IRON_RUNTIME_URL" in str(info.value)
        assert provider.requests == []
    finally:
        set_runtime(previous).close()


def test_unreachable_router_fails_open_with_one_warning_and_local_safety(
        iron_home, provider, client, caplog):
    previous = set_runtime(RemoteRuntime(_dead_url()))
    try:
        @protect_agent(agent_id="relaxed")
        def agent(text: str) -> float:
            client.chat.completions.create(model="gpt-4o-mini", messages=[
                {"role": "user", "content": text}])
            return current_session().spent_usd

        with caplog.at_level(logging.WARNING, logger="iron_sdk"):
            assert agent("ping ops@example.org") == 0.0
            agent("hello")
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1
        assert "on_ledger_error='open'" in warnings[0].getMessage()
        assert len(provider.requests) == 2
        assert provider.requests[0]["messages"][0]["content"] == "ping [EMAIL_REDACTED]"

        @protect_agent(agent_id="relaxed", safety=SafetyConfig(pii="block"))
        def strict():
            client.chat.completions.create(model="gpt-4o-mini", messages=[
                {"role": "user", "content": "SSN 123-45-6789"}])

        with pytest.raises(SafetyViolationError):
            strict()
        assert len(provider.requests) == 2
    finally:
        set_runtime(previous).close()


def test_router_lost_mid_call_never_breaks_the_answered_call(tmp_path, provider, client,
                                                             caplog):
    router = RouterProcess(home=tmp_path / "iron",
                           config={"iron": {"anonymous_sessions": True}}).start()
    previous = set_runtime(RemoteRuntime(router.url))
    try:
        @protect_agent(agent_id="orphan")
        def agent() -> str:
            reply = client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
            with llm_call(model="gpt-4o-mini", messages=MSG, max_tokens=10) as call:
                router.stop()
                call.record(input_tokens=10, output_tokens=5)  # logged, not raised
            return reply.choices[0].message.content

        with caplog.at_level(logging.WARNING, logger="iron_sdk"):
            assert agent()
        assert any("could not settle" in r.getMessage() for r in caplog.records)

        @protect_agent(agent_id="orphan", budget=BudgetConfig(on_ledger_error="closed"))
        def closed():
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)

        with pytest.raises(RuntimeUnavailableError, match=router.url):
            closed()
        assert len(provider.requests) == 1
    finally:
        set_runtime(previous).close()
        router.close()


@pytest.fixture
def remote(router: RouterProcess) -> Iterator[tuple[RemoteRuntime, Path]]:
    rt = RemoteRuntime(router.url)
    yield rt, router.home
    rt.close()


def test_settling_after_the_session_closed(remote):
    """An abandoned stream is settled when dropped, possibly after its session ended."""
    rt, home = remote
    session = rt.open_session("late")
    call = rt.begin_call(session, LlmRequest.chat("gpt-4o-mini", MSG, max_tokens=10))
    rt.close_session(session)
    rt.settle_call(call, Usage(100, 10))
    assert call.outcome == "completed" and call.cost_micro > 0
    assert session.spent_micro == call.cost_micro and session.reserved_micro == 0
    rt.flush()
    with SQLiteLedger(home / "ledger.db") as ledger:
        assert ledger.state("agent:late").spent_micro == call.cost_micro


def test_protected_script_with_only_the_env_var(router, provider, tmp_path):
    """Identical developer code in another process: IRON_RUNTIME_URL is the only change."""
    script = tmp_path / "agent.py"
    script.write_text(f"""
import openai
from iron_sdk import protect_agent, current_session

client = openai.OpenAI(base_url={provider.url!r}, api_key="sk-test", max_retries=0)

@protect_agent(agent_id="scripted", budget_usd=0.5)
def agent():
    client.chat.completions.create(model="gpt-4o-mini",
                                   messages=[{{"role": "user", "content": "hi a@b.example"}}])
    return current_session().spent_micro

print(agent())
""")
    env = {"IRON_RUNTIME_URL": router.url, "IRON_HOME": str(tmp_path / "unused"),
           "PATH": "/usr/bin:/bin", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=60)
    spent = int(out.stdout.strip())
    assert provider.requests[0]["messages"][0]["content"] == "hi [EMAIL_REDACTED]"
    assert not (tmp_path / "unused").exists(), "nothing governed in the agent's process"
    httpx.post(router.url + "/v1/runtime/flush")
    with SQLiteLedger(router.home / "ledger.db") as ledger:
        assert ledger.state("agent:scripted").spent_micro == spent > 0


def test_runtime_api_answers_client_mistakes_in_openai_shape(router):
    api = router.url + "/v1/runtime"
    with httpx.Client(trust_env=False) as http:
        sid = http.post(api + "/sessions", json={"agent_id": "api-user"}).json()["session_id"]
        cases = [
            ("POST", "/sessions", b"{not json", {}, 400, "invalid_request"),
            ("POST", "/sessions", b"[]", {}, 400, "invalid_request"),
            ("POST", "/sessions", b"{}", {}, 400, "invalid_request"),  # no agent, no token
            ("POST", "/sessions", json.dumps({"agent_id": "a", "budget": {"lease_s": -1}}),
             {}, 400, "invalid_request"),
            ("POST", "/sessions", json.dumps({"agent_id": "a", "budget_usd": "ten"}), {}, 400,
             "invalid_request"),
            ("POST", "/sessions", json.dumps({"agent_id": "a", "policy": "gpt-4o"}), {}, 400,
             "invalid_request"),
            ("POST", "/sessions", json.dumps({"agent_id": "a", "policy": {"models": ["a b"]}}),
             {}, 400, "invalid_request"),
            ("POST", "/sessions", json.dumps({"agent_id": "a", "policy": {"rpm": 1.5}}), {},
             400, "invalid_request"),
            ("POST", "/sessions", b"{}", {"authorization": "Basic abc"}, 401,
             "invalid_ic_token"),
            ("POST", "/sessions", b"{}", {"authorization": "Bearer not-a-jwt"}, 401,
             "invalid_ic_token"),
            ("POST", "/calls", json.dumps({"session_id": "nope", "request": {
                "model": "gpt-4o-mini", "messages": MSG}}), {}, 404, "session_not_found"),
            ("POST", "/calls", json.dumps({"session_id": sid, "request": {
                "model": "gpt-4o-mini", "messages": "hi"}}), {}, 400, "invalid_request"),
            ("POST", "/calls", json.dumps({"session_id": sid, "request": {
                "model": "gpt-4o-mini", "messages": MSG, "max_tokens": -5}}), {}, 400,
             "invalid_request"),
            ("POST", "/calls", json.dumps({"session_id": sid, "request": {
                "model": 7, "messages": MSG}}), {}, 400, "invalid_request"),
            ("POST", "/calls", json.dumps({"session_id": sid, "request": []}), {}, 400,
             "invalid_request"),
            ("POST", "/calls", json.dumps({"session_id": sid, "kind": "nope", "request": {
                "model": "gpt-4o-mini", "messages": MSG}}), {}, 400, "invalid_request"),
            ("POST", "/calls", json.dumps({"session_id": sid, "request": {
                "model": "no-such-model", "messages": MSG}}), {}, 400,
             "unknown_model_price"),
            ("POST", "/calls/nope/settle", json.dumps({"usage": {}}), {}, 404,
             "call_not_found"),
            ("POST", "/calls/nope/fail", b"", {}, 404, "call_not_found"),
            ("POST", "/events", json.dumps({"type": "call_completed", "cost_micro": 9}), {},
             400, "invalid_request"),
            ("DELETE", "/sessions/nope", b"", {}, 404, "session_not_found"),
            ("POST", "/tools/nope/end", b"{}", {}, 404, "tool_call_not_found"),
        ]
        for method, path, body, headers, status, code in cases:
            r = http.request(method, api + path, content=body, headers=headers)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), (path, body)
            assert r.json()["error"]["message"]
        call = http.post(api + "/calls", json={"session_id": sid, "request": {
            "model": "gpt-4o-mini", "messages": MSG}}).json()
        bad = http.post(api + f"/calls/{call['call_id']}/settle",
                        json={"usage": {"input_tokens": -1}})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
        ok = http.post(api + f"/calls/{call['call_id']}/settle",
                       json={"usage": {"input_tokens": 10, "output_tokens": 2}})
        assert ok.status_code == 200 and ok.json()["session"]["calls"] == 1
        price = http.get(api + "/prices/gpt-4o-mini").json()
        assert price["input"] > 0 and price["provider"] == "openai"
        assert http.delete(api + f"/sessions/{sid}").json()["closed"] is True


def test_idle_sessions_are_dropped_and_release_their_reservations(iron_home):
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from iron_router.config import RouterConfig, RouterSettings
    from iron_router.runtime_api import routes

    rt = Runtime(RuntimeConfig(home=iron_home))
    rt.ledger.set_limit("agent:idler", 1_000_000)  # reservations are held on limited scopes
    app = Starlette(routes=routes)
    app.state.runtime = rt
    app.state.config = RouterConfig(settings=RouterSettings(anonymous_sessions=True))
    app.state.runtime_session_idle_s = 0  # every session is idle at the next sweep
    try:
        with TestClient(app) as http:
            sid = http.post("/v1/runtime/sessions", json={"agent_id": "idler"}).json()
            call = http.post("/v1/runtime/calls", json={
                "session_id": sid["session_id"], "request": {
                    "model": "gpt-4o-mini", "messages": MSG, "max_tokens": 100}}).json()
            assert call["reserved_micro"] > 0
            assert rt.ledger.state("agent:idler").reserved_micro == call["reserved_micro"]
            http.post("/v1/runtime/sessions", json={"agent_id": "newcomer"})  # sweeps
            gone = http.post(f"/v1/runtime/calls/{call['call_id']}/settle",
                             json={"usage": {"input_tokens": 1}})
            assert gone.status_code == 404
        rt.flush()
        assert rt.ledger.state("agent:idler").reserved_micro == 0
        failed = [e for e in read_events(iron_home / "audit.jsonl")
                  if e["type"] == "call_failed"]
        assert failed[0]["agent_id"] == "idler"
        assert failed[0]["error"] == "RuntimeUnavailableError"
    finally:
        rt.close()


def test_import_stays_light_in_http_mode(router):
    code = ("import sys, iron_sdk; from iron_sdk.runtime import get_runtime; get_runtime();"
            "print(','.join(m for m in ('httpx', 'openai', 'litellm', 'starlette')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60,
                         env={"IRON_RUNTIME_URL": router.url, "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == ""


def test_async_code_shares_the_session_across_tasks(mode):
    @protect_agent(agent_id="gatherer", budget_usd=1.0)
    async def agent() -> int:
        async def one() -> None:
            with llm_call(model="gpt-4o-mini", messages=MSG, max_tokens=10) as call:
                await asyncio.sleep(0)
                call.record(input_tokens=50, output_tokens=5)

        await asyncio.gather(*(one() for _ in range(5)))
        return current_session().calls

    assert asyncio.run(agent()) == 5
    assert mode.state("agent:gatherer").spent_micro == 5 * expected_micro(
        "gpt-4o-mini", {"prompt_tokens": 50, "completion_tokens": 5})
