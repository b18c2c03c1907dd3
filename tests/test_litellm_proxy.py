"""LiteLLM Proxy governed by ``iron_litellm.proxy.handler``: the real proxy process (from
its own environment, ``.venv-proxy``), a real local stand-in provider, the SQLite ledger
and audit log it shares with this process."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from iron_sdk.errors import BudgetExceededError, InvalidTokenError, error_from_body
from iron_sdk.identity import issue_token
from iron_sdk.ledger import Ledger, open_ledger
from iron_sdk.policies.audit import read_events
from iron_sdk.standin import StandInProvider, prompt_tokens
from tests.helpers import expected_micro

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "litellm_proxy"
PROXY_ENV = ROOT / ".venv-proxy"
MSG = [{"role": "user", "content": "Say hello to the proxy."}]


def _load_runner() -> ModuleType:
    """The example's runner: the proxy process helpers live there (one copy)."""
    spec = importlib.util.spec_from_file_location("litellm_proxy_runner", EXAMPLE / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


def _stamp() -> str:
    """What the environment was built from: rebuild when any of it changes."""
    parts = [sys.version, str(ROOT), (EXAMPLE / "requirements.txt").read_text(),
             (ROOT / "pyproject.toml").read_text()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@pytest.fixture(scope="session")
def proxy_env() -> Path:
    """``.venv-proxy``: LiteLLM Proxy + this repository (core only), built once and
    reused across runs; a lock keeps concurrent test runs from building it twice."""
    marker = PROXY_ENV / ".iron-built"  # uv's venv carries its own .gitignore
    stamp = _stamp()
    lock_path = Path(tempfile.gettempdir()) / (
        "iron-venv-proxy-" + hashlib.sha256(str(ROOT).encode()).hexdigest()[:12] + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == stamp:
            return PROXY_ENV
        try:
            runner.build_proxy_env(PROXY_ENV)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            pytest.fail(
                f"Could not build {PROXY_ENV} for the LiteLLM Proxy tests; the first run "
                "installs litellm[proxy] from the package registry (PyPI), so it must be "
                f"reachable once.\n{exc}", pytrace=False)
        marker.write_text(stamp)
    return PROXY_ENV


@pytest.fixture(scope="module")
def standin() -> Iterator[StandInProvider]:
    with StandInProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def proxy_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy-iron-home")


@pytest.fixture(scope="module")
def proxy(proxy_env: Path, standin: StandInProvider, proxy_home: Path) -> Iterator[Any]:
    """The real ``litellm --config examples/litellm_proxy/config.yaml`` process."""
    master_key = "sk-" + secrets.token_urlsafe(32)
    issue_token(proxy_home, "warm-up")  # the signing secret the proxy verifies with
    env = runner.proxy_environment(proxy_home, master_key, standin.url)
    server = runner.ProxyServer(proxy_env, env, proxy_home / "proxy.log")
    try:
        server.wait_ready()
    except RuntimeError as exc:
        server.stop()
        pytest.fail(str(exc), pytrace=False)
    server.master_key = master_key
    yield server
    server.stop()


@pytest.fixture
def ledger(proxy_home: Path) -> Iterator[Ledger]:
    led = open_ledger(str(proxy_home / "ledger.db"))
    yield led
    led.close()


def _post(proxy: Any, body: dict, token: str | None = None, **headers: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {proxy.master_key}", **headers}
    if token:
        headers["x-iron-ic-token"] = token
    return httpx.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers,
                      timeout=60)


def _stream(proxy: Any, body: dict, token: str) -> list[dict]:
    chunks = []
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", timeout=60,
                      json={**body, "stream": True},
                      headers={"Authorization": f"Bearer {proxy.master_key}",
                               "x-iron-ic-token": token}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks


def _spent(ledger: Ledger, scope: str, want: int) -> int:
    """The scope's spend once the proxy wrote it (its ledger writes trail the reply)."""
    state = runner.wait_for(lambda: ledger.state(scope),
                            lambda s: s.spent_micro >= want and s.reserved_micro == 0)
    return state.spent_micro


def _events(home: Path, type_: str, agent: str, count: int = 1) -> list[dict]:
    """The agent's audit events of ``type_`` once ``count`` are written (they trail too)."""
    return runner.wait_for(
        lambda: [e for e in read_events(home / "audit.jsonl")
                 if e["type"] == type_ and e.get("agent_id") == agent],
        lambda events: len(events) >= count)


def test_request_within_budget_is_charged_exactly(proxy, standin, ledger, proxy_home):
    token = issue_token(proxy_home, "proxy-plain")
    ledger.set_limit("agent:proxy-plain", 10_000)
    sent = len(standin.requests)
    response = _post(proxy, {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 9}, token)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["completion_tokens"] == 9 and len(standin.requests) == sent + 1
    want = expected_micro("gpt-4o-mini", usage)
    assert _spent(ledger, "agent:proxy-plain", want) == want
    event = _events(proxy_home, "call_completed", "proxy-plain")[0]
    assert event["source"] == "litellm-proxy" and event["cost_micro"] == want


def test_over_budget_is_refused_before_the_provider(proxy, standin, ledger, proxy_home):
    token = issue_token(proxy_home, "proxy-broke")
    ledger.set_limit("agent:proxy-broke", 1)  # 1 µ$: not enough for any request
    sent = len(standin.requests)
    response = _post(proxy, {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 50}, token)
    assert response.status_code == 402, response.text
    assert len(standin.requests) == sent  # never contacted
    error = error_from_body(response.json())
    assert isinstance(error, BudgetExceededError) and error.scope == "agent:proxy-broke"
    streamed = _post(proxy, {"model": "gpt-4o-mini", "messages": MSG, "stream": True}, token)
    assert streamed.status_code == 402 and streamed.json()["error"]["code"] == "budget_exceeded"
    assert len(standin.requests) == sent
    state = ledger.state("agent:proxy-broke")
    assert state.spent_micro == 0 and state.reserved_micro == 0
    assert _events(proxy_home, "call_blocked", "proxy-broke")[0]["reason"] == "budget_exceeded"


def test_redaction_reaches_the_provider_and_not_the_audit(proxy, standin, proxy_home):
    token = issue_token(proxy_home, "proxy-redact")
    secret_text = "Mail bob@corp.example, card 4111 1111 1111 1111."
    response = _post(proxy, {"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": secret_text}]}, token)
    assert response.status_code == 200, response.text
    sent = standin.requests[-1]["messages"]
    assert sent[0]["content"] == "You are helpful."
    assert sent[1]["content"] == "Mail [EMAIL_REDACTED], card [CREDIT_CARD_REDACTED]."
    found = _events(proxy_home, "pii_detected", "proxy-redact")[0]
    assert found["kinds"] == {"email": 1, "credit_card": 1}
    audit = (proxy_home / "audit.jsonl").read_text()
    assert "bob@corp.example" not in audit and token not in audit


def test_streaming_is_charged_from_the_usage_chunk(proxy, standin, ledger, proxy_home):
    token = issue_token(proxy_home, "proxy-stream")
    chunks = _stream(proxy, {"model": "gpt-4o-mini", "messages": MSG}, token)
    assert standin.requests[-1]["stream_options"] == {"include_usage": True}
    assert not any(c.get("usage") for c in chunks), "the client did not ask for usage"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(text.split()) == standin.reply_words
    want = expected_micro("gpt-4o-mini", {"prompt_tokens": prompt_tokens(MSG),
                                          "completion_tokens": standin.reply_words})
    assert _spent(ledger, "agent:proxy-stream", want) == want
    event = _events(proxy_home, "call_completed", "proxy-stream")[0]
    assert event["stream"] is True and event["usage_counted"] is False

    asked = _stream(proxy, {"model": "gpt-4o-mini", "messages": MSG,
                            "stream_options": {"include_usage": True}}, token)
    assert asked[-1]["usage"]["completion_tokens"] == 12
    assert _spent(ledger, "agent:proxy-stream", 2 * want) == 2 * want


def test_ic_token_names_the_agent_and_its_scopes(proxy, standin, ledger, proxy_home):
    token = issue_token(proxy_home, "research-bot", scopes=("team:research",))
    response = _post(proxy, {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 4}, token)
    assert response.status_code == 200, response.text
    want = expected_micro("gpt-4o-mini", response.json()["usage"])
    assert _spent(ledger, "agent:research-bot", want) == want
    assert ledger.state("team:research").spent_micro == want
    rows = {(r.agent_id, r.model): r.calls for r in ledger.usage()}
    assert rows[("research-bot", "openai/gpt-4o-mini")] == 1

    sent = len(standin.requests)
    forged = _post(proxy, {"model": "gpt-4o-mini", "messages": MSG}, token[:-4] + "AAAA")
    assert forged.status_code == 401, forged.text
    assert isinstance(error_from_body(forged.json()), InvalidTokenError)
    assert len(standin.requests) == sent


def test_embeddings_and_text_completions_are_governed(proxy, standin, ledger, proxy_home):
    token = issue_token(proxy_home, "proxy-shapes")
    headers = {"Authorization": f"Bearer {proxy.master_key}", "x-iron-ic-token": token}
    embedded = httpx.post(f"{proxy.url}/v1/embeddings", headers=headers, timeout=60, json={
        "model": "text-embedding-3-small", "input": ["alpha text", "mail a@b.example"]})
    assert embedded.status_code == 200, embedded.text
    assert standin.requests[-1]["input"] == ["alpha text", "mail [EMAIL_REDACTED]"]
    want = expected_micro("text-embedding-3-small", embedded.json()["usage"])

    completed = httpx.post(f"{proxy.url}/v1/completions", headers=headers, timeout=60, json={
        "model": "gpt-3.5-turbo-instruct", "max_tokens": 6,
        "prompt": "Refund card 4111 1111 1111 1111"})
    assert completed.status_code == 200, completed.text
    assert standin.requests[-1]["prompt"] == "Refund card [CREDIT_CARD_REDACTED]"
    want += expected_micro("gpt-3.5-turbo-instruct", completed.json()["usage"])
    assert _spent(ledger, "agent:proxy-shapes", want) == want
    kinds = {e["kind"] for e in _events(proxy_home, "call_completed", "proxy-shapes", 2)}
    assert kinds == {"embedding", "completion"}


def test_without_a_token_the_proxy_key_pays(proxy, ledger):
    response = _post(proxy, {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 3})
    assert response.status_code == 200, response.text
    want = expected_micro("gpt-4o-mini", response.json()["usage"])
    before = ledger.state("agent:proxy-admin").spent_micro
    assert _spent(ledger, "agent:proxy-admin", before + want) >= want


def test_proxy_example_runs(proxy_env, tmp_path):
    env = {**os.environ, "IRON_HOME": str(tmp_path / "home")}
    env.pop("IRON_RUNTIME_URL", None)
    done = subprocess.run([sys.executable, str(EXAMPLE / "run.py")], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "provider received: Summarise the complaint from [EMAIL_REDACTED]" in out
    charged = [int(c) for c in re.findall(r"charged (\d+) µ\$", out)]
    assert len(charged) >= 2 and all(c > 0 for c in charged)
    stop = re.search(r"budget stop: HTTP 402 BudgetExceededError \(budget_exceeded, scope "
                     r"agent:proxy-demo-bot\); provider requests still (\d+) \(was (\d+)\)", out)
    assert stop and stop[1] == stop[2]
    usage = re.search(r"usage: proxy-demo-bot openai/gpt-4o-mini calls=(\d+) cost=(\d+)", out)
    assert int(usage[1]) == len(charged) and int(usage[2]) == sum(charged)
