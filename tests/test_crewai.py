"""CrewAI under @protect_agent: real Agent/Task/Crew objects and CrewAI LLMs against the
real local stand-in provider, the real runtime and SQLite ledger — no hook, callback or
wrapper in the crew's code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

import openai
import pytest
from crewai import LLM, Agent, Crew, Task
from crewai.llms.base_llm import BaseLLM
from crewai.tools import tool
from iron_crewai import llm as crew_llm
from iron_crewai.install import instrument, uninstrument

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
from iron_sdk.standin import WORDS, StandInProvider, _Handler, prompt_tokens
from iron_sdk.tokens import count_text
from tests.helpers import expected_micro

ROOT = Path(__file__).resolve().parents[1]
MODEL = "gpt-4o-mini"
KEY = "sk-test-not-a-real-key"
EMAIL = "jane.doe@example.com"
REPLY = " ".join(WORDS)  # the stand-in's 12-word answer
TOOL_TOKENS = 7  # completion tokens the scripted stand-in reports for a tool call


def _tool_turn(body: dict[str, Any]) -> bool:
    """The scripted stand-in asks for a tool when tools are offered and none ran yet."""
    return bool(body.get("tools")) and not any(
        m.get("role") == "tool" for m in body.get("messages", []))


class _ScriptedHandler(_Handler):
    """The stand-in's handler, answering a tool turn with a call of the first tool."""

    def _chat(self, body: dict[str, Any]) -> None:
        if not _tool_turn(body):
            return super()._chat(body)
        fn = body["tools"][0]["function"]
        args = {name: "Paris" for name in fn["parameters"]["properties"]}
        self._json(200, {
            "id": "chatcmpl-standin", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": None, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": fn["name"], "arguments": json.dumps(args)}}]}}],
            "usage": self.owner.usage(body, TOOL_TOKENS),
        })
        return None


@pytest.fixture(scope="module")
def standin():  # noqa: ANN201
    with StandInProvider() as provider:
        class Handler(_ScriptedHandler):
            owner = provider

        provider.server.RequestHandlerClass = Handler
        yield provider


@pytest.fixture
def stand(standin):  # noqa: ANN201
    """The module's stand-in with a fresh request log."""
    standin.requests.clear()
    standin.stream_usage = True
    yield standin
    standin.stream_usage = True


def _crew(llm: LLM, description: str, tools: tuple = (),
          stream: bool = False) -> tuple[Agent, Crew]:
    agent = Agent(role="Greeter", goal="Greet people.", backstory="A friendly greeter.",
                  llm=llm, tools=list(tools), verbose=False)
    task = Task(description=description, expected_output="A short greeting.", agent=agent)
    return agent, Crew(agents=[agent], tasks=[task], verbose=False, stream=stream)


@pytest.fixture(scope="module")
def parts(standin):  # noqa: ANN201
    """CrewAI objects built once (crewai is slow to build); every run reuses them."""
    ran: list[str] = []

    @tool("weather")
    def weather(city: str) -> str:
        """Current weather in a city."""
        ran.append(city)
        return f"Sunny in {city}"

    llm = LLM(model=MODEL, base_url=standin.url, api_key=KEY)
    stream_llm = LLM(model=MODEL, base_url=standin.url, api_key=KEY, stream=True)
    _, crew = _crew(llm, "Say hello to the ledger.")
    pii_agent, pii_crew = _crew(llm, f"Say hello to {EMAIL}.")
    _, stream_crew = _crew(stream_llm, "Say hello to the stream.")
    _, tool_crew = _crew(llm, "What is the weather in Paris?", tools=(weather,))
    # Crew(stream=True) turns streaming on for its agents' LLM: it gets an LLM of its own.
    _, streaming_crew = _crew(LLM(model=MODEL, base_url=standin.url, api_key=KEY),
                              "Say hello as you go.", stream=True)
    return types.SimpleNamespace(llm=llm, crew=crew, pii_agent=pii_agent, pii_crew=pii_crew,
                                 stream_crew=stream_crew, streaming_crew=streaming_crew,
                                 tool_crew=tool_crew, ran=ran)


class HomeMadeLLM(BaseLLM):
    """A user's own CrewAI LLM class: calls its provider with the openai client and
    reports no usage to CrewAI."""

    base_url: str = ""

    def call(self, messages: Any, tools: Any = None, callbacks: Any = None,
             available_functions: Any = None, from_task: Any = None, from_agent: Any = None,
             response_model: Any = None) -> str:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        client = openai.OpenAI(base_url=self.base_url, api_key=KEY, max_retries=0)
        reply = client.chat.completions.create(model=self.model, messages=messages)
        return reply.choices[0].message.content


def _events(runtime, type_: str) -> list[dict]:
    runtime.flush()  # audit lines are written by a background batcher
    return [e for e in read_events(runtime.config.home / "audit.jsonl") if e["type"] == type_]


def _want(bodies: list[dict[str, Any]]) -> int:
    """Price of what the stand-in reported for these requests, from the price file."""
    return sum(expected_micro(b["model"], {
        "prompt_tokens": prompt_tokens(b["messages"]),
        "completion_tokens": TOOL_TOKENS if _tool_turn(b) else len(WORDS)}) for b in bodies)


def test_crew_spend_is_exact_and_each_request_charged_once(runtime, stand, parts):
    from openai.resources.chat.completions import Completions

    @protect_agent(agent_id="crew-spend")
    def run() -> tuple[Any, int, int]:
        out = parts.crew.kickoff()
        s = current_session()
        return out, s.spent_micro, s.calls

    out, spent, calls = run()
    assert out.raw == REPLY
    # CrewAI's native OpenAI provider sent it through the openai client, which the openai
    # plugin had instrumented: it passed the request through instead of charging it again.
    assert hasattr(Completions.create, "__wrapped__")
    assert len(stand.requests) == calls == 1
    completed = _events(runtime, "call_completed")
    assert [(e["source"], e["outcome"]) for e in completed] == [("crewai", "completed")]
    want = _want(stand.requests)
    assert spent == want > 0
    assert runtime.ledger.state("agent:crew-spend").spent_micro == want
    assert runtime.ledger.state("agent:crew-spend").reserved_micro == 0
    assert completed[0]["input_tokens"] == prompt_tokens(stand.requests[0]["messages"])


@pytest.mark.parametrize("case", ["budget", "safety"])
def test_refused_call_raises_typed_error_from_kickoff_and_never_leaves(runtime, stand, parts,
                                                                        case):
    if case == "budget":
        opts: dict[str, Any] = {"budget_usd": 0.000001}
        crew, error = parts.crew, BudgetExceededError
    else:
        opts = {"safety": SafetyConfig(pii="block")}
        crew, error = parts.pii_crew, SafetyViolationError

    @protect_agent(agent_id=f"crew-{case}", **opts)
    def run() -> Any:
        return crew.kickoff()

    with pytest.raises(error) as info:
        run()
    assert stand.requests == []  # blocked before it was sent, and CrewAI did not retry
    assert len(_events(runtime, "call_blocked")) == 1
    state = runtime.ledger.state(f"agent:crew-{case}")
    assert state.spent_micro == state.reserved_micro == 0
    if case == "budget":
        assert info.value.scope == "session:crew-budget"
        assert info.value.to_body()["error"]["code"] == "budget_exceeded"
    else:
        assert info.value.kinds == ["email"]


def test_redacted_prompt_reaches_the_provider_and_stays_in_the_history(runtime, stand, parts):
    @protect_agent(agent_id="crew-redact")
    def run() -> Any:
        return parts.pii_crew.kickoff()

    run()
    sent = json.dumps(stand.requests)
    assert EMAIL not in sent and "[EMAIL_REDACTED]" in sent
    history = json.dumps(parts.pii_agent.agent_executor.messages)
    assert EMAIL not in history and "[EMAIL_REDACTED]" in history
    assert [e["action"] for e in _events(runtime, "pii_detected")] == ["redact"]
    assert EMAIL not in (runtime.config.home / "audit.jsonl").read_text()
    assert runtime.ledger.state("agent:crew-redact").spent_micro == _want(stand.requests)


@pytest.mark.parametrize(("streaming", "usage_chunk"), [
    ("llm", True), ("llm", False), ("crew", True)],
    ids=["llm-stream", "llm-stream-no-usage", "crew-stream"])
def test_streamed_crew_calls_are_charged(runtime, stand, parts, streaming, usage_chunk):
    stand.stream_usage = usage_chunk

    @protect_agent(agent_id="crew-stream")
    def run() -> str:
        if streaming == "llm":  # LLM(stream=True)
            return parts.stream_crew.kickoff().raw
        out = parts.streaming_crew.kickoff()  # Crew(stream=True): chunks as they come
        assert "".join(chunk.content for chunk in out) == REPLY
        return out.result.raw

    assert run() == REPLY
    (body,) = stand.requests
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    (event,) = _events(runtime, "call_completed")
    if usage_chunk:
        want = _want(stand.requests)
        assert not event["usage_counted"]
    else:  # no usage chunk: the streamed text is counted
        assert event["usage_counted"]
        assert event["output_tokens"] == count_text(MODEL, REPLY)
        want = expected_micro(MODEL, {"prompt_tokens": event["input_tokens"],
                                      "completion_tokens": count_text(MODEL, REPLY)})
    assert runtime.ledger.state("agent:crew-stream").spent_micro == want > 0


@pytest.mark.parametrize("method", ["akickoff", "kickoff_async"])
async def test_async_kickoff_is_governed(runtime, stand, parts, method):
    @protect_agent(agent_id=f"crew-{method}")
    async def run() -> tuple[Any, int]:
        out = await getattr(parts.crew, method)()
        return out, current_session().calls

    out, calls = await run()
    assert out.raw == REPLY
    assert calls == len(stand.requests) == 1
    assert [e["source"] for e in _events(runtime, "call_completed")] == ["crewai"]
    assert runtime.ledger.state(f"agent:crew-{method}").spent_micro == _want(stand.requests)


def test_tool_use_is_audited_and_every_model_call_charged(runtime, stand, parts):
    parts.ran.clear()

    @protect_agent(agent_id="crew-tools")
    def run() -> tuple[Any, int]:
        return parts.tool_crew.kickoff(), current_session().calls

    out, calls = run()
    assert out.raw == REPLY
    assert parts.ran == ["Paris"]
    assert calls == len(stand.requests) == 2  # the tool call, then the answer
    assert stand.requests[1]["messages"][-1]["content"] == "Sunny in Paris"
    tools = _events(runtime, "tool_called")
    assert [(t["tool"], t["outcome"], t["source"], t["agent_id"]) for t in tools] == [
        ("weather", "completed", "crewai", "crew-tools")]
    assert runtime.ledger.state("agent:crew-tools").spent_micro == _want(stand.requests)


def test_tool_refused_by_a_plugin_is_not_run_and_is_audited(runtime, stand, parts):
    class NoTools:
        @hookimpl
        def iron_tool_request(self, call) -> None:  # noqa: ANN001
            raise IronCageError(f"tool '{call.name}' is not allowed for this agent")

    runtime.pm.register(NoTools())
    parts.ran.clear()

    @protect_agent(agent_id="crew-no-tools")
    def run() -> Any:
        return parts.tool_crew.kickoff()

    assert run().raw == REPLY  # CrewAI tells the agent the tool was blocked and goes on
    assert parts.ran == []
    assert "blocked" in stand.requests[1]["messages"][-1]["content"]
    tools = _events(runtime, "tool_called")
    assert [(t["tool"], t["outcome"]) for t in tools] == [("weather", "failed")]


@pytest.mark.parametrize("route", ["native", "litellm"])
def test_direct_llm_call_is_governed_once_on_either_route(runtime, stand, parts, route):
    if route == "native":
        llm = parts.llm
    else:
        llm = LLM(model=MODEL, is_litellm=True, base_url=stand.url, api_key=KEY)
        assert type(llm) is LLM  # CrewAI's LiteLLM fallback, not the native provider

    @protect_agent(agent_id=f"llm-{route}")
    def run() -> str:
        return llm.call(f"Write to {EMAIL}.")

    assert run() == REPLY
    (body,) = stand.requests
    assert body["messages"] == [{"role": "user", "content": "Write to [EMAIL_REDACTED]."}]
    assert [e["source"] for e in _events(runtime, "call_completed")] == ["crewai"]
    assert runtime.ledger.state(f"agent:llm-{route}").spent_micro == _want(stand.requests)
    llm.call("Outside any protected function.")  # governed in the outside session
    completed = _events(runtime, "call_completed")
    assert len(stand.requests) == 2 and len(completed) == 2
    assert completed[-1]["agent_id"] == "unattributed"


@pytest.mark.parametrize("via", ["crew", "direct"])
def test_custom_llm_class_is_governed_and_charged_once(runtime, stand, via):
    llm = HomeMadeLLM(model=MODEL, base_url=stand.url)
    _, crew = _crew(llm, f"Say hello to {EMAIL}.")

    @protect_agent(agent_id=f"custom-{via}")
    def run() -> Any:
        return crew.kickoff().raw if via == "crew" else llm.call(f"Say hello to {EMAIL}.")

    assert run() == REPLY
    assert len(stand.requests) == 1 and EMAIL not in json.dumps(stand.requests)
    (event,) = _events(runtime, "call_completed")  # not charged again by the openai plugin
    assert event["source"] == "crewai" and event["usage_counted"]
    assert event["output_tokens"] == count_text(MODEL, REPLY)  # no usage came: counted
    assert runtime.ledger.state(f"agent:custom-{via}").spent_micro == event["cost_micro"] > 0


def test_failed_provider_call_releases_its_reservation(runtime, stand):
    class FailurePrices:  # prices the stand-in's failing model
        @hookimpl
        def iron_model_price(self, model: str) -> ModelPrice | None:
            return ModelPrice.per_mtok(1.0, 1.0) if model.startswith("fail-") else None

    runtime.pm.register(FailurePrices())
    llm = LLM(model="fail-500", base_url=stand.url, api_key=KEY, max_retries=0)

    @protect_agent(agent_id="crew-fail", budget_usd=0.01)
    def run() -> None:
        try:
            llm.call("Hello?")
        finally:
            assert current_session().reserved_micro == 0

    with pytest.raises(Exception, match="500"):
        run()
    assert len(stand.requests) == 1
    state = runtime.ledger.state("agent:crew-fail")
    assert state.spent_micro == state.reserved_micro == 0
    assert [e["source"] for e in _events(runtime, "call_failed")] == ["crewai"]


def test_executor_built_before_the_plugin_attached_is_still_governed(runtime, stand, parts):
    agent, crew = _crew(parts.llm, f"Say hello to {EMAIL} again.")
    uninstrument()
    try:
        crew.kickoff()  # unprotected: CrewAI builds this agent's executor without our hook
    finally:
        instrument()
    assert crew_llm.before_llm_call not in agent.agent_executor.before_llm_call_hooks
    stand.requests.clear()

    @protect_agent(agent_id="crew-late")
    def run() -> Any:
        return crew.kickoff()

    run()
    assert EMAIL not in json.dumps(stand.requests)
    assert [e["source"] for e in _events(runtime, "call_completed")
            if e["agent_id"] == "crew-late"] == ["crewai"]
    assert runtime.ledger.state("agent:crew-late").spent_micro == _want(stand.requests)

    @protect_agent(agent_id="crew-late-tight", budget_usd=0.000001)
    def tight() -> Any:
        return crew.kickoff()

    with pytest.raises(BudgetExceededError):
        tight()
    assert len(stand.requests) == 1


def test_crewai_example_runs_offline(tmp_path):
    env = {**os.environ, "IRON_HOME": str(tmp_path / "home")}
    env.pop("IRON_RUNTIME_URL", None)
    done = subprocess.run([sys.executable, "examples/crewai_crew.py"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=180)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "provider received: Write a welcome note for [EMAIL_REDACTED]" in out
    assert "ann.lee@example.com" not in out.split("provider received:")[1]
    spent = re.search(r"crew spent \$(\d+\.\d+) for (\d+) model calls", out)
    assert spent and float(spent[1]) > 0 and int(spent[2]) >= 1
    assert re.search(r"budget stop: BudgetExceededError session:newsletter-crew", out)
    assert re.search(r"provider saw (\d+) requests", out)


def test_import_iron_sdk_and_the_entry_point_do_not_import_crewai(tmp_path):
    # Opening a session loads every entry point, this plugin's included.
    code = ("import sys, iron_sdk, iron_crewai.plugin\n"
            "light = 'crewai' not in sys.modules\n"
            "iron_sdk.get_runtime().open_session('no-crewai')\n"
            "print(light, 'crewai' in sys.modules)")
    env = {**os.environ, "IRON_HOME": str(tmp_path / "home")}
    env.pop("IRON_RUNTIME_URL", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT, env=env)
    assert out.stdout.split() == ["True", "False"]
