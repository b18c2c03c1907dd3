"""What the model answers is scanned too (issue 11, ``SafetyConfig.response``): plain
answers before the caller sees them, streams with bounded hold-back (a value split over
chunks is caught), in library and HTTP mode with the openai client and through the
router's OpenAI-compatible door, plain and SSE."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iron_sdk import (
    Runtime,
    RuntimeConfig,
    SafetyConfig,
    SafetyViolationError,
    protect_agent,
    set_runtime,
)
from iron_sdk.identity import issue_token
from iron_sdk.meter import Meter
from iron_sdk.policies.audit import read_events
from iron_sdk.remote import RemoteRuntime
from iron_sdk.request import LlmRequest
from tests.router_util import RouterProcess
from tests.test_router import provider_env

PROSE = "Here is what we keep on file for this customer, as of this morning. " * 4
SECRET_REPLY = PROSE + "Card 4111 1111 1111 1111 is on file; mail jane.doe@example.com today."
REDACTED_REPLY = PROSE + "Card [CREDIT_CARD_REDACTED] is on file; mail [EMAIL_REDACTED] today."
MSG = [{"role": "user", "content": "What is on file?"}]


@pytest.fixture(scope="module")
def redacting_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    proc = RouterProcess(home=tmp_path_factory.mktemp("resp") / "iron", config={"iron": {
        "safety": {"response": "redact"}, "anonymous_sessions": True}})
    proc.start()
    yield proc
    proc.close()


@pytest.fixture(params=["library", "http"])
def mode(request: pytest.FixtureRequest, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any, Path]]:
    if request.param == "library":
        home = tmp_path / "iron"
        rt: Any = Runtime(RuntimeConfig(home=home, safety=SafetyConfig(response="redact")))
    else:
        proc = request.getfixturevalue("redacting_router")
        home, rt = proc.home, RemoteRuntime(proc.url)
    monkeypatch.setenv("IRON_HOME", str(home))
    previous = set_runtime(rt)
    yield request.param, rt, home
    set_runtime(previous)
    rt.close()


def _no_fragment(chunks: list[str]) -> None:
    """No chunk the caller saw carries a piece of the card or the address."""
    for chunk in chunks:
        assert "4111" not in chunk and "jane.doe" not in chunk and "@example" not in chunk


def test_plain_answer_is_redacted_before_the_caller_sees_it(mode, provider, client):
    provider.reply = SECRET_REPLY

    @protect_agent(agent_id=f"resp-plain-{mode[0]}")
    def agent() -> str:
        return client.chat.completions.create(model="gpt-4o-mini",
                                              messages=MSG).choices[0].message.content

    assert agent() == REDACTED_REPLY


def test_a_value_split_over_stream_chunks_is_caught(mode, provider, client):
    provider.reply = SECRET_REPLY

    @protect_agent(agent_id=f"resp-stream-{mode[0]}")
    def agent() -> list[str]:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                                stream=True)
        return [c.choices[0].delta.content or "" for c in stream if c.choices]

    deltas = agent()
    assert "".join(deltas) == REDACTED_REPLY
    _no_fragment(deltas)
    # Released as it came (only a bounded tail is held), not buffered whole.
    assert len([d for d in deltas if d]) > 10


def test_block_refuses_the_answer_and_still_charges_it(iron_home, provider, client):
    rt = Runtime(RuntimeConfig(home=iron_home, safety=SafetyConfig(response="block")))
    previous = set_runtime(rt)
    provider.reply = SECRET_REPLY
    try:
        @protect_agent(agent_id="resp-block")
        def agent() -> None:
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)

        with pytest.raises(SafetyViolationError) as caught:
            agent()
        assert set(caught.value.kinds) == {"credit_card", "email"}
        rt.flush()
        assert rt.ledger.state("agent:resp-block").spent_micro > 0
    finally:
        set_runtime(previous)
        rt.close()


def test_log_is_the_default_and_records_kinds_only(runtime, provider, client):
    provider.reply = SECRET_REPLY

    @protect_agent(agent_id="resp-log")
    def agent() -> str:
        return client.chat.completions.create(model="gpt-4o-mini",
                                              messages=MSG).choices[0].message.content

    assert agent() == SECRET_REPLY  # unchanged
    runtime.flush()
    found = [e for e in read_events(runtime.config.home / "audit.jsonl")
             if e["type"] == "response_pii_detected"]
    assert found[0]["kinds"] == {"credit_card": 1, "email": 1} and found[0]["action"] == "log"
    assert "4111" not in (runtime.config.home / "audit.jsonl").read_text()


def test_a_tool_call_delta_never_carries_a_card_unredacted(iron_home):
    rt = Runtime(RuntimeConfig(home=iron_home, safety=SafetyConfig(response="redact")))
    try:
        session = rt.open_session("tools")
        call = rt.begin_call(session, LlmRequest.chat("gpt-4o-mini", MSG, stream=True))
        meter = Meter(call)
        args = json.dumps({"card": "4111 1111 1111 1111", "note": "ok"})
        pieces = [args[i:i + 5] for i in range(0, len(args), 5)]
        seen: list[dict[str, Any]] = []
        for piece in pieces:
            seen += meter.take({"choices": [{"index": 0, "finish_reason": None, "delta": {
                "tool_calls": [{"index": 0, "function": {"arguments": piece}}]}}]})
        seen += meter.take({"choices": [{"index": 0, "delta": {},
                                         "finish_reason": "tool_calls"}]})
        seen += meter.end()
        meter.finish()
        released = [tc["function"]["arguments"] for c in seen for ch in c["choices"]
                    for tc in ch["delta"].get("tool_calls") or ()]
        assert all("4111" not in r for r in released)
        assert json.loads("".join(released)) == {"card": "[CREDIT_CARD_REDACTED]",
                                                 "note": "ok"}
        assert call.outcome == "completed" and call.cost_micro > 0
    finally:
        rt.close()


# -- door 3 -----------------------------------------------------------------------------------
@pytest.fixture
def door3(tmp_path: Path, provider: Any) -> Iterator[tuple[RouterProcess, Path]]:
    home = tmp_path / "iron"
    with RouterProcess(home=home, env=provider_env(provider),
                       config={"iron": {"safety": {"response": "redact"}}}) as proc:
        yield proc, home


def test_router_redacts_plain_and_streamed_answers(door3, provider):
    proc, home = door3
    provider.reply = SECRET_REPLY
    headers = {"authorization": f"Bearer {issue_token(home, 'door3-resp')}"}
    url = f"{proc.url}/v1/chat/completions"
    plain = httpx.post(url, headers=headers, timeout=20,
                       json={"model": "gpt-4o-mini", "messages": MSG})
    assert plain.status_code == 200, plain.text
    assert plain.json()["choices"][0]["message"]["content"] == REDACTED_REPLY
    with httpx.stream("POST", url, headers=headers, timeout=20,
                      json={"model": "gpt-4o-mini", "messages": MSG, "stream": True}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    deltas = [c["delta"].get("content") or "" for e in events[:-1]
              for c in json.loads(e)["choices"]]
    assert "".join(deltas) == REDACTED_REPLY
    _no_fragment(deltas)
