"""LangChain under iron-sdk: real LangChain models, chains and agents against the real
local stand-in provider, with the real runtime and SQLite ledger.

Spend is checked against the usage the stand-in reported for each request it received
(re-derived with its own counting), priced independently by ``tests.helpers``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from iron_langchain import IronCallbackHandler, IronMiddleware, governed
from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.utils import convert_to_openai_messages
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAI

from iron_sdk import (
    BudgetExceededError,
    IronCageError,
    SafetyConfig,
    SafetyViolationError,
    current_session,
    hookimpl,
    protect_agent,
)
from iron_sdk.policies.audit import read_events
from iron_sdk.pricing import ModelPrice
from iron_sdk.standin import StandInProvider
from tests.helpers import expected_micro

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-not-a-real-key"
PII = "Mail bob@corp.example about card 4111 1111 1111 1111."


# -- the stand-in's view --------------------------------------------------------------
def reported(provider: StandInProvider) -> list[tuple[str, dict[str, Any]]]:
    """(model, usage) the stand-in reported for each request it received, in order."""
    out = []
    for body in provider.requests:
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        words = len(provider.reply_text(cap))
        if "prompt" in body:  # legacy completions: one reply per prompt
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            usage = provider.usage({"messages": [{"content": str(p)} for p in prompts]},
                                   words * len(prompts))
        else:
            usage = provider.usage(body, words)
        out.append((body["model"], usage))
    return out


def want_micro(provider: StandInProvider) -> int:
    return sum(expected_micro(model, usage) for model, usage in reported(provider))


def events(runtime, type_: str) -> list[dict]:
    runtime.flush()
    return [e for e in read_events(runtime.config.home / "audit.jsonl") if e["type"] == type_]


def charged_once(runtime, provider: StandInProvider, agent: str, source: str) -> None:
    """Every request the stand-in saw is charged exactly once, for exactly its usage."""
    completed = events(runtime, "call_completed")
    assert len(completed) == len(provider.requests) > 0
    assert {e["source"] for e in completed} == {source}
    assert sorted((e["input_tokens"], e["output_tokens"]) for e in completed) == sorted(
        (u["prompt_tokens"], u["completion_tokens"]) for _, u in reported(provider))
    state = runtime.ledger.state(f"agent:{agent}")
    assert state.spent_micro == want_micro(provider) > 0
    assert state.reserved_micro == 0


# -- real LangChain objects -----------------------------------------------------------
class PlainHttpChat(BaseChatModel):
    """A chat model of some other provider: plain HTTP (httpx), not the openai client,
    so only the LangChain integration can govern it. Reports usage like providers do."""

    base_url: str
    model: str = "gpt-4o-mini"
    max_tokens: int | None = None

    @property
    def _llm_type(self) -> str:
        return "plain-http-chat"

    def _body(self, messages: list[BaseMessage], **extra: Any) -> dict[str, Any]:
        return {"model": self.model, "messages": convert_to_openai_messages(messages),
                "max_tokens": self.max_tokens, **extra}

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        r = httpx.post(f"{self.base_url}/chat/completions", json=self._body(messages))
        r.raise_for_status()
        data = r.json()
        usage = data["usage"]
        message = AIMessage(content=data["choices"][0]["message"]["content"], usage_metadata={
            "input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"]})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any):
        body = self._body(messages, stream=True, stream_options={"include_usage": True})
        with httpx.stream("POST", f"{self.base_url}/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                text = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else ""
                usage = chunk.get("usage")
                meta = {"input_tokens": usage["prompt_tokens"],
                        "output_tokens": usage["completion_tokens"],
                        "total_tokens": usage["total_tokens"]} if usage else None
                yield ChatGenerationChunk(message=AIMessageChunk(content=text or "",
                                                                 usage_metadata=meta))


@pytest.fixture
def chat(provider):
    return ChatOpenAI(model="gpt-4o-mini", base_url=provider.url, api_key=KEY, max_retries=0)


@pytest.fixture
def plain(provider):
    return PlainHttpChat(base_url=provider.url)


@pytest.fixture
def legacy(provider):
    return OpenAI(model="gpt-3.5-turbo-instruct", base_url=provider.url, api_key=KEY,
                  max_retries=0)


@pytest.fixture
def tool_provider(provider):
    """The stand-in, answering a user turn that offers tools with a call to the first one
    (usage reported as for any reply, so ``reported`` still holds)."""
    base = provider.server.RequestHandlerClass

    class ToolCalling(base):  # type: ignore[misc, valid-type]
        def _chat(self, body: dict[str, Any]) -> None:
            tools, messages = body.get("tools"), body.get("messages") or []
            if not tools or messages[-1].get("role") != "user":
                return super()._chat(body)
            words = len(self.owner.reply_text(body.get("max_completion_tokens")
                                              or body.get("max_tokens")))
            call = {"id": "call_1", "type": "function", "function": {
                "name": tools[0]["function"]["name"], "arguments": '{"order_id": "A-17"}'}}
            self._json(200, {
                "id": "chatcmpl-standin", "object": "chat.completion", "created": 0,
                "model": body["model"], "usage": self.owner.usage(body, words),
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": None, "tool_calls": [call]}}]})

    provider.server.RequestHandlerClass = ToolCalling
    return provider


LOOKUPS: list[str] = []


@tool
def lookup_order(order_id: str) -> str:
    """Look up the status of an order."""
    LOOKUPS.append(order_id)
    return f"order {order_id} shipped"


# -- one charge per request, exact ----------------------------------------------------
def test_chat_openai_is_charged_once_by_the_client_plugin(runtime, provider, chat):
    @protect_agent(agent_id="lc-invoke")
    def agent() -> str:
        return chat.invoke("Say hello to the ledger.").content

    assert agent()
    assert len(provider.requests) == 1
    charged_once(runtime, provider, "lc-invoke", source="openai")


def test_stream_batch_and_chain_are_charged_exactly(runtime, provider, chat):
    chain = (ChatPromptTemplate.from_messages([("system", "Be brief."), ("user", "{q}")])
             | chat | StrOutputParser())

    @protect_agent(agent_id="lc-mixed")
    def agent() -> tuple[str, list[str], str]:
        streamed = "".join(c.content for c in chat.stream("Stream a line."))
        batched = [m.content for m in chat.batch(["one", "two", "three"])]
        return streamed, batched, chain.invoke({"q": "What is a ledger?"})

    streamed, batched, answer = agent()
    assert streamed and len(batched) == 3 and answer
    assert provider.requests[0]["stream_options"] == {"include_usage": True}
    assert provider.requests[-1]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert len(provider.requests) == 5
    charged_once(runtime, provider, "lc-mixed", source="openai")


async def test_async_invoke_stream_and_batch(runtime, provider, chat):
    @protect_agent(agent_id="lc-async")
    async def agent() -> float:
        await chat.ainvoke("hello")
        async for _ in chat.astream("stream"):
            pass
        await chat.abatch(["a", "b"])
        return current_session().spent_usd

    spent = await agent()
    assert len(provider.requests) == 4
    charged_once(runtime, provider, "lc-async", source="openai")
    assert round(spent * 1e6) == want_micro(provider)


def test_other_models_are_governed_by_the_handler(runtime, provider, plain):
    @protect_agent(agent_id="lc-plain")
    def agent() -> None:
        plain.invoke("hello")
        assert "".join(c.content for c in plain.stream("stream please"))
        plain.batch(["x", "y"])

    agent()
    assert len(provider.requests) == 4
    charged_once(runtime, provider, "lc-plain", source="langchain")
    assert [e["stream"] for e in events(runtime, "call_completed")].count(True) == 1


async def test_other_models_async(runtime, provider, plain):
    @protect_agent(agent_id="lc-plain-async")
    async def agent() -> None:
        await plain.ainvoke("hello")
        async for _ in plain.astream("stream please"):
            pass

    await agent()
    charged_once(runtime, provider, "lc-plain-async", source="langchain")


def test_abandoned_stream_pays_for_what_was_streamed(runtime, provider, plain):
    @protect_agent(agent_id="lc-quitter")
    def agent() -> None:
        for i, _ in enumerate(plain.stream("stream please")):
            if i == 3:
                break

    agent()
    [event] = events(runtime, "call_completed")
    assert event["usage_counted"] is True and 0 < event["output_tokens"] < provider.reply_words
    state = runtime.ledger.state("agent:lc-quitter")
    assert state.spent_micro > 0 and state.reserved_micro == 0


def test_legacy_llm_is_charged(runtime, provider, legacy):
    @protect_agent(agent_id="lc-legacy")
    def agent() -> list[str]:
        return [legacy.invoke("Complete this"), *legacy.batch(["first", "second"])]

    assert len(agent()) == 3
    assert [r["prompt"] for r in provider.requests] == [["Complete this"], ["first", "second"]]
    state = runtime.ledger.state("agent:lc-legacy")
    assert state.spent_micro == want_micro(provider) > 0 and state.reserved_micro == 0
    completed = events(runtime, "call_completed")
    # Built on the openai client: that plugin governs (and redacts) it, once per request.
    assert {e["source"] for e in completed} == {"openai"}
    assert sum(e["cost_micro"] for e in completed) == want_micro(provider)


class FailurePrices:
    """Prices the stand-in's ``fail-<status>`` models, so their calls are allowed."""

    @hookimpl
    def iron_model_price(self, model):
        return ModelPrice.per_mtok(1.0, 2.0) if model.startswith("fail-") else None


@pytest.mark.parametrize("wrap", [False, True])
def test_provider_error_releases_the_reservation(runtime, provider, wrap):
    runtime.pm.register(FailurePrices())
    model = PlainHttpChat(base_url=provider.url, model="fail-500")

    @protect_agent(agent_id=f"lc-fails-{wrap}")
    def agent() -> Any:
        return (governed(model) if wrap else model).invoke("hello")

    with pytest.raises(httpx.HTTPStatusError):
        agent()
    assert len(provider.requests) == 1
    state = runtime.ledger.state(f"agent:lc-fails-{wrap}")
    assert state.reserved_micro == 0 and state.spent_micro == 0
    assert [e["source"] for e in events(runtime, "call_failed")] == ["langchain"]


# -- blocked before anything is sent ---------------------------------------------------
def _agent(model: Any, **kwargs: Any) -> Any:
    return create_agent(model, tools=[lookup_order], **kwargs)


CALLS = {
    "chat_openai_invoke": lambda p: ChatOpenAI(model="gpt-4o", base_url=p.url, api_key=KEY,
                                               max_retries=0).invoke("hi"),
    "chat_openai_stream": lambda p: list(ChatOpenAI(model="gpt-4o", base_url=p.url,
                                                    api_key=KEY, max_retries=0).stream("hi")),
    "other_model": lambda p: PlainHttpChat(base_url=p.url, model="gpt-4o").invoke("hi"),
    "legacy_llm_batch": lambda p: OpenAI(model="gpt-3.5-turbo-instruct", base_url=p.url,
                                         api_key=KEY, max_retries=0).batch(["a", "b"]),
    "governed_stream": lambda p: list(governed(ChatOpenAI(
        model="gpt-4o", base_url=p.url, api_key=KEY, max_retries=0)).stream("hi")),
    "agent_middleware": lambda p: _agent(ChatOpenAI(
        model="gpt-4o", base_url=p.url, api_key=KEY, max_retries=0),
        middleware=[IronMiddleware()]).invoke({"messages": [HumanMessage("hi")]}),
}


@pytest.mark.parametrize("path", CALLS)
def test_budget_stop_raises_the_typed_error_before_sending(runtime, provider, path):
    @protect_agent(agent_id=f"broke-{path}", budget_usd=0.000001)
    def agent() -> Any:
        return CALLS[path](provider)

    with pytest.raises(BudgetExceededError) as info:
        agent()
    assert type(info.value) is BudgetExceededError  # the iron error itself, not wrapped
    assert provider.requests == []
    assert runtime.ledger.state(f"agent:broke-{path}").reserved_micro == 0


def test_legacy_batch_refused_midway_releases_the_started_prompt(runtime, provider, legacy):
    runtime.ledger.set_limit("agent:lc-half", 700)  # one prompt's reservation fits, not two

    @protect_agent(agent_id="lc-half")
    def agent() -> Any:
        return legacy.batch(["first", "second"])

    with pytest.raises(BudgetExceededError):
        agent()
    assert provider.requests == []
    state = runtime.ledger.state("agent:lc-half")
    assert state.reserved_micro == 0 and state.spent_micro == 0


@pytest.mark.parametrize("path", ["chat_openai_invoke", "other_model", "agent_middleware"])
def test_safety_block_sends_nothing(runtime, provider, path):
    @protect_agent(agent_id=f"strict-{path}", safety=SafetyConfig(pii="block"))
    def agent() -> Any:
        model = ChatOpenAI(model="gpt-4o-mini", base_url=provider.url, api_key=KEY,
                           max_retries=0)
        if path == "other_model":
            return PlainHttpChat(base_url=provider.url).invoke("My SSN is 123-45-6789")
        if path == "agent_middleware":
            return _agent(model, middleware=[IronMiddleware()]).invoke(
                {"messages": [HumanMessage("My SSN is 123-45-6789")]})
        return model.invoke("My SSN is 123-45-6789")

    with pytest.raises(SafetyViolationError) as info:
        agent()
    assert info.value.kinds == ["ssn"] and "123-45-6789" not in str(info.value)
    assert provider.requests == []


# -- redaction --------------------------------------------------------------------------
def _assert_redacted(text: str) -> None:
    assert "bob@corp.example" not in text and "4111" not in text
    assert "[EMAIL_REDACTED]" in text and "[CREDIT_CARD_REDACTED]" in text


def test_chat_openai_is_redacted_at_the_client(runtime, provider, chat):
    @protect_agent(agent_id="lc-redact")
    def agent() -> None:
        chat.invoke([("system", "You are helpful."), ("user", PII)])

    agent()
    _assert_redacted(provider.requests[0]["messages"][1]["content"])
    assert provider.requests[0]["messages"][0]["content"] == "You are helpful."


def test_callbacks_cannot_redact_so_the_handler_refuses(runtime, provider, plain):
    @protect_agent(agent_id="lc-no-redact")
    def agent() -> None:
        plain.invoke(PII)

    with pytest.raises(SafetyViolationError) as info:
        agent()
    assert "governed(model)" in str(info.value) and "bob@corp.example" not in str(info.value)
    assert provider.requests == []
    assert runtime.ledger.state("agent:lc-no-redact").reserved_micro == 0
    runtime.flush()
    events = read_events(runtime.config.home / "audit.jsonl")
    found = [e for e in events if e["type"] == "pii_detected"]
    assert found and found[0]["action"] == "block"
    assert [e["reason"] for e in events if e["type"] == "call_blocked"] == ["safety_violation"]


@pytest.mark.parametrize("inner", ["plain", "chat_openai"])
def test_governed_model_redacts_and_charges_once(runtime, provider, inner):
    base = (PlainHttpChat(base_url=provider.url) if inner == "plain" else
            ChatOpenAI(model="gpt-4o-mini", base_url=provider.url, api_key=KEY,
                       max_retries=0))
    model = governed(base)
    original = HumanMessage(PII)

    @protect_agent(agent_id=f"lc-governed-{inner}")
    def agent() -> str:
        reply = model.invoke([original]).content
        streamed = "".join(c.content for c in model.stream([original]))
        return reply + streamed

    assert agent()
    assert len(provider.requests) == 2
    for body in provider.requests:
        _assert_redacted(body["messages"][0]["content"])
    assert original.content == PII  # the caller's message is left alone
    if inner == "chat_openai":  # asked for the usage chunk: exact, not counted
        assert provider.requests[1]["stream_options"] == {"include_usage": True}
    charged_once(runtime, provider, f"lc-governed-{inner}", source="langchain")


async def test_governed_model_async(runtime, provider, chat):
    model = governed(chat)

    @protect_agent(agent_id="lc-governed-async")
    async def agent() -> None:
        await model.ainvoke(PII)
        async for _ in model.astream(PII):
            pass

    await agent()
    for body in provider.requests:
        _assert_redacted(body["messages"][0]["content"])
    charged_once(runtime, provider, "lc-governed-async", source="langchain")


def test_governed_model_in_a_chain(runtime, provider, plain):
    chain = ChatPromptTemplate.from_template("Summarise: {text}") | governed(plain) | \
        StrOutputParser()

    @protect_agent(agent_id="lc-governed-chain")
    def agent() -> str:
        return chain.invoke({"text": PII})

    assert agent()
    _assert_redacted(provider.requests[0]["messages"][0]["content"])
    charged_once(runtime, provider, "lc-governed-chain", source="langchain")


def test_governed_model_can_be_priced_as_another_model(runtime, provider, plain):
    model = governed(plain, price_as="gpt-4o")  # e.g. a private deployment of gpt-4o

    @protect_agent(agent_id="lc-price-as")
    def agent() -> None:
        model.invoke("hello")

    agent()
    [(_, usage)] = reported(provider)
    assert [e["model"] for e in events(runtime, "call_completed")] == ["gpt-4o"]
    assert runtime.ledger.state("agent:lc-price-as").spent_micro == expected_micro(
        "gpt-4o", usage)


# -- agents -----------------------------------------------------------------------------
def test_agent_with_tool_audits_the_tool_and_charges_the_model(runtime, tool_provider):
    provider = tool_provider
    model = ChatOpenAI(model="gpt-4o-mini", base_url=provider.url, api_key=KEY, max_retries=0)
    agent_graph = _agent(model, system_prompt="You track orders.")
    LOOKUPS.clear()

    @protect_agent(agent_id="lc-agent")
    def agent() -> list[BaseMessage]:
        return agent_graph.invoke({"messages": [HumanMessage("Where is order A-17?")]})[
            "messages"]

    messages = agent()
    assert LOOKUPS == ["A-17"]
    assert messages[-1].content and messages[2].type == "tool"
    tools = events(runtime, "tool_called")
    assert [(t["tool"], t["outcome"], t["source"]) for t in tools] == [
        ("lookup_order", "completed", "langchain")]
    assert len(provider.requests) == 2  # tool call, then the answer
    charged_once(runtime, provider, "lc-agent", source="openai")


async def test_agent_middleware_redacts_and_charges_once(runtime, tool_provider):
    provider = tool_provider
    model = ChatOpenAI(model="gpt-4o-mini", base_url=provider.url, api_key=KEY, max_retries=0)
    agent_graph = _agent(model, system_prompt="Escalate to ops@corp.example.",
                         middleware=[IronMiddleware()])

    @protect_agent(agent_id="lc-mw")
    async def agent() -> list[BaseMessage]:
        out = await agent_graph.ainvoke({"messages": [HumanMessage(PII)]})
        return out["messages"]

    messages = await agent()
    assert messages[0].content == PII  # the agent's own state keeps the original
    assert len(provider.requests) == 2
    for body in provider.requests:
        system, user = body["messages"][0]["content"], body["messages"][1]["content"]
        assert system == "Escalate to [EMAIL_REDACTED]."
        _assert_redacted(user)
    assert [t["tool"] for t in events(runtime, "tool_called")] == ["lookup_order"]
    charged_once(runtime, provider, "lc-mw", source="langchain")


# -- explicit handler, outside protected functions --------------------------------------
def test_explicit_handler_governs_without_protect_agent(runtime, provider, chat):
    with IronCallbackHandler(agent_id="lc-explicit") as handler:
        config = {"callbacks": [handler]}
        chat.invoke("hello", config=config)
        lookup_order.invoke({"order_id": "B-2"}, config=config)
        assert handler.session is not None and handler.session.calls == 1
    # ChatOpenAI: the openai-client plugin charges it, to the handler's agent.
    charged_once(runtime, provider, "lc-explicit", source="openai")
    assert [t["tool"] for t in events(runtime, "tool_called")] == ["lookup_order"]

    with IronCallbackHandler(agent_id="lc-explicit-broke", budget_usd=0.000001) as broke, \
            pytest.raises(BudgetExceededError):
        chat.invoke("hello", config={"callbacks": [broke]})
    assert len(provider.requests) == 1


def test_outside_protected_functions_the_client_plugin_still_governs(runtime, provider, chat,
                                                                     plain):
    chat.invoke(PII)  # ChatOpenAI: the openai client is governed in the outside session
    plain.invoke(PII)  # a raw HTTP model: no handler is attached outside sessions
    assert len(provider.requests) == 2
    _assert_redacted(provider.requests[0]["messages"][0]["content"])
    assert PII in json.dumps(provider.requests[1])
    [done] = events(runtime, "call_completed")
    assert done["agent_id"] == "unattributed" and done["source"] == "openai"


def test_importing_the_plugin_does_not_import_langchain():
    code = ("import sys, iron_sdk, iron_langchain, iron_langchain.plugin; "
            "print([m for m in sys.modules if m.startswith('langchain')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# -- examples ---------------------------------------------------------------------------
@pytest.mark.parametrize(("script", "expect"), [
    ("langchain_chain.py", ["spent $", "[EMAIL_REDACTED]", "BudgetExceededError",
                            "requests reached the provider: 0"]),
    ("langchain_agent.py", ["tool_called: lookup_order", "spent $", "[EMAIL_REDACTED]",
                            "BudgetExceededError", "requests reached the provider: 0"]),
])
def test_examples_run_offline(script, expect, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("IRON_HOME", "IRON_RUNTIME_URL")}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script)], env=env,
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for text in expect:
        assert text in out.stdout, (text, out.stdout)


def test_a_plugin_can_refuse_a_tool_before_it_runs(runtime, tool_provider):
    class NoOrders(IronCageError):
        code = "no_orders"

    class Refuse:
        @hookimpl
        def iron_tool_request(self, call):
            if call.name == "lookup_order":
                raise NoOrders("order lookups are not allowed for this agent")

    runtime.pm.register(Refuse())
    model = ChatOpenAI(model="gpt-4o-mini", base_url=tool_provider.url, api_key=KEY,
                       max_retries=0)
    LOOKUPS.clear()

    @protect_agent(agent_id="lc-no-tools")
    def agent() -> Any:
        return _agent(model).invoke({"messages": [HumanMessage("Where is order A-17?")]})

    with pytest.raises(NoOrders):
        agent()
    assert LOOKUPS == [] and len(tool_provider.requests) == 1


def test_chat_openai_on_the_responses_api_is_charged_once(runtime, provider):
    chat = ChatOpenAI(model="gpt-4o-mini", base_url=provider.url, api_key=KEY, max_retries=0,
                      use_responses_api=True)

    @protect_agent(agent_id="lc-responses")
    def agent() -> None:
        chat.invoke("reach me at eve@example.com")
        "".join(str(c.content) for c in chat.stream("and stream"))

    agent()
    assert len(provider.requests) == 2
    assert "[EMAIL_REDACTED]" in json.dumps(provider.requests[0]["input"])
    completed = events(runtime, "call_completed")
    assert [(e["source"], e["usage_counted"]) for e in completed] == [("openai", False)] * 2
    assert runtime.ledger.state("agent:lc-responses").spent_micro == sum(
        expected_micro("gpt-4o-mini", {"prompt_tokens": e["input_tokens"],
                                       "completion_tokens": e["output_tokens"]})
        for e in completed) > 0
