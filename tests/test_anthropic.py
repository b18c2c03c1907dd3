"""The official anthropic client inside @protect_agent (plugins/iron_anthropic): reserved,
redacted, charged once from Anthropic's usage (cache reads and writes included), sync
and async, ``messages.create`` plain and streamed and ``messages.stream(...)``; the same
under LangChain's ChatAnthropic; plain and streamed ``create`` in HTTP mode too.

Every request goes to the real loopback stand-in (``/v1/messages``); charges are compared
with the price data's own entry (``tests.helpers.price_entry``) and with
``ModelPrice.cost_micro`` of the normalized usage.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import anthropic
import pytest

from iron_sdk import (
    BudgetExceededError,
    Runtime,
    RuntimeConfig,
    SafetyConfig,
    SafetyViolationError,
    current_session,
    protect_agent,
    set_runtime,
)
from iron_sdk.config import ModelPriceConfig
from iron_sdk.pricing import default_database
from iron_sdk.standin import StandInProvider
from iron_sdk.usage import usage_from_anthropic
from tests.helpers import price_entry
from tests.test_http_mode import mode, router  # noqa: F401  (fixtures: library and HTTP mode)

MODEL = "claude-haiku-4-5"
SYSTEM = "You help ann@corp.example with billing."
MSGS = [{"role": "user", "content": "Say hello."}]


def _base(provider: StandInProvider) -> str:
    return provider.url.removesuffix("/v1")  # the client adds /v1/messages itself


@pytest.fixture
def sync_client(provider: StandInProvider) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=_base(provider), api_key="sk-ant-test-not-real",
                               max_retries=0)


@pytest.fixture
def async_client(provider: StandInProvider) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=_base(provider), api_key="sk-ant-test-not-real",
                                    max_retries=0)


@pytest.fixture
def cached_provider() -> Any:
    with StandInProvider(cached_tokens=700, cache_write_tokens=300) as p:
        yield p


def expected_micro(usage: Any) -> int:
    """Anthropic's bill from its raw usage and the raw price entry (input_tokens excludes
    cache reads and writes)."""
    entry = price_entry(MODEL)
    rate = {k: Decimal(repr(entry[k])) for k in (
        "input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
        "cache_creation_input_token_cost")}
    usd = (usage.input_tokens * rate["input_cost_per_token"]
           + (usage.cache_read_input_tokens or 0) * rate["cache_read_input_token_cost"]
           + (usage.cache_creation_input_tokens or 0) * rate["cache_creation_input_token_cost"]
           + usage.output_tokens * rate["output_cost_per_token"])
    return math.ceil(usd * 1_000_000)


def model_price_micro(usage: Any) -> int:
    price = default_database().lookup(MODEL)
    assert price is not None
    normalized = usage_from_anthropic(usage)
    assert normalized is not None
    return price.cost_micro(normalized)


def _spent(runtime: Runtime, agent: str) -> int:
    state = runtime.ledger.state(f"agent:{agent}")
    assert state.reserved_micro == 0  # nothing left reserved
    return state.spent_micro


def _completed(runtime: Runtime, agent: str) -> list[dict[str, Any]]:
    from iron_sdk.policies.audit import read_events

    runtime.flush()
    return [e for e in read_events(runtime.config.home / "audit.jsonl")
            if e["type"] == "call_completed" and e.get("agent_id") == agent]


# -- plain create -------------------------------------------------------------------------
def test_create_is_redacted_and_charged_once(runtime, provider, sync_client):
    @protect_agent(agent_id="claude-plain")
    def agent() -> tuple[Any, int]:
        reply = sync_client.messages.create(
            model=MODEL, max_tokens=64, system=SYSTEM,
            messages=[
                {"role": "user", "content": [
                    {"type": "text", "text": "Card 4111 1111 1111 1111, please check it."}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "tu_1", "name": "lookup", "input": {"q": "x"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "tu_1",
                     "content": "Owner: bob@corp.example"}]}],
            tools=[{"name": "lookup", "description": "Look up an account.",
                    "input_schema": {"type": "object"}}])
        return reply, current_session().calls

    reply, calls = agent()
    assert calls == 1 and len(provider.requests) == 1
    sent = provider.requests[0]
    assert "ann@corp.example" not in sent["system"] and "[EMAIL_REDACTED]" in sent["system"]
    text = sent["messages"][0]["content"][0]["text"]
    assert "4111" not in text and "[CREDIT_CARD_REDACTED]" in text
    result = sent["messages"][2]["content"][0]["content"]
    assert "bob@corp.example" not in result and "[EMAIL_REDACTED]" in result
    assert reply.content[0].text.startswith("Sure")
    want = expected_micro(reply.usage)
    assert _spent(runtime, "claude-plain") == want == model_price_micro(reply.usage) > 0
    [event] = _completed(runtime, "claude-plain")
    assert event["source"] == "anthropic" and event["provider"] == "anthropic"
    assert event["cost_micro"] == want and event["kind"] == "anthropic"


def test_caller_objects_are_not_changed(runtime, provider, sync_client):
    messages = [{"role": "user", "content": "Mail ann@corp.example"}]

    @protect_agent(agent_id="claude-copy")
    def agent() -> None:
        sync_client.messages.create(model=MODEL, max_tokens=16, messages=messages)

    agent()
    assert messages == [{"role": "user", "content": "Mail ann@corp.example"}]
    assert provider.requests[0]["messages"][0]["content"] == "Mail [EMAIL_REDACTED]"


def test_cache_reads_and_writes_are_priced(runtime, cached_provider):
    client = anthropic.Anthropic(base_url=_base(cached_provider), api_key="sk-ant-test",
                                 max_retries=0)

    @protect_agent(agent_id="claude-cache")
    def agent() -> Any:
        return client.messages.create(model=MODEL, max_tokens=64, messages=MSGS)

    reply = agent()
    assert reply.usage.cache_read_input_tokens == 700
    assert reply.usage.cache_creation_input_tokens == 300
    want = expected_micro(reply.usage)
    plain = math.ceil(Decimal(repr(price_entry(MODEL)["input_cost_per_token"]))
                      * (reply.usage.input_tokens + 1000) * 1_000_000
                      + reply.usage.output_tokens
                      * Decimal(repr(price_entry(MODEL)["output_cost_per_token"])) * 1_000_000)
    assert want != plain  # the cache rates matter here
    assert _spent(runtime, "claude-cache") == want == model_price_micro(reply.usage)


# -- refusals and errors ------------------------------------------------------------------
def test_budget_that_cannot_cover_it_is_refused_with_nothing_sent(runtime, provider,
                                                                   sync_client):
    @protect_agent(agent_id="claude-tight", budget_usd=0.00001)
    def agent() -> Any:
        return sync_client.messages.create(model=MODEL, max_tokens=4000, messages=MSGS)

    with pytest.raises(BudgetExceededError) as info:
        agent()
    assert provider.requests == []
    assert info.value.scope == "session:claude-tight"
    assert info.value.requested_usd > info.value.limit_usd
    assert runtime.ledger.state("agent:claude-tight").reserved_micro == 0


def test_stream_helper_refused_before_sending(runtime, provider, sync_client):
    @protect_agent(agent_id="claude-tight-stream", budget_usd=0.00001)
    def agent() -> None:
        with sync_client.messages.stream(model=MODEL, max_tokens=4000, messages=MSGS) as s:
            s.until_done()

    with pytest.raises(BudgetExceededError):
        agent()
    assert provider.requests == []


def test_block_mode_raises_typed_error(runtime, provider, sync_client):
    @protect_agent(agent_id="claude-strict", safety=SafetyConfig(pii="block"))
    def agent() -> Any:
        return sync_client.messages.create(model=MODEL, max_tokens=16, messages=[
            {"role": "user", "content": "My SSN is 123-45-6789"}])

    with pytest.raises(SafetyViolationError):
        agent()
    assert provider.requests == []


def test_provider_error_releases_the_reservation(iron_home, provider, sync_client):
    rt = Runtime(RuntimeConfig(home=iron_home, prices={
        "fail-500": ModelPriceConfig(input_per_mtok=1.0, output_per_mtok=1.0)}))
    previous = set_runtime(rt)
    try:
        @protect_agent(agent_id="claude-fail")
        def agent() -> Any:
            return sync_client.messages.create(model="fail-500", max_tokens=16, messages=MSGS)

        with pytest.raises(anthropic.InternalServerError):
            agent()
        state = rt.ledger.state("agent:claude-fail")
        assert state.spent_micro == 0 and state.reserved_micro == 0
    finally:
        set_runtime(previous)
        rt.close()


def test_count_tokens_is_untouched_and_calls_outside_are_governed(runtime, provider, sync_client):
    reply = sync_client.messages.create(model=MODEL, max_tokens=16, messages=[
        {"role": "user", "content": "outside ann@corp.example"}])  # the outside session
    assert reply.usage.output_tokens > 0
    assert provider.requests[-1]["messages"][0]["content"] == "outside [EMAIL_REDACTED]"
    runtime.flush()
    assert runtime.ledger.state("agent:unattributed").spent_micro > 0

    @protect_agent(agent_id="claude-count")
    def agent() -> int:
        with pytest.raises(anthropic.NotFoundError):  # the stand-in has no count_tokens
            sync_client.messages.count_tokens(model=MODEL, messages=MSGS)
        return current_session().calls

    assert agent() == 0
    assert provider.requests[-1]["messages"] == MSGS


# -- streams ------------------------------------------------------------------------------
def test_create_stream_charged_once_with_cache_tokens(runtime, cached_provider):
    client = anthropic.Anthropic(base_url=_base(cached_provider), api_key="sk-ant-test",
                                 max_retries=0)

    @protect_agent(agent_id="claude-sse")
    def agent() -> list[Any]:
        with client.messages.create(model=MODEL, max_tokens=64, messages=MSGS,
                                    stream=True) as stream:
            return list(stream)

    events = agent()
    start = next(e for e in events if e.type == "message_start").message.usage
    final = next(e for e in events if e.type == "message_delta").usage
    assert start.cache_read_input_tokens == 700
    usage = start.model_copy(update={"output_tokens": final.output_tokens})
    want = expected_micro(usage)
    assert _spent(runtime, "claude-sse") == want == model_price_micro(usage) > 0
    assert len(_completed(runtime, "claude-sse")) == 1


@pytest.mark.parametrize("read", ["final_message", "text_stream", "events"])
def test_stream_helper_charged_once(runtime, cached_provider, read):
    client = anthropic.Anthropic(base_url=_base(cached_provider), api_key="sk-ant-test",
                                 max_retries=0)

    @protect_agent(agent_id=f"claude-helper-{read}")
    def agent() -> Any:
        with client.messages.stream(model=MODEL, max_tokens=64, system=SYSTEM,
                                    messages=MSGS) as stream:
            if read == "text_stream":
                assert "".join(stream.text_stream).startswith("Sure")
            elif read == "events":
                assert any(e.type == "text" for e in stream)
            final = stream.get_final_message()
            return final

    final = agent()
    assert "[EMAIL_REDACTED]" in cached_provider.requests[0]["system"]
    assert final.usage.cache_creation_input_tokens == 300
    want = expected_micro(final.usage)
    assert _spent(runtime, f"claude-helper-{read}") == want == model_price_micro(final.usage)
    assert len(_completed(runtime, f"claude-helper-{read}")) == 1


def test_abandoned_stream_helper_pays_for_what_was_generated(runtime, sync_client):
    with StandInProvider(reply_words=200) as long_provider:
        client = anthropic.Anthropic(base_url=_base(long_provider), api_key="sk-ant-test",
                                     max_retries=0)

        @protect_agent(agent_id="claude-abandon")
        def agent() -> str:
            with client.messages.stream(model=MODEL, max_tokens=400, messages=MSGS) as s:
                texts = []
                for text in s.text_stream:
                    texts.append(text)
                    if len(texts) == 60:
                        break
                return "".join(texts)

        read = agent()
    [event] = _completed(runtime, "claude-abandon")
    assert event["output_tokens"] >= 60  # what was generated, not message_start's 1
    assert event["cost_micro"] <= event["reserved_micro"]
    assert read.startswith("Sure")


# -- async --------------------------------------------------------------------------------
async def test_async_create_plain_and_streamed(runtime, provider, async_client):
    @protect_agent(agent_id="claude-async")
    async def agent() -> tuple[Any, list[Any]]:
        reply = await async_client.messages.create(model=MODEL, max_tokens=32, system=SYSTEM,
                                                   messages=MSGS)
        stream = await async_client.messages.create(model=MODEL, max_tokens=32,
                                                    messages=MSGS, stream=True)
        events = [e async for e in stream]
        return reply, events

    reply, events = await agent()
    assert all("ann@corp.example" not in (r.get("system") or "") for r in provider.requests)
    start = next(e for e in events if e.type == "message_start").message.usage
    final = next(e for e in events if e.type == "message_delta").usage
    streamed = start.model_copy(update={"output_tokens": final.output_tokens})
    want = expected_micro(reply.usage) + expected_micro(streamed)
    assert _spent(runtime, "claude-async") == want > 0
    assert len(_completed(runtime, "claude-async")) == 2


async def test_async_stream_helper(runtime, provider, async_client):
    @protect_agent(agent_id="claude-async-helper")
    async def agent() -> Any:
        async with async_client.messages.stream(model=MODEL, max_tokens=32, system=SYSTEM,
                                                messages=MSGS) as stream:
            return await stream.get_final_message()

    final = await agent()
    assert "[EMAIL_REDACTED]" in provider.requests[0]["system"]
    assert _spent(runtime, "claude-async-helper") == expected_micro(final.usage) > 0
    assert len(_completed(runtime, "claude-async-helper")) == 1


async def test_async_budget_refused(runtime, provider, async_client):
    @protect_agent(agent_id="claude-async-tight", budget_usd=0.00001)
    async def agent() -> Any:
        return await async_client.messages.create(model=MODEL, max_tokens=4000, messages=MSGS)

    with pytest.raises(BudgetExceededError):
        await agent()
    assert provider.requests == []


# -- LangChain's ChatAnthropic on top: governed (and redacted) once, at the client ---------
@pytest.fixture
def chat_anthropic(provider: StandInProvider) -> Any:
    from langchain_anthropic import ChatAnthropic

    return ChatAnthropic(model=MODEL, max_tokens=64, base_url=_base(provider),
                         api_key="sk-ant-test-not-real", max_retries=0)


def test_chat_anthropic_invoke_charged_once(runtime, provider, chat_anthropic):
    from langchain_core.messages import HumanMessage, SystemMessage

    @protect_agent(agent_id="claude-lc")
    def agent() -> Any:
        return chat_anthropic.invoke([SystemMessage(SYSTEM), HumanMessage("Say hello.")])

    reply = agent()
    assert len(provider.requests) == 1
    assert "[EMAIL_REDACTED]" in str(provider.requests[0]["system"])
    [event] = _completed(runtime, "claude-lc")
    assert event["source"] == "anthropic"
    usage = reply.usage_metadata
    assert event["input_tokens"] == usage["input_tokens"]
    assert event["output_tokens"] == usage["output_tokens"]
    assert _spent(runtime, "claude-lc") == event["cost_micro"] > 0


def test_chat_anthropic_stream_charged_once(runtime, provider, chat_anthropic):
    @protect_agent(agent_id="claude-lc-stream")
    def agent() -> str:
        return "".join(str(c.content) for c in chat_anthropic.stream("Mail ann@corp.example"))

    agent()
    assert len(provider.requests) == 1
    assert "ann@corp.example" not in str(provider.requests[0]["messages"])
    [event] = _completed(runtime, "claude-lc-stream")
    assert event["source"] == "anthropic" and not event["usage_counted"]
    assert event["output_tokens"] == 12
    assert _spent(runtime, "claude-lc-stream") == event["cost_micro"] > 0


async def test_chat_anthropic_async_charged_once(runtime, provider, chat_anthropic):
    @protect_agent(agent_id="claude-lc-async")
    async def agent() -> Any:
        await chat_anthropic.ainvoke("Say hello.")
        return [c async for c in chat_anthropic.astream("Say hello.")]

    await agent()
    assert len(provider.requests) == 2
    events = _completed(runtime, "claude-lc-async")
    assert len(events) == 2 and all(not e["usage_counted"] for e in events)
    assert _spent(runtime, "claude-lc-async") == sum(e["cost_micro"] for e in events) > 0


# -- HTTP mode: the same bodies against a real router --------------------------------------
def test_create_plain_and_streamed_both_modes(mode, provider, sync_client):  # noqa: F811
    @protect_agent(agent_id=f"claude-{mode.name}")
    def agent() -> tuple[Any, list[Any]]:
        reply = sync_client.messages.create(model=MODEL, max_tokens=32, system=SYSTEM,
                                            messages=MSGS)
        with sync_client.messages.create(model=MODEL, max_tokens=32, messages=MSGS,
                                         stream=True) as stream:
            events = list(stream)
        return reply, events

    reply, events = agent()
    assert "[EMAIL_REDACTED]" in provider.requests[0]["system"]
    start = next(e for e in events if e.type == "message_start").message.usage
    final = next(e for e in events if e.type == "message_delta").usage
    streamed = start.model_copy(update={"output_tokens": final.output_tokens})
    want = expected_micro(reply.usage) + expected_micro(streamed)
    state = mode.state(f"agent:claude-{mode.name}")
    assert state.spent_micro == want > 0 and state.reserved_micro == 0
    completed = mode.events("call_completed", f"claude-{mode.name}")
    assert len(completed) == 2 and all(e["source"] == "anthropic" for e in completed)


def test_stream_helper_both_modes(mode, provider, sync_client):  # noqa: F811
    @protect_agent(agent_id=f"claude-helper-{mode.name}")
    def agent() -> Any:
        with sync_client.messages.stream(model=MODEL, max_tokens=32, system=SYSTEM,
                                         messages=MSGS) as stream:
            return stream.get_final_message()

    final = agent()
    assert "[EMAIL_REDACTED]" in provider.requests[0]["system"]
    state = mode.state(f"agent:claude-helper-{mode.name}")
    assert state.spent_micro == expected_micro(final.usage) > 0 and state.reserved_micro == 0


# -- litellm on top: governed by the litellm plugin, once, with this plugin active ----------
def test_litellm_anthropic_route_charged_once(runtime, provider, sync_client):
    import litellm

    @protect_agent(agent_id="claude-litellm")
    def agent() -> int:
        sync_client.messages.create(model=MODEL, max_tokens=8, messages=MSGS)  # instruments
        opts = {"model": f"anthropic/{MODEL}", "api_base": _base(provider),
                "api_key": "sk-ant-test-not-real", "max_tokens": 16}
        litellm.completion(messages=[{"role": "user", "content": "Mail ann@corp.example"}],
                           **opts)
        list(litellm.completion(messages=MSGS, stream=True, **opts))
        return current_session().calls

    assert agent() == 3 == len(provider.requests)
    assert "ann@corp.example" not in str(provider.requests[1]["messages"])
    done = _completed(runtime, "claude-litellm")
    assert sorted(e["source"] for e in done) == ["anthropic", "litellm", "litellm"]
    assert _spent(runtime, "claude-litellm") == sum(e["cost_micro"] for e in done)


# -- the beta resource and parse ----------------------------------------------------------
def test_beta_create_and_stream_are_governed(runtime, provider, sync_client):
    @protect_agent(agent_id="claude-beta")
    def agent() -> tuple[Any, Any]:
        reply = sync_client.beta.messages.create(
            model=MODEL, max_tokens=16, betas=["context-1m-2025-08-07"],
            messages=[{"role": "user", "content": "Mail ann@corp.example"}])
        with sync_client.beta.messages.stream(model=MODEL, max_tokens=16,
                                              messages=MSGS) as stream:
            final = stream.get_final_message()
        return reply, final

    reply, final = agent()
    assert provider.requests[0]["messages"][0]["content"] == "Mail [EMAIL_REDACTED]"
    assert provider.headers[0]["anthropic-beta"] == "context-1m-2025-08-07"
    want = expected_micro(reply.usage) + expected_micro(final.usage)
    assert _spent(runtime, "claude-beta") == want > 0
    assert len(_completed(runtime, "claude-beta")) == 2


def test_parse_that_cannot_read_the_answer_still_pays(runtime, provider, sync_client):
    """The provider answered (and bills) but the text is not the caller's type: the
    reservation is charged, with a ``usage_missing`` event, never released."""
    import pydantic

    from iron_sdk.policies.audit import read_events

    class Answer(pydantic.BaseModel):
        text: str

    @protect_agent(agent_id="claude-parse")
    def agent() -> None:
        sync_client.messages.parse(model=MODEL, max_tokens=16, output_format=Answer,
                                   messages=MSGS)

    with pytest.raises(pydantic.ValidationError):
        agent()
    assert len(provider.requests) == 1
    [event] = _completed(runtime, "claude-parse")
    assert _spent(runtime, "claude-parse") == event["cost_micro"] == event["reserved_micro"]
    assert any(e["type"] == "usage_missing" and e.get("agent_id") == "claude-parse"
               for e in read_events(runtime.config.home / "audit.jsonl"))
