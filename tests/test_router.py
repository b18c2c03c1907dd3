"""Router mode end to end: a real ``iron-runtime --mode=router`` process, the real local
stand-in provider, real clients (openai, LangChain, httpx), the real SQLite ledger.

Settlements are written behind the request, so ledger assertions first wait (bounded)
until no reservation is left, which is when every settlement has landed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from iron_sdk.identity import issue_token
from iron_sdk.ledger import ScopeState, SQLiteLedger
from iron_sdk.policies.audit import read_events
from iron_sdk.standin import StandInProvider, prompt_tokens
from tests.helpers import expected_micro
from tests.router_util import ROOT, RouterProcess, free_port, wait_until

PROVIDER_KEY = "sk-provider-7f3c9a1e5b2d4c6f8a0b"
ANTHROPIC_KEY = "sk-ant-provider-51c0ffee2b7d9e3a"
MSG = [{"role": "user", "content": "Say hello to the router."}]
MINI = "gpt-4o-mini"


# -- helpers ------------------------------------------------------------------------------
def ledger_state(home: Path, scope: str) -> ScopeState:
    ledger = SQLiteLedger(home / "ledger.db")
    try:
        return ledger.state(scope)
    finally:
        ledger.close()


def set_budget(home: Path, agent: str, usd: float) -> None:
    ledger = SQLiteLedger(home / "ledger.db")
    try:
        ledger.set_limit(f"agent:{agent}", round(usd * 1_000_000))
    finally:
        ledger.close()


def settled(home: Path, agent: str) -> ScopeState:
    """The agent's state once its reservations are settled or released (the ledger only
    holds reservations for scopes with a limit: give the agent a budget first)."""
    def done() -> ScopeState | None:
        state = ledger_state(home, f"agent:{agent}")
        return state if state.reserved_micro == 0 and state.spent_micro > 0 else None

    return wait_until(done, f"{agent}'s calls to settle")


def spent(home: Path, agent: str, want: int) -> ScopeState:
    """Wait (bounded) until the agent's spend reaches ``want``; fail showing what it is."""
    last: list[ScopeState] = []

    def reached() -> bool:
        last[:] = [ledger_state(home, f"agent:{agent}")]
        return last[0].spent_micro >= want

    try:
        wait_until(reached, f"{agent} to be charged {want} µ$")
    except AssertionError:
        raise AssertionError(f"{agent}: {last[0]}, want spent_micro={want}") from None
    return last[0]


def audit(home: Path, type_: str, agent: str, count: int = 1) -> list[dict[str, Any]]:
    """Audit events of one type for one agent, waiting (bounded) for ``count`` of them."""
    def found() -> list[dict[str, Any]] | None:
        events = [e for e in read_events(home / "audit.jsonl")
                  if e["type"] == type_ and e.get("agent_id") == agent]
        return events if len(events) >= count else None

    return wait_until(found, f"{count} {type_} event(s) for {agent}")


def oai(router: RouterProcess, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key=token, max_retries=0)


def post(router: RouterProcess, token: str | None, payload: Any, path: str = "/v1/chat/completions",
         **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if isinstance(payload, bytes):
        return httpx.post(router.url + path, headers=headers, content=payload, timeout=30,
                          **kwargs)
    return httpx.post(router.url + path, headers=headers, json=payload, timeout=30, **kwargs)


def sse_events(text: str) -> list[Any]:
    return [json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]"
            for line in text.splitlines() if line.startswith("data: ")]


def code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def metric_samples(router: RouterProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed: (name, sorted labels) → value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(router.url + "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def provider_env(provider: StandInProvider) -> dict[str, str]:
    return {"OPENAI_BASE_URL": provider.url, "OPENAI_API_KEY": PROVIDER_KEY}


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, StandInProvider,
                                                                       RouterProcess]]:
    """One pass-through router (no config) in front of one stand-in; tests use their own
    agent names on its ledger."""
    home = tmp_path_factory.mktemp("shared") / "iron"
    with StandInProvider() as provider, \
            RouterProcess(home=home, env=provider_env(provider)) as router:
        yield home, provider, router


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, StandInProvider,
                                                                           RouterProcess]]:
    """A router with a LiteLLM-format model_list: aliases, keys from the environment, a
    failing route, an embedding route and an Anthropic route translated by litellm."""
    home = tmp_path_factory.mktemp("configured") / "iron"
    with StandInProvider() as provider:
        root = provider.url.removesuffix("/v1")
        priced = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
        config = {
            "model_list": [
                {"model_name": "mini", "litellm_params": {
                    "model": "openai/gpt-4o-mini", "api_base": provider.url,
                    "api_key": "os.environ/IRON_TEST_PROVIDER_KEY"}},
                {"model_name": "flaky", "litellm_params": {
                    "model": "openai/fail-500", "api_base": provider.url,
                    "api_key": "os.environ/IRON_TEST_PROVIDER_KEY", **priced}},
                {"model_name": "echo", "litellm_params": {
                    "model": "openai/echo-key", "api_base": provider.url,
                    "api_key": "os.environ/IRON_TEST_PROVIDER_KEY", **priced}},
                {"model_name": "embed", "litellm_params": {
                    "model": "openai/text-embedding-3-small", "api_base": provider.url,
                    "api_key": "os.environ/IRON_TEST_PROVIDER_KEY"}},
                {"model_name": "claude", "litellm_params": {
                    "model": "anthropic/claude-haiku-4-5", "api_base": root,
                    "api_key": "os.environ/IRON_TEST_ANTHROPIC_KEY"}},
                {"model_name": "breaker", "litellm_params": {
                    "model": "openai/fail-503", "api_base": provider.url, **priced}},
                {"model_name": "nowhere", "litellm_params": {
                    "model": "openai/gpt-4o-mini", "api_base": f"http://127.0.0.1:{free_port()}/v1",
                    "api_key": "os.environ/IRON_TEST_PROVIDER_KEY"}},
            ],
            "litellm_settings": {"drop_params": True},
        }
        env = {"IRON_TEST_PROVIDER_KEY": PROVIDER_KEY, "IRON_TEST_ANTHROPIC_KEY": ANTHROPIC_KEY}
        with RouterProcess(home=home, config=config, env=env) as router:
            yield home, provider, router


@pytest.fixture
def slow_provider() -> Iterator[StandInProvider]:
    with StandInProvider(reply_words=30, chunk_delay_s=0.05) as provider:
        yield provider


# -- the OpenAI door with real clients ------------------------------------------------------
def test_openai_client_plain_and_stream_charged_what_the_provider_reported(shared):
    home, provider, router = shared
    client = oai(router, issue_token(home, "oa-agent"))
    reply = client.chat.completions.create(model=MINI, messages=MSG, max_tokens=50)
    want = expected_micro(MINI, reply.usage.model_dump())
    chunks = list(client.chat.completions.create(model=MINI, messages=MSG, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # asked for: kept
    want += expected_micro(MINI, chunks[-1].usage.model_dump())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert provider.headers[-1]["authorization"] == f"Bearer {PROVIDER_KEY}"  # not the IC token
    assert spent(home, "oa-agent", want).spent_micro == want > 0
    completed = audit(home, "call_completed", "oa-agent", 2)
    assert {e["source"] for e in completed} == {"router"} and len(completed) == 2


def test_langchain_chat_openai_plain_and_streaming(shared):
    from langchain_openai import ChatOpenAI

    home, provider, router = shared
    llm = ChatOpenAI(model=MINI, base_url=router.url + "/v1", api_key=issue_token(home, "lc"),
                     max_retries=0, stream_usage=True, max_tokens=40)
    message = llm.invoke("Say hello to LangChain.")
    total = None
    for chunk in llm.stream("Say hello to LangChain, streaming."):
        total = chunk if total is None else total + chunk
    assert total is not None and total.content == message.content
    want = sum(expected_micro(MINI, {"prompt_tokens": u["input_tokens"],
                                     "completion_tokens": u["output_tokens"]})
               for u in (message.usage_metadata, total.usage_metadata))
    assert spent(home, "lc", want).spent_micro == want > 0


def test_stream_without_include_usage_hides_the_usage_chunk_but_is_charged(shared):
    home, provider, router = shared
    token = issue_token(home, "quiet-stream")
    with httpx.stream("POST", router.url + "/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {token}"},
                      json={"model": MINI, "messages": MSG, "stream": True}) as response:
        assert response.status_code == 200
        events = sse_events(response.read().decode())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks and all(not c.get("usage") for c in chunks)  # no usage chunk leaked
    assert provider.requests[-1]["stream_options"] == {"include_usage": True}
    words = sum(1 for c in chunks for ch in c["choices"] if ch["delta"].get("content"))
    want = expected_micro(MINI, {"prompt_tokens": prompt_tokens(MSG), "completion_tokens": words})
    assert spent(home, "quiet-stream", want).spent_micro == want > 0


def test_unchanged_requests_are_forwarded_byte_for_byte(shared):
    home, provider, router = shared
    token = issue_token(home, "bytes")
    # Odd spacing, key order and escapes survive only if the body is not re-encoded.
    raw = (b'{ "messages" : [ {"content": "caf\\u00e9 plan", "role": "user"} ],'
           b'  "model": "gpt-4o-mini", "max_tokens": 7, "temperature": 0.50 }')
    assert post(router, token, raw).status_code == 200
    assert provider.raw_requests[-1] == raw
    # A redacted prompt has to be re-encoded: the bytes differ, the rest is kept.
    changed = raw.replace(b"caf\\u00e9 plan", b"mail me at ann@example.com")
    assert post(router, token, changed).status_code == 200
    assert provider.raw_requests[-1] != changed
    assert provider.requests[-1] == {
        "messages": [{"content": "mail me at [EMAIL_REDACTED]", "role": "user"}],
        "model": MINI, "max_tokens": 7, "temperature": 0.5}


def test_embeddings_are_charged_and_redacted(configured):
    home, provider, router = configured
    client = oai(router, issue_token(home, "embedder"))
    result = client.embeddings.create(model="embed", input=["plain text", "mail bob@example.com"])
    assert len(result.data) == 2
    sent = provider.requests[-1]
    assert sent["model"] == "text-embedding-3-small"  # the alias resolved
    assert sent["input"] == ["plain text", "mail [EMAIL_REDACTED]"]
    want = expected_micro("text-embedding-3-small", {"prompt_tokens": result.usage.prompt_tokens})
    assert spent(home, "embedder", want).spent_micro == want > 0


def test_models_lists_the_model_list(configured):
    home, provider, router = configured
    models = oai(router, issue_token(home, "lister")).models.list()
    assert {m.id for m in models.data} == {"mini", "flaky", "echo", "embed", "claude",
                                           "breaker", "nowhere"}
    assert httpx.get(router.url + "/v1/models").status_code == 401


# -- authentication -------------------------------------------------------------------------
def test_missing_and_forged_tokens_are_401_and_never_reach_the_provider(shared, tmp_path):
    home, provider, router = shared
    before = len(provider.requests)
    forged = issue_token(tmp_path / "other-home", "oa-agent")  # signed with another secret
    for token in (None, forged, "not-a-jwt"):
        response = post(router, token, {"model": MINI, "messages": MSG})
        assert response.status_code == 401 and code(response) == "invalid_ic_token"
    response = httpx.post(router.url + "/v1/chat/completions", json={"model": MINI,
                          "messages": MSG}, headers={"x-api-key": forged})
    assert response.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        oai(router, forged).chat.completions.create(model=MINI, messages=MSG)
    assert len(provider.requests) == before


def test_x_api_key_header_is_accepted(shared):
    home, provider, router = shared
    response = httpx.post(router.url + "/v1/chat/completions", timeout=30,
                          headers={"x-api-key": issue_token(home, "xkey")},
                          json={"model": MINI, "messages": MSG, "max_tokens": 5})
    assert response.status_code == 200


# -- request policies -----------------------------------------------------------------------
def test_over_budget_is_402_and_the_provider_is_never_contacted(shared):
    home, provider, router = shared
    token = issue_token(home, "tight")
    cli = subprocess.run([sys.executable, "-m", "iron_sdk.cli", "budget", "set", "tight",
                          "--usd", "0.00001"], env={**os.environ, "IRON_HOME": str(home)},
                         capture_output=True, text=True, cwd=ROOT, check=True)
    assert "agent:tight" in cli.stdout
    before = len(provider.requests)
    with pytest.raises(openai.APIStatusError) as info:
        oai(router, token).chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=2000)
    assert info.value.status_code == 402
    assert info.value.body["code"] == "budget_exceeded"
    assert info.value.body["scope"] == "agent:tight"
    assert len(provider.requests) == before
    state = ledger_state(home, "agent:tight")
    assert state.spent_micro == 0 and state.reserved_micro == 0
    assert audit(home, "call_blocked", "tight")[0]["reason"] == "budget_exceeded"
    blocks = ("iron_blocks_total",
              (("agent", "tight"), ("model", "gpt-4o"), ("reason", "budget_exceeded")))
    assert metric_samples(router)[blocks] == 1


def test_redaction_reaches_the_provider_and_nothing_leaks(shared):
    home, provider, router = shared
    email = "jane.doe@example.com"
    reply = post(router, issue_token(home, "redactor"),
                 {"model": MINI, "messages": [{"role": "user", "content": f"Mail {email} now"}]})
    assert reply.status_code == 200
    assert provider.requests[-1]["messages"][0]["content"] == "Mail [EMAIL_REDACTED] now"
    found = audit(home, "pii_detected", "redactor")
    assert found[0]["kinds"] == {"email": 1} and found[0]["action"] == "redact"
    assert email not in (home / "audit.jsonl").read_text()
    assert email not in router.stderr


def test_block_mode_is_403_and_rate_limit_is_429(tmp_path, provider):
    home = tmp_path / "iron"
    config = {"iron": {"safety": {"pii": "block"},
                       "reliability": {"requests_per_minute": 1},
                       "require_token": False, "default_agent": "walk-in"}}
    with RouterProcess(home=home, config=config, env=provider_env(provider)) as router:
        blocked = post(router, issue_token(home, "blocked"), {"model": MINI, "messages": [
            {"role": "user", "content": "My card is 4111 1111 1111 1111"}]})
        assert blocked.status_code == 403 and code(blocked) == "safety_violation"
        assert blocked.json()["error"]["kinds"] == ["credit_card"]
        assert provider.requests == []
        token = issue_token(home, "limited")
        assert post(router, token, {"model": MINI, "messages": MSG}).status_code == 200
        limited = post(router, token, {"model": MINI, "messages": MSG})
        assert limited.status_code == 429 and code(limited) == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        assert len(provider.requests) == 1
        # require_token: false — no token runs as the default agent; a bad one is still 401
        assert post(router, None, {"model": MINI, "messages": MSG}).status_code == 200
        assert post(router, "forged", {"model": MINI, "messages": MSG}).status_code == 401
        assert audit(home, "call_completed", "walk-in")[0]["source"] == "router"


def test_client_mistakes_are_4xx_in_the_openai_shape(shared):
    home, provider, router = shared
    token = issue_token(home, "sloppy")
    before = len(provider.requests)
    cases = [
        b"{not json",
        b"[1, 2]",
        {"model": MINI},
        {"model": MINI, "messages": []},
        {"model": MINI, "messages": "hello"},
        {"model": MINI, "messages": [{"content": "no role"}]},
        {"messages": MSG},
        {"model": MINI, "messages": MSG, "max_tokens": "ten"},
        {"model": MINI, "messages": MSG, "stream": "yes"},
    ]
    for payload in cases:
        response = post(router, token, payload)
        assert response.status_code == 400, payload
        assert code(response) == "invalid_request"
        assert "Traceback" not in response.text
    embedding = post(router, token, {"model": "text-embedding-3-small"}, path="/v1/embeddings")
    assert embedding.status_code == 400 and code(embedding) == "invalid_request"
    unpriced = post(router, token, {"model": "my-private-model", "messages": MSG})
    assert unpriced.status_code == 400 and code(unpriced) == "unknown_model_price"
    huge = post(router, token, b'{"model": "x", "messages": "' + b"a" * (11 * 1024 * 1024) + b'"}')
    assert huge.status_code == 413 and code(huge) == "payload_too_large"
    unknown = httpx.get(router.url + "/v1/nothing-here")
    assert unknown.status_code == 404 and code(unknown) == "not_found"
    assert len(provider.requests) == before
    assert ledger_state(home, "agent:sloppy").reserved_micro == 0


def test_unknown_model_with_a_config_is_404(configured):
    home, provider, router = configured
    response = post(router, issue_token(home, "lost"), {"model": "gpt-4o-mini", "messages": MSG})
    assert response.status_code == 404 and code(response) == "model_not_found"
    assert "mini" in response.json()["error"]["message"]  # names what is available


def test_upstream_error_passes_through_and_releases_the_reservation(configured):
    home, provider, router = configured
    token = issue_token(home, "unlucky")
    set_budget(home, "unlucky", 1.0)  # with a limit the ledger really holds a reservation
    plain = post(router, token, {"model": "flaky", "messages": MSG, "max_tokens": 10})
    assert plain.status_code == 500
    assert plain.json()["error"]["message"] == "stand-in failure 500"  # the upstream's body
    assert provider.requests[-1]["model"] == "fail-500"
    stream = post(router, token, {"model": "flaky", "messages": MSG, "stream": True})
    assert stream.status_code == 500
    failed = audit(home, "call_failed", "unlucky", 2)
    assert len(failed) == 2
    state = wait_until(lambda: (s := ledger_state(home, "agent:unlucky")).reserved_micro == 0
                       and s, "the reservations to be released")
    assert state.spent_micro == 0


def test_repeated_upstream_failures_open_the_circuit(configured):
    home, provider, router = configured
    token = issue_token(home, "breaker-user")
    before = len(provider.requests)
    responses = [post(router, token, {"model": "breaker", "messages": MSG, "max_tokens": 5})
                 for _ in range(6)]
    assert [r.status_code for r in responses] == [503] * 6
    # Five upstream failures pass through; then the open circuit refuses the sixth call
    # without contacting the upstream.
    assert [code(r) for r in responses] == ["503"] * 5 + ["circuit_open"]
    assert len(provider.requests) == before + 5
    opened = responses[-1]
    assert opened.json()["error"]["target"] == "breaker"  # every deployment of the name
    assert int(opened.headers["retry-after"]) >= 1
    assert audit(home, "call_blocked", "breaker-user")[0]["reason"] == "circuit_open"


def test_unreachable_upstream_is_502_and_releases_the_reservation(configured):
    home, provider, router = configured
    token = issue_token(home, "stranded")
    set_budget(home, "stranded", 1.0)
    response = post(router, token, {"model": "nowhere", "messages": MSG})
    assert response.status_code == 502 and code(response) == "upstream_unreachable"
    assert "ConnectError" in response.json()["error"]["message"]
    assert PROVIDER_KEY not in response.text
    assert audit(home, "call_failed", "stranded")[0]["outcome"] == "failed"
    wait_until(lambda: ledger_state(home, "agent:stranded").reserved_micro == 0,
               "the release to be written")  # written behind, like settlements


def test_provider_key_never_appears_in_responses_logs_or_audit(configured):
    home, provider, router = configured
    token = issue_token(home, "keeper")
    bodies = [post(router, token, {"model": m, "messages": MSG}).text
              for m in ("mini", "echo", "flaky", "claude")]
    assert provider.headers[-1].get("x-api-key") == ANTHROPIC_KEY  # it was used...
    assert any(h.get("authorization") == f"Bearer {PROVIDER_KEY}" for h in provider.headers)
    assert "Incorrect API key provided" in bodies[1]  # the upstream quoted it...
    for key in (PROVIDER_KEY, ANTHROPIC_KEY):  # ...and it was scrubbed everywhere
        assert all(key not in body for body in bodies)
        assert key not in router.stderr
    audit(home, "call_completed", "keeper", 2)
    for key in (PROVIDER_KEY, ANTHROPIC_KEY):
        assert key not in (home / "audit.jsonl").read_text()


def test_litellm_translation_route_reaches_the_anthropic_stand_in(configured):
    home, provider, router = configured
    client = oai(router, issue_token(home, "claude-user"))
    reply = client.chat.completions.create(
        model="claude", max_tokens=30, messages=[{"role": "system", "content": "Be brief."},
                                                 *MSG])
    assert reply.choices[0].message.content.startswith("Sure here is")
    sent, headers = provider.requests[-1], provider.headers[-1]
    assert headers["x-api-key"] == ANTHROPIC_KEY and "anthropic-version" in headers
    assert sent["model"] == "claude-haiku-4-5" and sent["max_tokens"] == 30
    chunks = list(client.chat.completions.create(model="claude", messages=MSG, max_tokens=30,
                                                 stream=True))
    assert all(c.usage is None for c in chunks)  # not asked for: hidden
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    # What the stand-in counted for the Anthropic-format messages it was sent.
    streamed = {"prompt_tokens": prompt_tokens(provider.requests[-1]["messages"]),
                "completion_tokens": 12}
    want = (expected_micro("claude-haiku-4-5", reply.usage.model_dump())
            + expected_micro("claude-haiku-4-5", streamed))
    assert spent(home, "claude-user", want).spent_micro == want > 0


# -- streams that end early, shutdown, two routers ------------------------------------------
def test_client_disconnect_mid_stream_is_charged_for_what_was_generated(tmp_path,
                                                                          slow_provider):
    home = tmp_path / "iron"
    with RouterProcess(home=home, env=provider_env(slow_provider)) as router:
        token = issue_token(home, "quitter")
        set_budget(home, "quitter", 1.0)  # a limit: the ledger holds the reservation
        with httpx.Client(timeout=30) as http, http.stream(
                "POST", router.url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {token}"},
                json={"model": MINI, "messages": MSG, "stream": True}) as response:
            seen = 0
            for line in response.iter_lines():
                seen += line.startswith("data: ")
                if seen == 3:
                    break  # leave mid-stream: the response and connection are closed
        state = settled(home, "quitter")
        assert state.spent_micro > 0 and state.reserved_micro == 0
        event = audit(home, "call_completed", "quitter")[0]
        assert event["usage_counted"] and 0 < event["output_tokens"] < 30
        # The router hung up on the upstream too: the provider stops generating.
        wait_until(lambda: slow_provider.abandoned_streams == 1, "the upstream stream to end")
    assert slow_provider.completed_streams == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_lets_an_in_flight_stream_finish_and_settle(tmp_path, slow_provider, sig):
    home = tmp_path / "iron"
    router = RouterProcess(home=home, env=provider_env(slow_provider)).start()
    token = issue_token(home, "finisher")
    set_budget(home, "finisher", 1.0)
    first_chunk = threading.Event()
    received: list[str] = []

    def consume() -> None:
        with httpx.stream("POST", router.url + "/v1/chat/completions", timeout=30,
                          headers={"authorization": f"Bearer {token}"},
                          json={"model": MINI, "messages": MSG, "stream": True,
                                "stream_options": {"include_usage": True}}) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    received.append(line)
                    first_chunk.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first_chunk.wait(20)
    assert router.stop(sig) == 0
    reader.join(20)
    events = sse_events("\n".join(received))
    assert events[-1] == "[DONE]"
    usage = events[-2]["usage"]
    assert usage["completion_tokens"] == 30
    state = ledger_state(home, "agent:finisher")  # the router flushed before exiting
    assert state.spent_micro == expected_micro(MINI, usage) and state.reserved_micro == 0
    assert "stopped" in router.stderr


def test_two_routers_on_one_ledger_never_overspend(tmp_path, provider):
    home = tmp_path / "iron"
    limit_micro = 150
    with RouterProcess(home=home, env=provider_env(provider)) as a, \
            RouterProcess(home=home, env=provider_env(provider)) as b:
        token = issue_token(home, "crowd")
        set_budget(home, "crowd", limit_micro / 1_000_000)
        results: list[tuple[int, dict[str, Any]]] = []
        lock = threading.Lock()

        def worker(router: RouterProcess) -> None:
            with httpx.Client(timeout=30) as http:
                for _ in range(8):
                    r = http.post(router.url + "/v1/chat/completions",
                                  headers={"authorization": f"Bearer {token}"},
                                  json={"model": MINI, "messages": MSG, "max_tokens": 12})
                    with lock:
                        results.append((r.status_code, r.json()))

        threads = [threading.Thread(target=worker, args=(r,)) for r in (a, b, a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    ok = [body for status, body in results if status == 200]
    refused = [body for status, body in results if status == 402]
    assert len(ok) + len(refused) == len(results) == 48
    assert ok and refused
    state = ledger_state(home, "agent:crowd")  # both routers flushed on exit
    assert state.reserved_micro == 0
    assert state.spent_micro == sum(expected_micro(MINI, body["usage"]) for body in ok)
    assert state.spent_micro <= limit_micro


# -- operations -------------------------------------------------------------------------------
def test_healthz_metrics_and_openapi(shared):
    home, provider, router = shared
    token = issue_token(home, "metered")
    assert post(router, token, {"model": MINI, "messages": MSG}).status_code == 200
    health = httpx.get(router.url + "/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    spent(home, "metered", 1)
    samples = metric_samples(router)
    assert samples[("iron_router_in_flight_requests", ())] == 1  # the scrape itself
    key = ("iron_router_requests_total", (("agent", "metered"), ("model", MINI),
                                          ("path", "/v1/chat/completions"), ("status", "200")))
    assert samples[key] == 1
    assert samples[("iron_spend_usd_total", (("agent", "metered"), ("model", MINI)))] > 0
    assert samples[("iron_llm_calls_total", (("agent", "metered"), ("model", MINI),
                                             ("outcome", "completed")))] == 1
    schema = httpx.get(router.url + "/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert "post" in schema["paths"]["/v1/chat/completions"]
    assert {"/v1/embeddings", "/v1/models", "/healthz", "/metrics"} <= set(schema["paths"])


def test_request_log_has_one_line_per_request_without_prompt_text(tmp_path, provider):
    home = tmp_path / "iron"
    secret_prompt = "the launch code is tangerine"
    with RouterProcess(home=home, env=provider_env(provider)) as router:
        token = issue_token(home, "logged")
        for _ in range(3):
            assert post(router, token, {"model": MINI, "messages": [
                {"role": "user", "content": secret_prompt}]}).status_code == 200
    lines = [line for line in router.stderr.splitlines() if "POST /v1/chat/completions" in line]
    assert len(lines) == 3
    assert all("agent=logged" in line and f"model={MINI}" in line for line in lines)
    assert secret_prompt not in router.stderr


def test_example_router_mode_runs_offline():
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "IRON_HOME", "IRON_RUNTIME_URL")}
    result = subprocess.run([sys.executable, "examples/router_mode.py"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[EMAIL_REDACTED]" in out and "alice@example.com" not in out.split("stand-in saw")[1]
    assert "budget stop: 402 budget_exceeded" in out
    assert "router exited with 0" in out
    assert "requests the provider saw after the stop: 0" in out
    assert "ledger: support-bot spent $0.0000" in out and "on 3 gpt-4o-mini calls" in out


# -- configuration (pure functions) ----------------------------------------------------------
def test_litellm_model_list_and_iron_section_map_onto_the_runtime(monkeypatch, tmp_path):
    from iron_router.config import load_config

    monkeypatch.setenv("MY_OPENAI_KEY", "sk-from-env-0001")
    monkeypatch.setenv("MY_ANTHROPIC_KEY", "sk-ant-from-env-0002")
    path = tmp_path / "router.yaml"
    path.write_text("""
model_list:
  - model_name: fast
    litellm_params: {model: openai/gpt-4o-mini, api_key: os.environ/MY_OPENAI_KEY,
                     api_base: "http://127.0.0.1:9/v1/"}
  - model_name: fast
    litellm_params: {model: openai/gpt-4o-mini, api_key: os.environ/MY_OPENAI_KEY,
                     api_base: "http://127.0.0.1:10/v1"}
  - model_name: smart
    litellm_params: {model: anthropic/claude-haiku-4-5, api_key: os.environ/MY_ANTHROPIC_KEY,
                     temperature: 0.2, rpm: 100}
  - model_name: bare-claude
    litellm_params: {model: claude-haiku-4-5}
  - model_name: private
    litellm_params: {model: hosted_vllm/my-llama, api_base: "http://gpu:8000/v1",
                     input_cost_per_token: 2e-7, output_cost_per_token: 0.0000004}
general_settings: {master_key: sk-ignored}
litellm_settings: {drop_params: false}
iron:
  ledger: /tmp/iron-test-ledger.db
  require_token: false
  default_agent: walk-in
  safety: {pii: block}
  budget: {default_max_tokens: 256}
  reliability: {requests_per_minute: 30}
  prices: {my-model: {input_per_mtok: 1.0, output_per_mtok: 2.0}}
""")
    config = load_config(path)
    fast = config.routes["fast"]
    assert len(fast) == 2 and fast[0].api_base == "http://127.0.0.1:9/v1"  # deployments
    assert fast[0].api_key == "sk-from-env-0001" and not fast[0].translate
    assert fast[0].upstream_model == "gpt-4o-mini" and fast[0].model == "openai/gpt-4o-mini"
    smart = config.routes["smart"][0]
    assert smart.translate and smart.provider == "anthropic"
    assert smart.api_key == "sk-ant-from-env-0002"
    assert smart.params == {"temperature": 0.2}  # LiteLLM Router hints dropped
    assert config.routes["bare-claude"][0].translate  # provider from the price data
    private = config.routes["private"][0]
    assert not private.translate and private.upstream_model == "my-llama"
    runtime = config.runtime
    assert runtime.ledger == "/tmp/iron-test-ledger.db"
    assert runtime.safety.pii == "block" and runtime.budget.default_max_tokens == 256
    assert runtime.reliability.requests_per_minute == 30
    assert runtime.prices["my-model"].output_per_mtok == 2.0
    assert runtime.prices["hosted_vllm/my-llama"].input_per_mtok == pytest.approx(0.2)
    settings = config.settings
    assert not settings.require_token and settings.default_agent == "walk-in"
    assert settings.drop_params is False and settings.max_body_bytes == 10 * 1024 * 1024
    assert set(config.secrets()) >= {"sk-from-env-0001", "sk-ant-from-env-0002"}
    assert config.needs_litellm


@pytest.mark.parametrize("text, message", [
    ("model_list: [{model_name: x, litellm_params: {model: openai/x, "
     "api_key: os.environ/IRON_TEST_UNSET_VAR}}]", "IRON_TEST_UNSET_VAR"),
    ("model_list: [{model_name: x}]", "litellm_params.model"),
    ("model_list: {x: 1}", "model_list must be a list"),
    ("iron: {safety: {pii: shout}}", "iron: safety.pii"),
    ("iron: {no_such_setting: 1}", "no_such_setting"),
    ("iron: {require_tokens: true}", "require_tokens"),
    ("model_list: [{model_name: x, litellm_params: {model: openai/x, "
     "input_cost_per_token: cheap, output_cost_per_token: 1}}]", "must be numbers"),
    ("model_list: [\n  - model_name: x\n   bad: indent", "not valid YAML at line"),
    ("- just a list", "must be a YAML mapping"),
])
def test_bad_configs_fail_with_a_message_naming_the_problem(tmp_path, monkeypatch, text,
                                                             message):
    from iron_router.config import ConfigError, load_config

    monkeypatch.delenv("IRON_TEST_UNSET_VAR", raising=False)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_router_refuses_to_start_on_a_bad_config(tmp_path):
    with pytest.raises(RuntimeError, match="refers to environment variable IRON_TEST_NOPE"):
        RouterProcess(home=tmp_path / "iron", config={"model_list": [
            {"model_name": "x", "litellm_params": {
                "model": "openai/x", "api_key": "os.environ/IRON_TEST_NOPE"}}]}).start()


def test_without_a_config_models_pass_through_to_the_environment_upstream(monkeypatch):
    from iron_router.config import load_config

    monkeypatch.setenv("OPENAI_API_BASE", "http://127.0.0.1:9/v1/")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key-123456")
    route = load_config(None).passthrough("gpt-4o")
    assert route.chat_url == "http://127.0.0.1:9/v1/chat/completions"
    assert route.api_key == "sk-env-key-123456" and not route.translate


def test_log_lines_keep_the_standard_format() -> None:
    """The request log formats each second's date once; every line still reads as
    ``logging.Formatter`` would write it, across seconds and in any order."""
    import logging

    from iron_router.server import _Formatter

    fmt = "%(asctime)s %(name)s %(levelname)s %(message)s"
    ours, standard = _Formatter(fmt), logging.Formatter(fmt)
    for created in (1796165003.001, 1796165003.999, 1796165004.5, 1796165003.25, 1.0):
        record = logging.LogRecord("iron_router", logging.INFO, __file__, 1, "POST %s",
                                   ("/v1/runtime/calls",), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == standard.format(record)
