"""Library mode end to end: @protect_agent governing the real openai client against a
real local HTTP stand-in provider, with the real SQLite ledger. The behaviours that must
be identical in HTTP mode (spend, budget stops, redaction, blocking, streams, async,
embeddings, errors, audit) run in both modes in ``test_http_mode.py``."""

from __future__ import annotations

import asyncio

import pytest

from iron_sdk import (
    BudgetConfig,
    BudgetExceededError,
    IronCageError,
    PolicyViolationError,
    Runtime,
    RuntimeConfig,
    SafetyConfig,
    SafetyViolationError,
    UnknownModelPriceError,
    current_session,
    hookimpl,
    llm_call,
    protect_agent,
    set_runtime,
)
from iron_sdk.policies.audit import read_events
from iron_sdk.pricing import ModelPrice
from tests.helpers import expected_micro

MSG = [{"role": "user", "content": "Say hello to the ledger."}]


def _events(runtime, type_: str) -> list[dict]:
    runtime.flush()  # audit lines are written by a background batcher
    return [e for e in read_events(runtime.config.home / "audit.jsonl") if e["type"] == type_]


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


def test_log_mode_sends_unchanged_and_records_kinds(provider, client, iron_home):
    rt = Runtime(RuntimeConfig(home=iron_home, safety=SafetyConfig(pii="log")))
    previous = set_runtime(rt)
    try:
        @protect_agent(agent_id="logger")
        def agent():
            return client.chat.completions.create(model="gpt-4o-mini", messages=[
                {"role": "user", "content": "ping ops@example.org"}])

        agent()
        assert provider.requests[0]["messages"][0]["content"] == "ping ops@example.org"
        found = _events(rt, "pii_detected")
        assert found[0]["kinds"] == {"email": 1} and found[0]["action"] == "log"
    finally:
        set_runtime(previous)
        rt.close()


@pytest.mark.parametrize("options, field", [
    ({"safety": SafetyConfig(pii="log")}, "safety.pii"),
    ({"safety": SafetyConfig(pii="block", secrets="off")}, "safety.secrets"),
    ({"safety": SafetyConfig(kinds=frozenset({"email"}))}, "safety.kinds"),
    ({"budget": BudgetConfig(scopes=("agent:bob",))}, "budget.scopes"),
])
def test_agent_code_cannot_loosen_the_operators_policy(runtime, provider, client, options,
                                                        field):
    @protect_agent(agent_id="alice", **options)
    def agent():
        return client.chat.completions.create(model="gpt-4o-mini", messages=MSG)

    with pytest.raises(PolicyViolationError) as caught:
        agent()
    assert caught.value.field == field and caught.value.status == 403
    assert provider.requests == []


def test_agent_code_may_tighten_the_operators_policy(runtime, provider, client):
    @protect_agent(agent_id="careful", safety=SafetyConfig(pii="block"),
                   budget=BudgetConfig(session_usd=0.5, lease_s=1e-6))
    def agent():
        session = current_session()
        assert session.safety.pii == "block" and session.budget_usd == 0.5
        assert session.budget.lease_s == runtime.config.budget.lease_s  # operator's only
        return client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": "mail ops@example.org"}])

    with pytest.raises(SafetyViolationError):
        agent()
    assert provider.requests == []


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


def test_budget_threshold_events(runtime, provider, client, iron_home):
    runtime.ledger.set_limit("agent:watched", 60)

    @protect_agent(agent_id="watched", budget=BudgetConfig(thresholds=(0.1,)))
    def agent():
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=20)

    agent()
    marks = _events(runtime, "budget_threshold")
    assert [(m["scope"], m["threshold"]) for m in marks] == [("agent:watched", 0.1)]


def test_outside_protected_function_the_client_is_governed(runtime, provider, client):
    with pytest.raises(UnknownModelPriceError):  # refused as inside one: never $0
        client.chat.completions.create(model="not-a-priced-model", messages=MSG)
    assert provider.requests == []


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


def test_a_failing_detector_blocks_the_call(runtime, provider, client):
    from iron_sdk import RuntimeUnavailableError

    class BrokenDetector:  # an extra detector (e.g. an NER model) that crashes
        @hookimpl
        def iron_detect(self, text: str):
            raise RuntimeError("model not loaded")

    runtime.pm.register(BrokenDetector())

    @protect_agent(agent_id="fail-closed")
    def agent():
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)

    with pytest.raises(RuntimeUnavailableError, match="safety fails closed"):
        agent()
    assert provider.requests == []
    assert runtime.ledger.state("agent:fail-closed").reserved_micro == 0
