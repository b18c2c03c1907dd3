"""The LiteLLM SDK under @protect_agent: real ``litellm.completion``/``acompletion`` calls
against the real local stand-in provider, the real runtime and SQLite ledger."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import litellm
import pytest
from iron_litellm import IronLiteLLM, instrument, uninstrument

from iron_sdk import (
    BudgetExceededError,
    Runtime,
    RuntimeConfig,
    SafetyConfig,
    SafetyViolationError,
    current_session,
    hookimpl,
    protect_agent,
    set_runtime,
)
from iron_sdk.guard import outer_governed
from iron_sdk.policies.audit import read_events
from iron_sdk.pricing import ModelPrice
from iron_sdk.standin import prompt_tokens
from tests.helpers import expected_micro

ROOT = Path(__file__).resolve().parents[1]
MSG = [{"role": "user", "content": "Say hello to the ledger."}]
KEY = "sk-test-not-a-real-key"


def _events(runtime: Runtime, type_: str) -> list[dict]:
    runtime.flush()
    return [e for e in read_events(runtime.config.home / "audit.jsonl") if e["type"] == type_]


def _want(messages: list[dict], completion_tokens: int, model: str = "gpt-4o-mini") -> int:
    """What the stand-in reports for these messages, priced from the price file."""
    return expected_micro(model, {"prompt_tokens": prompt_tokens(messages),
                                  "completion_tokens": completion_tokens})


@pytest.fixture
def llm(provider):  # noqa: ANN201
    """``litellm.completion``/``acompletion`` bound to the stand-in."""
    opts = dict(api_base=provider.url, api_key=KEY, max_retries=0)
    return types.SimpleNamespace(
        completion=lambda **kw: litellm.completion(**{"model": "openai/gpt-4o-mini",
                                                     **opts, **kw}),
        acompletion=lambda **kw: litellm.acompletion(**{"model": "openai/gpt-4o-mini",
                                                       **opts, **kw}))


@pytest.fixture
def callbacks():  # noqa: ANN201
    """Restore ``litellm.callbacks`` after a test that adds its own."""
    saved = list(litellm.callbacks)
    yield litellm.callbacks
    litellm.callbacks[:] = saved


def test_importing_iron_sdk_and_the_entry_point_does_not_import_litellm():
    code = ("import sys, iron_sdk, iron_litellm, iron_litellm.plugin; "
            "print('litellm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "False"


def test_over_budget_raises_our_error_before_anything_is_sent(runtime, provider, llm):
    @protect_agent(agent_id="lite-tight", budget_usd=0.000001)
    def agent():
        return llm.completion(messages=MSG, max_tokens=500)

    with pytest.raises(BudgetExceededError) as info:
        agent()
    assert type(info.value) is BudgetExceededError  # ours, not a litellm wrapper exception
    assert not isinstance(info.value, litellm.exceptions.APIError)
    assert info.value.scope == "session:lite-tight"
    assert provider.requests == []
    assert runtime.ledger.state("agent:lite-tight").reserved_micro == 0
    assert _events(runtime, "call_blocked")[0]["reason"] == "budget_exceeded"


def test_safety_block_sends_nothing(runtime, provider, llm):
    @protect_agent(agent_id="lite-strict", safety=SafetyConfig(pii="block"))
    def agent():
        return llm.completion(messages=[{"role": "user", "content": "My SSN is 123-45-6789"}])

    with pytest.raises(SafetyViolationError) as info:
        agent()
    assert info.value.kinds == ["ssn"] and "123-45-6789" not in str(info.value)
    assert provider.requests == []


def test_redacted_text_is_what_reaches_the_provider(runtime, provider, llm):
    @protect_agent(agent_id="lite-redact")
    def agent():
        return llm.completion(messages=[
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Mail bob@corp.example, card 4111 1111 1111 1111."}])

    agent()
    sent = provider.requests[0]["messages"]
    assert sent[0]["content"] == "You are helpful."
    assert "bob@corp.example" not in sent[1]["content"] and "4111" not in sent[1]["content"]
    assert "[EMAIL_REDACTED]" in sent[1]["content"]
    assert "[CREDIT_CARD_REDACTED]" in sent[1]["content"]


def test_plain_and_streamed_sync_calls_are_charged_exactly(runtime, provider, llm):
    @protect_agent(agent_id="lite-sync")
    def agent() -> tuple[object, list]:
        reply = llm.completion(messages=MSG, max_tokens=7)
        chunks = list(llm.completion(messages=MSG, stream=True))
        return reply, chunks

    reply, chunks = agent()
    assert len(provider.requests) == 2
    assert reply.usage.completion_tokens == 7
    # The stream was charged from the provider's usage chunk, which the caller did not
    # ask for and does not see.
    assert provider.requests[1]["stream_options"] == {"include_usage": True}
    assert all(c.choices for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(text.split()) == provider.reply_words
    want = _want(MSG, 7) + _want(MSG, provider.reply_words)
    state = runtime.ledger.state("agent:lite-sync")
    assert state.spent_micro == want and state.reserved_micro == 0
    done = _events(runtime, "call_completed")
    assert [e["stream"] for e in done] == [False, True]
    assert all(e["usage_counted"] is False for e in done)


def test_stream_that_asked_for_usage_keeps_the_usage_chunk(runtime, provider, llm):
    @protect_agent(agent_id="lite-usage")
    def agent() -> list:
        return list(llm.completion(messages=MSG, stream=True,
                                   stream_options={"include_usage": True}))

    chunks = agent()
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert runtime.ledger.state("agent:lite-usage").spent_micro == _want(MSG, 12)


async def test_plain_and_streamed_async_calls_are_charged_exactly(runtime, provider, llm):
    @protect_agent(agent_id="lite-async", budget_usd=1.0)
    async def agent() -> tuple[int, int]:
        await llm.acompletion(messages=MSG, max_tokens=5)
        stream = await llm.acompletion(messages=MSG, stream=True)
        pieces = [c async for c in stream]
        assert all(c.choices for c in pieces)
        s = current_session()
        return s.spent_micro, s.calls

    spent, calls = await agent()
    want = _want(MSG, 5) + _want(MSG, provider.reply_words)
    assert calls == 2 == len(provider.requests)
    assert spent == want == runtime.ledger.state("agent:lite-async").spent_micro


async def test_async_block_and_redaction(runtime, provider, llm):
    @protect_agent(agent_id="lite-async-tight", budget_usd=0.000001)
    async def broke():
        await llm.acompletion(messages=MSG)

    with pytest.raises(BudgetExceededError):
        await broke()
    assert provider.requests == []

    @protect_agent(agent_id="lite-async-redact")
    async def redacting():
        stream = await llm.acompletion(stream=True, messages=[
            {"role": "user", "content": "key sk-proj-abcdefghijklmnopqrstuvwxyz0123456789AB"}])
        return [c async for c in stream]

    await redacting()
    assert "[API_KEY_REDACTED]" in provider.requests[0]["messages"][0]["content"]
    assert runtime.ledger.state("agent:lite-async-redact").spent_micro > 0


def test_one_charge_per_request_with_the_openai_plugin_active(runtime, provider, llm):
    """openai is imported, so the openai-client plugin is active too; each request is
    still charged once (the litellm plugin governs, the inner layer stands back)."""

    @protect_agent(agent_id="lite-once")
    def agent() -> int:
        llm.completion(messages=MSG, max_tokens=3)
        list(llm.completion(messages=MSG, stream=True))
        return current_session().calls

    assert agent() == 2 == len(provider.requests)
    assert "iron_openai.wrappers" in sys.modules
    done = _events(runtime, "call_completed")
    assert [e["source"] for e in done] == ["litellm", "litellm"]
    assert runtime.ledger.state("agent:lite-once").spent_micro == (
        _want(MSG, 3) + _want(MSG, provider.reply_words))
    assert [r.calls for r in runtime.ledger.usage()] == [2]


def test_azure_path_through_the_openai_client_is_charged_once(runtime, provider):
    """litellm's Azure provider calls the official client's ``chat.completions.create``,
    which the openai plugin governs: without ``outer_governed`` this request would be
    charged twice."""
    handler = provider.server.RequestHandlerClass

    class AzurePaths(handler):  # the stand-in answers Azure's ?api-version= URLs too
        def do_POST(self) -> None:
            self.path = self.path.split("?", 1)[0]
            super().do_POST()

    provider.server.RequestHandlerClass = AzurePaths

    @protect_agent(agent_id="lite-azure")
    def agent():
        return litellm.completion(
            model="azure/gpt-4o-mini", api_base=provider.url.removesuffix("/v1"),
            api_version="2024-10-21", api_key=KEY, max_retries=0, messages=MSG, max_tokens=4)

    reply = agent()
    assert len(provider.requests) == 1 and provider.headers[0]["api-key"] == KEY  # Azure
    assert runtime.ledger.state("agent:lite-azure").spent_micro == expected_micro(
        "azure/gpt-4o-mini", reply.usage.model_dump())
    assert [e["source"] for e in _events(runtime, "call_completed")] == ["litellm"]


async def test_router_calls_are_governed_per_deployment_request(runtime, provider):
    router = litellm.Router(model_list=[{"model_name": "fast", "litellm_params": {
        "model": "openai/gpt-4o-mini", "api_base": provider.url, "api_key": KEY}}])
    messages = [{"role": "user", "content": "mail g@h.example"}]

    @protect_agent(agent_id="lite-router")
    async def agent() -> int:
        router.completion(model="fast", messages=messages, max_tokens=3)
        await router.acompletion(model="fast", messages=messages, max_tokens=3)
        return current_session().calls

    assert await agent() == 2 == len(provider.requests)
    assert {r["messages"][0]["content"] for r in provider.requests} == {
        "mail [EMAIL_REDACTED]"}
    redacted = [{"role": "user", "content": "mail [EMAIL_REDACTED]"}]
    assert runtime.ledger.state("agent:lite-router").spent_micro == 2 * _want(redacted, 3)


def test_outer_integration_governing_the_call_is_respected(runtime, provider, llm):
    @protect_agent(agent_id="lite-outer")
    def agent():
        with outer_governed():  # e.g. a LangChain/CrewAI plugin around litellm
            llm.completion(messages=MSG)
        return current_session().calls

    assert agent() == 0 and len(provider.requests) == 1


def test_outside_protected_functions_litellm_is_governed_all_the_same(runtime, provider, llm):
    instrument()
    reply = llm.completion(messages=[{"role": "user", "content": "mail a@b.example"}])
    assert reply.choices[0].message.content
    assert provider.requests[0]["messages"][0]["content"] == "mail [EMAIL_REDACTED]"
    runtime.flush()
    assert [row.agent_id for row in runtime.ledger.usage()] == ["unattributed"]


def test_reference_imported_before_activation_is_governed(runtime, provider):
    """``from litellm import completion`` at the top of a user module, before any
    protected function ran."""
    uninstrument()
    user_module = types.ModuleType("lite_user_agent")
    exec("from litellm import completion", user_module.__dict__)  # noqa: S102
    sys.modules["lite_user_agent"] = user_module
    try:
        @protect_agent(agent_id="lite-early-import")
        def agent():
            return user_module.completion(
                model="openai/gpt-4o-mini", api_base=provider.url, api_key=KEY,
                messages=[{"role": "user", "content": "mail c@d.example"}])

        agent()
    finally:
        del sys.modules["lite_user_agent"]
    assert provider.requests[0]["messages"][0]["content"] == "mail [EMAIL_REDACTED]"
    assert runtime.ledger.state("agent:lite-early-import").spent_micro > 0


def test_positional_args_history_objects_and_acompletion_flag(runtime, provider):
    @protect_agent(agent_id="lite-shapes")
    def agent():
        first = litellm.completion("openai/gpt-4o-mini", list(MSG), api_base=provider.url,
                                   api_key=KEY)
        history = [*MSG, first.choices[0].message,  # a litellm Message object
                   {"role": "user", "content": "and reach me at +44 20 7946 0958"}]
        return litellm.completion(model="openai/gpt-4o-mini", messages=history,
                                  api_base=provider.url, api_key=KEY)

    agent()
    assert provider.requests[1]["messages"][1]["role"] == "assistant"
    assert provider.requests[1]["messages"][2]["content"] == "and reach me at [PHONE_REDACTED]"
    assert runtime.ledger.state("agent:lite-shapes").spent_micro > 0


async def test_completion_with_acompletion_flag_is_governed(runtime, provider, llm):
    @protect_agent(agent_id="lite-flag")
    async def agent():
        await llm.completion(messages=MSG, acompletion=True)
        return current_session().calls

    assert await agent() == 1 == len(provider.requests)


def test_abandoned_stream_pays_for_what_was_streamed(runtime, provider, llm):
    @protect_agent(agent_id="lite-quitter")
    def agent() -> None:
        stream = llm.completion(messages=MSG, stream=True)
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()

    agent()
    event = _events(runtime, "call_completed")[0]
    assert event["stream"] is True and event["output_tokens"] > 0
    state = runtime.ledger.state("agent:lite-quitter")
    assert state.spent_micro > 0 and state.reserved_micro == 0


def test_provider_error_reaches_the_caller_and_releases(runtime, provider):
    class FailurePrices:
        @hookimpl
        def iron_model_price(self, model: str):
            return ModelPrice.per_mtok(1.0, 1.0) if "fail-" in model else None

    runtime.pm.register(FailurePrices())

    @protect_agent(agent_id="lite-unlucky", budget_usd=0.01)
    def agent():
        try:
            litellm.completion(model="openai/fail-500", messages=MSG, max_tokens=10,
                               api_base=provider.url, api_key=KEY, max_retries=0)
        finally:
            assert current_session().reserved_micro == 0

    with pytest.raises(litellm.exceptions.InternalServerError):
        agent()
    assert len(provider.requests) == 1
    assert runtime.ledger.state("agent:lite-unlucky").spent_micro == 0
    assert _events(runtime, "call_failed")[0]["source"] == "litellm"


def test_explicit_callback_without_automatic_activation(iron_home, provider, llm, callbacks):
    """No entry points (so no automatic activation): the user adds the callback."""
    uninstrument()
    litellm.callbacks[:] = [cb for cb in litellm.callbacks if not isinstance(cb, IronLiteLLM)]
    rt = Runtime(RuntimeConfig(home=iron_home, load_entry_points=False))
    previous = set_runtime(rt)
    try:
        @protect_agent(agent_id="lite-manual")
        def inside():
            return llm.completion(messages=MSG, max_tokens=2)

        inside()
        assert rt.ledger.state("agent:lite-manual").spent_micro == 0  # not activated

        callback = IronLiteLLM(agent_id="lite-explicit", budget_usd=0.00005)
        callbacks.append(callback)
        inside()  # inside a protected function: that function's session
        assert rt.ledger.state("agent:lite-manual").spent_micro == _want(MSG, 2)

        # Outside any protected function: the callback's own agent and budget.
        llm.completion(messages=[{"role": "user", "content": "mail e@f.example"}],
                       max_tokens=4)
        assert provider.requests[-1]["messages"][0]["content"] == "mail [EMAIL_REDACTED]"
        with pytest.raises(BudgetExceededError) as info:
            for _ in range(50):
                list(llm.completion(messages=MSG, stream=True, max_tokens=4))
        assert info.value.scope == "session:lite-explicit"
        rt.flush()
        state = rt.ledger.state("agent:lite-explicit")
        assert 0 < state.spent_micro == callback.session().spent_micro <= 50
        assert state.reserved_micro == 0
    finally:
        set_runtime(previous)
        rt.close()


def test_sdk_example_runs(tmp_path):
    env = {**os.environ, "IRON_HOME": str(tmp_path / "home")}
    env.pop("IRON_RUNTIME_URL", None)
    done = subprocess.run([sys.executable, "examples/litellm_sdk.py"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=180)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "provider received: Refund order 1234 for [EMAIL_REDACTED]" in out
    assert re.search(r"budget stop: session:litellm-bot", out)
    charged = [int(m) for m in re.findall(r"charged (\d+) µ\$", out)]
    assert charged and all(c > 0 for c in charged)
    assert re.search(r"ledger: agent:litellm-bot spent (\d+) µ\$", out)[1] == str(sum(charged))
