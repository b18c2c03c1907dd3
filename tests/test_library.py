"""Library mode end to end: @protect_agent governing the real openai client against a
real local HTTP stand-in provider, with the real SQLite ledger."""

from __future__ import annotations

import asyncio
import json

import pytest

from iron_sdk import (
    BudgetConfig,
    BudgetExceededError,
    IronCageError,
    SafetyConfig,
    SafetyViolationError,
    UnknownModelPriceError,
    current_session,
    hookimpl,
    llm_call,
    protect_agent,
)
from iron_sdk.policies.audit import read_events
from iron_sdk.pricing import ModelPrice
from tests.helpers import expected_micro

MSG = [{"role": "user", "content": "Say hello to the ledger."}]


def _events(runtime, type_: str) -> list[dict]:
    runtime.flush()  # audit lines are written by a background batcher
    return [e for e in read_events(runtime.config.home / "audit.jsonl") if e["type"] == type_]


def test_spend_equals_price_times_reported_usage(runtime, provider, client, iron_home):
    @protect_agent(agent_id="spender")
    def agent() -> tuple[float, int]:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=50)
        client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=50)
        s = current_session()
        return s.spent_usd, s.calls

    spent, calls = agent()
    assert calls == 2
    assert len(provider.requests) == 2
    # Re-derive the usage the stand-in reported and price it independently.
    completions = _events(runtime, "call_completed")
    want = sum(expected_micro(e["model"], {"prompt_tokens": e["input_tokens"],
                                            "completion_tokens": e["output_tokens"]})
               for e in completions)
    assert round(spent * 1_000_000) == want > 0
    assert runtime.ledger.state("agent:spender").spent_micro == want
    rows = {r.model: r for r in runtime.ledger.usage()}
    assert rows["gpt-4o"].calls == 1 and rows["gpt-4o-mini"].calls == 1


def test_usage_reported_by_provider_is_what_is_charged(runtime, provider, client):
    provider.cached_tokens = 8

    @protect_agent(agent_id="cache-user")
    def agent():
        return client.chat.completions.create(model="gpt-4o-mini", messages=MSG)

    reply = agent()
    usage = reply.usage.model_dump()
    assert usage["prompt_tokens_details"]["cached_tokens"] == 8
    assert runtime.ledger.state("agent:cache-user").spent_micro == expected_micro(
        "gpt-4o-mini", usage)


def test_over_budget_raises_before_the_provider_sees_a_request(runtime, provider, client):
    @protect_agent(agent_id="tight", budget_usd=0.000001)
    def agent():
        return client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=500)

    with pytest.raises(BudgetExceededError) as info:
        agent()
    assert provider.requests == []
    err = info.value
    assert err.scope == "session:tight"
    assert err.limit_usd == pytest.approx(0.000001)
    assert err.requested_usd > err.limit_usd
    assert "lower max_tokens" in str(err)
    assert runtime.ledger.state("agent:tight").reserved_micro == 0


def test_agent_budget_from_ledger_spans_invocations(runtime, provider, client):
    runtime.ledger.set_limit("agent:bounded", 200)  # 200 µ$

    @protect_agent(agent_id="bounded")
    def agent():
        return client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=40)

    done = 0
    with pytest.raises(BudgetExceededError) as info:
        for _ in range(100):
            agent()
            done += 1
    state = runtime.ledger.state("agent:bounded")
    assert info.value.scope == "agent:bounded"
    assert 0 < done == len(provider.requests)
    assert state.spent_micro <= 200 and state.reserved_micro == 0


def test_redaction_reaches_the_provider(runtime, provider, client):
    @protect_agent(agent_id="redactor")
    def agent():
        return client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Mail bob@corp.example, card 4111 1111 1111 1111."}])

    agent()
    sent = provider.requests[0]["messages"][1]["content"]
    assert "bob@corp.example" not in sent and "4111" not in sent
    assert "[EMAIL_REDACTED]" in sent and "[CREDIT_CARD_REDACTED]" in sent
    assert provider.requests[0]["messages"][0]["content"] == "You are helpful."


def test_block_mode_sends_nothing(runtime, provider, client, iron_home):
    @protect_agent(agent_id="strict", safety=SafetyConfig(pii="block"))
    def agent():
        return client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": "My SSN is 123-45-6789"}])

    with pytest.raises(SafetyViolationError) as info:
        agent()
    assert provider.requests == []
    assert info.value.kinds == ["ssn"]
    assert "123-45-6789" not in str(info.value)
    blocked = _events(runtime, "call_blocked")
    assert blocked and blocked[0]["reason"] == "safety_violation"


def test_log_mode_sends_unchanged_and_records_kinds(runtime, provider, client, iron_home):
    @protect_agent(agent_id="logger", safety=SafetyConfig(pii="log"))
    def agent():
        return client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": "ping ops@example.org"}])

    agent()
    assert provider.requests[0]["messages"][0]["content"] == "ping ops@example.org"
    found = _events(runtime, "pii_detected")
    assert found[0]["kinds"] == {"email": 1} and found[0]["action"] == "log"


def test_streaming_is_charged_from_usage_chunk_and_hidden_if_not_asked(
        runtime, provider, client, iron_home):
    @protect_agent(agent_id="streamer")
    def agent() -> list:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)
        return list(stream)

    chunks = agent()
    assert all(c.choices for c in chunks), "the user did not ask for the usage chunk"
    assert provider.requests[0]["stream_options"] == {"include_usage": True}
    event = _events(runtime, "call_completed")[0]
    assert event["stream"] is True and event["usage_counted"] is False
    assert event["output_tokens"] == provider.reply_words
    assert runtime.ledger.state("agent:streamer").spent_micro == expected_micro(
        "gpt-4o-mini", {"prompt_tokens": event["input_tokens"],
                        "completion_tokens": event["output_tokens"]})


def test_stream_with_requested_usage_keeps_the_usage_chunk(runtime, provider, client):
    @protect_agent(agent_id="streamer2")
    def agent() -> list:
        return list(client.chat.completions.create(
            model="gpt-4o-mini", messages=MSG, stream=True,
            stream_options={"include_usage": True}))

    chunks = agent()
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert runtime.ledger.state("agent:streamer2").spent_micro > 0


def test_stream_without_provider_usage_is_counted(runtime, client, iron_home):
    from iron_sdk.standin import StandInProvider

    with StandInProvider(stream_usage=False) as bare:
        import openai

        c = openai.OpenAI(base_url=bare.url, api_key="sk-test", max_retries=0)

        @protect_agent(agent_id="counted")
        def agent() -> str:
            return "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
                model="gpt-4o-mini", messages=MSG, stream=True) if ch.choices)

        text = agent()
    event = _events(runtime, "call_completed")[0]
    assert event["usage_counted"] is True
    assert event["output_tokens"] >= len(text.split()) > 0
    assert runtime.ledger.state("agent:counted").spent_micro > 0


def test_abandoned_stream_is_charged_for_what_was_streamed(runtime, provider, client,
                                                          iron_home):
    @protect_agent(agent_id="quitter")
    def agent() -> None:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()

    agent()
    event = _events(runtime, "call_completed")[0]
    assert event["usage_counted"] is True and 0 < event["output_tokens"] < provider.reply_words
    state = runtime.ledger.state("agent:quitter")
    assert state.spent_micro > 0 and state.reserved_micro == 0


async def test_async_client_and_async_stream(runtime, provider, aclient):
    @protect_agent(agent_id="async-agent", budget_usd=1.0)
    async def agent() -> float:
        await aclient.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        stream = await aclient.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                                       stream=True)
        async for _ in stream:
            pass
        return current_session().spent_usd

    spent = await agent()
    assert len(provider.requests) == 2
    assert runtime.ledger.state("agent:async-agent").spent_micro == round(spent * 1e6) > 0


async def test_async_redaction_and_budget_block(runtime, provider, aclient):
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


def test_embeddings_are_charged(runtime, provider, client):
    @protect_agent(agent_id="embedder")
    def agent():
        return client.embeddings.create(model="text-embedding-3-small",
                                        input=["alpha text", "mail a@b.example"])

    reply = agent()
    assert len(reply.data) == 2
    assert provider.requests[0]["input"][1] == "mail [EMAIL_REDACTED]"
    assert runtime.ledger.state("agent:embedder").spent_micro == expected_micro(
        "text-embedding-3-small", {"prompt_tokens": reply.usage.prompt_tokens})


def test_provider_error_releases_the_reservation(runtime, provider, client, iron_home):
    import openai

    @protect_agent(agent_id="unlucky", budget_usd=0.01)
    def agent():
        try:
            client.chat.completions.create(model="fail-500", messages=MSG, max_tokens=10)
        finally:
            assert current_session().reserved_micro == 0

    class FailurePrices:  # the iron_model_price hook prices the stand-in's failing model
        @hookimpl
        def iron_model_price(self, model: str):
            return ModelPrice.per_mtok(1.0, 1.0) if model.startswith("fail-") else None

    runtime.pm.register(FailurePrices())
    with pytest.raises(openai.InternalServerError):
        agent()
    assert len(provider.requests) == 1
    assert runtime.ledger.state("agent:unlucky").spent_micro == 0
    assert _events(runtime, "call_failed")[0]["status"] == 500


def test_unknown_model_is_refused_unless_priced(iron_home, provider, client):
    from iron_sdk import Runtime, RuntimeConfig, set_runtime
    from iron_sdk.config import ModelPriceConfig

    rt = Runtime(RuntimeConfig(home=iron_home, prices={
        "my-private-model": ModelPriceConfig(input_per_mtok=1.0, output_per_mtok=2.0)}))
    previous = set_runtime(rt)
    try:
        @protect_agent(agent_id="private")
        def agent(model: str):
            return client.chat.completions.create(model=model, messages=MSG)

        with pytest.raises(UnknownModelPriceError, match="no-such-model"):
            agent("no-such-model")
        assert provider.requests == []
        reply = agent("my-private-model")
        usage = reply.usage
        want = -(-(usage.prompt_tokens * 1_000_000 + usage.completion_tokens * 2_000_000)
                 // 1_000_000)
        assert rt.ledger.state("agent:private").spent_micro == want
    finally:
        set_runtime(previous)
        rt.close()


def test_llm_call_context_manager(runtime):
    @protect_agent(agent_id="manual", budget_usd=0.05)
    def agent() -> tuple[list, float]:
        with llm_call(model="gpt-4o-mini", messages=[
                {"role": "user", "content": "reach me at +44 20 7946 0958"}],
                max_tokens=500) as call:
            sent = call.messages
            assert current_session().reserved_micro > 0
            call.record(input_tokens=1000, output_tokens=500)
        with pytest.raises(RuntimeError), llm_call(model="gpt-4o-mini", messages=MSG,
                                                   max_tokens=100):
            raise RuntimeError("client blew up")
        return sent, current_session().spent_usd

    sent, spent = agent()
    assert sent[0]["content"] == "reach me at [PHONE_REDACTED]"
    assert spent == pytest.approx(0.00045)  # the worked example
    assert runtime.ledger.state("agent:manual").reserved_micro == 0


def test_llm_call_outside_protected_function_is_a_clear_error():
    with pytest.raises(IronCageError, match="inside a @protect_agent"), \
            llm_call(model="gpt-4o-mini", messages=MSG):
        pass


def test_decorator_forms_and_metadata(runtime, provider, client):
    @protect_agent
    def bare(x: int) -> int:
        """Doc."""
        return x + 1

    @protect_agent(budget_usd=1)
    def gen(n: int):
        for _i in range(n):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
            yield current_session().calls

    @protect_agent(agent_id="agen")
    async def agen(n: int):
        for _ in range(n):
            yield current_session().agent_id

    assert bare(1) == 2 and bare.__name__ == "bare" and bare.__doc__ == "Doc."
    assert list(gen(3)) == [1, 2, 3]
    with pytest.raises(IronCageError):
        current_session()  # the session never leaks into the consumer

    async def consume() -> list[str]:
        return [a async for a in agen(2)]

    assert asyncio.run(consume()) == ["agen", "agen"]
    usage = {r.agent_id for r in runtime.ledger.usage()}
    assert "test_decorator_forms_and_metadata.<locals>.gen" in usage


def test_each_invocation_is_its_own_session(runtime, provider, client):
    @protect_agent(agent_id="sessions", budget_usd=0.001)
    def agent() -> tuple[str, int]:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=20)
        s = current_session()
        return s.session_id, s.calls

    (a, calls_a), (b, calls_b) = agent(), agent()
    assert a != b and calls_a == calls_b == 1


def test_audit_log_has_no_prompt_text_pii_or_keys(runtime, provider, client, iron_home):
    @protect_agent(agent_id="audited")
    def agent():
        client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": "secret plan for carol@example.com"}])

    agent()
    runtime.flush()
    raw = (iron_home / "audit.jsonl").read_text()
    assert "carol@example.com" not in raw and "secret plan" not in raw
    assert "sk-test-not-a-real-key" not in raw
    events = [json.loads(line) for line in raw.splitlines()]
    done = [e for e in events if e["type"] == "call_completed"][0]
    for field in ("event_id", "ts", "agent_id", "model", "provider", "input_tokens",
                  "output_tokens", "cost_micro", "outcome"):
        assert field in done
    assert done["provider"] == "openai" and done["outcome"] == "completed"


def test_budget_threshold_events(runtime, provider, client, iron_home):
    runtime.ledger.set_limit("agent:watched", 60)

    @protect_agent(agent_id="watched", budget=BudgetConfig(thresholds=(0.1,)))
    def agent():
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=20)

    agent()
    marks = _events(runtime, "budget_threshold")
    assert [(m["scope"], m["threshold"]) for m in marks] == [("agent:watched", 0.1)]


def test_outside_protected_function_the_client_is_untouched(runtime, provider, client):
    client.chat.completions.create(model="not-a-priced-model", messages=MSG)
    assert len(provider.requests) == 1
    assert runtime.ledger.usage() == []


def test_rate_limit_per_agent(runtime, provider, client):
    from iron_sdk import RateLimitedError, ReliabilityConfig

    @protect_agent(agent_id="limited", reliability=ReliabilityConfig(requests_per_minute=2))
    def agent():
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)

    agent()
    agent()
    with pytest.raises(RateLimitedError) as info:
        agent()
    assert len(provider.requests) == 2
    assert 0 < info.value.retry_after <= 30


def test_circuit_opens_after_repeated_provider_failures(runtime, provider, client):
    import openai

    from iron_sdk import CircuitOpenError, ReliabilityConfig

    class FailurePrices:
        @hookimpl
        def iron_model_price(self, model: str):
            return ModelPrice.per_mtok(1.0, 1.0) if model.startswith("fail-") else None

    runtime.pm.register(FailurePrices())

    @protect_agent(agent_id="breaker",
                   reliability=ReliabilityConfig(circuit_failures=2, circuit_reset_s=60))
    def agent(model: str):
        client.chat.completions.create(model=model, messages=MSG)

    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            agent("fail-503")
    with pytest.raises(CircuitOpenError) as info:
        agent("fail-503")
    assert len(provider.requests) == 2 and info.value.target == "fail-503"
    agent("gpt-4o-mini")  # other models are unaffected
    assert len(provider.requests) == 3


def test_redis_ledger_end_to_end(iron_home, provider, client, redis_url, monkeypatch):
    from iron_sdk import Runtime, RuntimeConfig, set_runtime

    monkeypatch.setenv("IRON_LEDGER", redis_url)
    rt = Runtime(RuntimeConfig(home=iron_home))
    previous = set_runtime(rt)
    try:
        rt.ledger.set_limit("agent:fleet", 100)

        @protect_agent(agent_id="fleet")
        def agent():
            return client.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                                  max_tokens=30)

        replies = []
        with pytest.raises(BudgetExceededError):
            for _ in range(50):
                replies.append(agent())
        want = sum(expected_micro("gpt-4o-mini", r.usage.model_dump()) for r in replies)
        state = rt.ledger.state("agent:fleet")
        assert state.spent_micro == want <= 100 and state.reserved_micro == 0
        assert len(provider.requests) == len(replies) > 0
    finally:
        set_runtime(previous)
        rt.close()


def test_responses_api_is_governed(runtime, provider, client, iron_home):
    @protect_agent(agent_id="responder", budget_usd=0.01)
    def agent() -> tuple[str, str]:
        plain = client.responses.create(
            model="gpt-4o-mini", instructions="Be brief.", max_output_tokens=40,
            input=[{"role": "user", "content": "Call me at +1 415-555-0132"}])
        streamed = "".join(e.delta for e in client.responses.create(
            model="gpt-4o-mini", input="Mail eve@example.com", stream=True)
            if e.type == "response.output_text.delta")
        return plain.output_text, streamed

    plain, streamed = agent()
    assert plain and streamed
    first, second = provider.requests
    assert first["instructions"] == "Be brief."
    assert first["input"][0]["content"] == "Call me at [PHONE_REDACTED]"
    assert second["input"] == "Mail [EMAIL_REDACTED]"
    completed = _events(runtime, "call_completed")
    assert [e["usage_counted"] for e in completed] == [False, False]
    want = sum(expected_micro("gpt-4o-mini", {"prompt_tokens": e["input_tokens"],
                                              "completion_tokens": e["output_tokens"]})
               for e in completed)
    assert runtime.ledger.state("agent:responder").spent_micro == want > 0


async def test_async_responses_api_blocks_over_budget(runtime, provider, aclient):
    @protect_agent(agent_id="async-responder", budget_usd=0.000001)
    async def agent():
        return await aclient.responses.create(model="gpt-4o", input="hello",
                                              max_output_tokens=500)

    with pytest.raises(BudgetExceededError):
        await agent()
    assert provider.requests == []
