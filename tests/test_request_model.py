"""One request model, one meter, one plugin API (issue 7).

Unit tests of :func:`iron_sdk.request.read_request` on every request shape, then the
same bodies in library and HTTP mode (the real router process, the real openai client,
the real stand-in provider), then door 3 (the router's OpenAI-compatible API).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from iron_sdk import (
    BudgetExceededError,
    InvalidRequestError,
    Runtime,
    RuntimeConfig,
    hookimpl,
    protect_agent,
    set_runtime,
)
from iron_sdk.config import ModelPriceConfig
from iron_sdk.identity import issue_token
from iron_sdk.ledger import SQLiteLedger
from iron_sdk.policies.audit import read_events
from iron_sdk.remote import RemoteRuntime
from iron_sdk.request import read_request
from tests.helpers import expected_micro
from tests.router_util import RouterProcess, wait_until
from tests.test_http_mode import PRICES, router  # noqa: F401 - the module's router fixture
from tests.test_router import provider_env, settled

EMAIL = "jane.doe@example.com"
REDACTED = "[EMAIL_REDACTED]"


def _history() -> list[dict[str, Any]]:
    """A chat history with an email in every structured field a request can carry."""
    return [
        {"role": "system", "content": f"Escalate to {EMAIL}."},
        {"role": "user", "name": f"{EMAIL}", "content": [
            {"type": "text", "text": f"I am {EMAIL}"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        {"role": "assistant", "content": None, "refusal": f"not for {EMAIL}",
         "tool_calls": [{"id": "call_1", "type": "function", "function": {
             "name": "lookup", "arguments": json.dumps({"email": EMAIL})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": f"found {EMAIL}"},
        {"role": "user", "content": [{"type": "refusal", "refusal": f"cc {EMAIL}"}]},
        {"role": "user", "content": [
            {"type": "file", "file": {"filename": f"notes of {EMAIL} .pdf",
                                      "file_data": "data:application/pdf;base64,JVBERi0="}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"},
             "transcript": f"call {EMAIL}"}]},
    ]


def _tools() -> list[dict[str, Any]]:
    return [{"type": "function", "function": {
        "name": "lookup", "description": f"Looks up a customer, e.g. {EMAIL}",
        "parameters": {"type": "object", "properties": {"email": {
            "type": "string", "description": f"like {EMAIL}"}}}}}]


def _chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": _history(), "tools": _tools(),
            "user": EMAIL, "metadata": {"customer": EMAIL}, "max_tokens": 20, **extra}


def _leaks(obj: Any) -> list[str]:
    """Where the email still stands in ``obj`` (a request body as the provider got it)."""
    text = json.dumps(obj)
    return [text[max(0, i - 40):i + 30] for i in range(len(text))
            if text.startswith(EMAIL, i)]


# -- the reading, unit by unit --------------------------------------------------------------
def test_every_text_of_a_chat_request_is_found_with_its_path():
    request = read_request("chat", _chat_body())
    paths = {t.path for t in request.texts if EMAIL in t.value}
    assert {("messages", 0, "content"), ("messages", 1, "name"),
            ("messages", 1, "content", 0, "text"), ("messages", 2, "refusal"),
            ("messages", 2, "tool_calls", 0, "function", "arguments"),
            ("messages", 3, "content"), ("messages", 4, "content", 0, "refusal"),
            ("messages", 5, "content", 0, "file", "filename"),
            ("messages", 5, "content", 1, "transcript"),
            ("tools", 0, "function", "description"),
            ("tools", 0, "function", "parameters", "properties", "email", "description"),
            ("user",), ("metadata", "customer")} <= paths
    assert [m.kind for m in request.media] == ["image", "file", "audio"]
    assert not any(t.value.startswith("data:") for t in request.texts)  # base64 not scanned


def test_writing_back_never_touches_the_callers_objects():
    body = _chat_body()
    history = body["messages"]
    before = json.dumps(history)
    request = read_request("chat", body)
    for text in request.texts:
        if EMAIL in text.value:
            request.replace(text.path, text.value.replace(EMAIL, REDACTED))
    assert _leaks(request.body) == []
    assert json.dumps(history) == before  # the caller's list and dicts are unchanged
    assert body["messages"] is not history  # the request holds its own copy


def test_a_reply_message_object_in_the_history_is_read_and_copied_on_write():
    from openai.types.chat import ChatCompletionMessage

    reply = ChatCompletionMessage.model_validate({
        "role": "assistant", "content": f"I mailed {EMAIL}", "refusal": None,
        "tool_calls": [{"id": "c1", "type": "function",
                        "function": {"name": "send", "arguments": f'{{"to": "{EMAIL}"}}'}}]})
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}, reply]}
    request = read_request("chat", body)
    hits = [t for t in request.texts if EMAIL in t.value]
    assert {t.path for t in hits} == {("messages", 1, "content"),
                                      ("messages", 1, "tool_calls", 0, "function",
                                       "arguments")}
    for t in hits:
        request.replace(t.path, t.value.replace(EMAIL, REDACTED))
    sent = request.body["messages"][1]
    assert isinstance(sent, dict) and "refusal" not in sent  # JSON form, nulls left out
    assert _leaks(sent) == [] and EMAIL in reply.content  # the reply object is unchanged


@pytest.mark.parametrize("body, n, reserved", [
    ({"max_tokens": 50, "n": 4}, 4, 200),
    ({"max_completion_tokens": 30, "n": 2}, 2, 60),
    ({}, 1, 999),
])
def test_output_reserved_is_the_limit_times_n(body, n, reserved):
    request = read_request("chat", {"model": "m", "messages": [{"role": "user",
                                                                 "content": "x"}], **body})
    assert request.choices == n and request.output_tokens(999) == reserved


def test_other_request_shapes():
    responses = read_request("responses", {
        "model": "gpt-4o-mini", "instructions": f"write to {EMAIL}", "max_output_tokens": 9,
        "input": [{"type": "function_call", "call_id": "c", "name": "f",
                   "arguments": f'{{"a": "{EMAIL}"}}'},
                  {"type": "function_call_output", "call_id": "c", "output": EMAIL},
                  {"role": "user", "content": [{"type": "input_text", "text": EMAIL}]}]})
    assert {t.path for t in responses.texts if EMAIL in t.value} == {
        ("instructions",), ("input", 0, "arguments"), ("input", 1, "output"),
        ("input", 2, "content", 0, "text")}
    assert responses.output_tokens(1) == 9
    anthropic = read_request("anthropic", {
        "model": "claude-sonnet-4-5", "max_tokens": 64, "system": EMAIL,
        "messages": [{"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {"to": EMAIL}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                          "content": EMAIL}]}]})
    assert {t.path for t in anthropic.texts if EMAIL in t.value} == {
        ("system",), ("messages", 0, "content", 0, "input", "to"),
        ("messages", 1, "content", 0, "content")}
    completion = read_request("completion", {"model": "gpt-3.5-turbo-instruct",
                                             "prompt": EMAIL, "n": 2, "best_of": 3})
    assert completion.output_tokens(999) == 16 * 3  # the legacy default, best_of outputs
    embedding = read_request("embedding", {"model": "text-embedding-3-small",
                                           "input": [EMAIL, [1, 2, 3]]})
    assert [t.path for t in embedding.texts] == [("input", 0)]
    assert embedding.token_inputs == 3 and embedding.output_tokens(999) == 0


@pytest.mark.parametrize("kind, body", [
    ("chat", {"model": "m", "messages": []}),
    ("chat", {"model": "m", "messages": [{"content": "no role"}]}),
    ("chat", {"model": "", "messages": [{"role": "user", "content": "x"}]}),
    ("chat", {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}),
    ("chat", {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
    ("anthropic", {"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    ("embedding", {"model": "m", "input": [{"not": "text"}]}),
    ("nonsense", {"model": "m"}),
])
def test_malformed_requests_are_a_typed_error(kind, body):
    with pytest.raises(InvalidRequestError):
        read_request(kind, body)


def test_openai_sentinels_and_iterables_are_read():
    from openai import NOT_GIVEN

    body = {"model": "gpt-4o-mini", "messages": iter([{"role": "user", "content": EMAIL}]),
            "tools": NOT_GIVEN, "stream": NOT_GIVEN, "max_tokens": NOT_GIVEN}
    request = read_request("chat", body)
    assert [t.path for t in request.texts] == [("messages", 0, "content")]
    assert request.stream is False and request.max_tokens is None


# -- both modes --------------------------------------------------------------------------------
class Spy:
    """Records the hooks it sees, in order (event types for iron_event)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def iron_session_start(self) -> None:
        self.seen.append("session_start")

    @hookimpl
    def iron_llm_request(self, call: Any) -> None:
        self.seen.append(f"llm_request:{call.redacted}")

    @hookimpl
    def iron_llm_response(self, call: Any) -> None:
        self.seen.append(f"llm_response:{call.cost_micro > 0}")

    @hookimpl
    def iron_llm_error(self, call: Any) -> None:
        self.seen.append(f"llm_error:{call.outcome}")

    @hookimpl
    def iron_event(self, event: dict[str, Any]) -> None:
        self.seen.append(f"event:{event['type']}")

    @hookimpl
    def iron_session_end(self) -> None:
        self.seen.append("session_end")


class Broken:
    """A plugin that fails after the provider answered."""

    @hookimpl
    def iron_llm_response(self, call: Any) -> None:
        raise RuntimeError("plugin bug")

    @hookimpl
    def iron_llm_error(self, call: Any) -> None:
        raise RuntimeError("plugin bug")


@pytest.fixture(params=["library", "http"])
def make_runtime(request: pytest.FixtureRequest, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Build the runtime under test with extra plugins in the agent's process; returns
    (runtime, home) and installs it; closed after the test."""
    made: list[Any] = []
    previous = None

    def make(*plugins: object) -> tuple[Any, Path]:
        nonlocal previous
        if request.param == "library":
            home = tmp_path / "iron"
            rt: Any = Runtime(RuntimeConfig(home=home, prices={
                m: ModelPriceConfig(**p) for m, p in PRICES.items()}), plugins=plugins)
        else:
            proc = request.getfixturevalue("router")
            home, rt = proc.home, RemoteRuntime(proc.url, plugins=plugins)
        monkeypatch.setenv("IRON_HOME", str(home))
        made.append(rt)
        previous = set_runtime(rt)
        return rt, home

    make.mode = request.param  # type: ignore[attr-defined]
    yield make
    set_runtime(previous)
    for rt in made:
        rt.close()


def _spent(rt: Any, home: Path, agent: str) -> int:
    rt.flush()
    with SQLiteLedger(home / "ledger.db") as ledger:
        return ledger.state(f"agent:{agent}").spent_micro


@pytest.mark.parametrize("stream", [False, True])
def test_every_structured_field_is_redacted_at_the_client(make_runtime, provider, client,
                                                         stream):
    make_runtime()

    @protect_agent(agent_id=f"fields-{make_runtime.mode}-{stream}")
    def agent() -> None:
        reply = client.chat.completions.create(**_chat_body(stream=stream))
        if stream:
            list(reply)

    agent()
    assert _leaks(provider.requests[-1]) == []
    assert REDACTED in json.dumps(provider.requests[-1]["tools"])


def test_n_choices_are_reserved(make_runtime, provider, client):
    make_runtime()
    # gpt-4o-mini output costs 0.6 $/M: 1,000 output tokens need 600 µ$ of a 1,000 µ$ cap.
    @protect_agent(agent_id=f"n-{make_runtime.mode}", budget_usd=0.001)
    def agent(n: int) -> None:
        client.chat.completions.create(model="gpt-4o-mini", n=n, max_tokens=1000,
                                       messages=[{"role": "user", "content": "hi"}])

    agent(1)
    with pytest.raises(BudgetExceededError):
        agent(4)
    assert len(provider.requests) == 1


def test_a_reply_message_in_the_history_works(make_runtime, provider, client):
    make_runtime()

    @protect_agent(agent_id=f"history-{make_runtime.mode}")
    def agent() -> str:
        first = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        messages = [{"role": "user", "content": "hi"}, first.choices[0].message,
                    {"role": "user", "content": f"mail {EMAIL}"}]
        return client.chat.completions.create(model="gpt-4o-mini",
                                              messages=messages).choices[0].message.content

    assert agent()
    assert provider.requests[-1]["messages"][2]["content"] == f"mail {REDACTED}"


def test_raw_and_streaming_response_wrappers_taken_early_are_governed(make_runtime, provider,
                                                                      client):
    rt, home = make_runtime()
    raw = client.chat.completions.with_raw_response
    streaming = client.chat.completions.with_streaming_response
    agent_id = f"raw-{make_runtime.mode}"

    @protect_agent(agent_id=agent_id)
    def agent() -> None:
        reply = raw.create(model="gpt-4o-mini",
                           messages=[{"role": "user", "content": f"to {EMAIL}"}])
        assert reply.parse().choices[0].message.content
        with streaming.create(model="gpt-4o-mini",
                              messages=[{"role": "user", "content": f"cc {EMAIL}"}]) as r:
            assert r.parse().choices[0].message.content

    agent()
    assert [m["messages"][0]["content"] for m in provider.requests] == [
        f"to {REDACTED}", f"cc {REDACTED}"]
    usage = [expected_micro("gpt-4o-mini", provider.usage(b, 12)) for b in provider.requests]
    assert _spent(rt, home, agent_id) == sum(usage)


def test_a_plugin_failing_after_the_answer_loses_no_charge(make_runtime, provider, client,
                                                          caplog):
    rt, home = make_runtime(Broken())
    agent_id = f"broken-{make_runtime.mode}"

    @protect_agent(agent_id=agent_id)
    def agent() -> str:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
            max_tokens=20).choices[0].message.content

    assert agent()  # the user's result is intact
    reply_usage = provider.usage(provider.requests[0], 12)
    assert _spent(rt, home, agent_id) == expected_micro("gpt-4o-mini", reply_usage)
    assert any("plugin" in r.getMessage() and "iron_llm_response" in r.getMessage()
               for r in caplog.records)
    rt.flush()
    failed = [e for e in read_events(home / "audit.jsonl")
              if e["type"] == "plugin_failed" and e.get("agent_id") in (None, agent_id)]
    assert failed and failed[-1]["hook"] == "iron_llm_response"
    assert failed[-1]["plugin"]  # named, never the exception's text


def _sequence(make_runtime: Any, provider: Any, client: Any) -> list[str]:
    spy = Spy()
    make_runtime(spy)

    @protect_agent(agent_id=f"spy-{make_runtime.mode}")
    def agent() -> None:
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=10,
                                       messages=[{"role": "user", "content": f"to {EMAIL}"}])
        with pytest.raises(Exception):  # noqa: B017 - the stand-in's failing model
            client.chat.completions.create(model="fail-500", max_tokens=10,
                                           messages=[{"role": "user", "content": "x"}])

    agent()
    return spy.seen


def test_a_plugin_sees_the_same_hook_sequence_in_both_modes(make_runtime, provider, client):
    seen = _sequence(make_runtime, provider, client)
    assert seen == [
        "session_start",
        "event:pii_detected", "llm_request:True", "llm_response:True",
        "event:call_completed",
        "llm_request:False", "llm_error:failed", "event:call_failed",
        "session_end"]


# -- door 3 ---------------------------------------------------------------------------------------
@pytest.fixture
def door3(tmp_path: Path, provider: Any):  # noqa: ANN201
    home = tmp_path / "iron"
    with RouterProcess(home=home, env=provider_env(provider)) as proc:
        yield proc, home


@pytest.mark.parametrize("stream", [False, True])
def test_router_redacts_every_structured_field(door3, provider, stream):
    proc, home = door3
    token = issue_token(home, f"door3-{stream}")
    body = _chat_body(stream=stream)
    response = httpx.post(f"{proc.url}/v1/chat/completions", json=body, timeout=20,
                          headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert _leaks(provider.requests[-1]) == []


def test_router_reserves_n_outputs(door3, provider):
    proc, home = door3
    with SQLiteLedger(home / "ledger.db") as ledger:
        ledger.set_limit("agent:door3-n", 1000)
    token = issue_token(home, "door3-n")
    headers = {"authorization": f"Bearer {token}"}

    def post(n: int) -> httpx.Response:
        return httpx.post(f"{proc.url}/v1/chat/completions", headers=headers, timeout=20,
                          json={"model": "gpt-4o-mini", "max_tokens": 1000, "n": n,
                                "messages": [{"role": "user", "content": "hi"}]})

    assert post(4).status_code == 402
    assert post(1).status_code == 200
    assert len(provider.requests) == 1
    wait_until(lambda: settled(home, "door3-n"), "the call to settle")


def test_raw_responses_async_and_streamed_are_charged_their_usage(make_runtime, provider,
                                                                   client, aclient):
    rt, home = make_runtime()
    agent_id = f"raw2-{make_runtime.mode}"

    @protect_agent(agent_id=agent_id)
    async def agent() -> None:
        reply = await aclient.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert reply.parse().choices[0].message.content
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
        assert [c for c in raw.parse()]  # the stream, metered as it is read

    import asyncio

    asyncio.run(agent())
    usage = [expected_micro("gpt-4o-mini", provider.usage(b, 12)) for b in provider.requests]
    assert _spent(rt, home, agent_id) == sum(usage)  # reported usage, not reservations
