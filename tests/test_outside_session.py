"""Nothing governed leaves unseen (issue 14): a call through an instrumented client outside
every protected function is governed all the same — redacted, charged to the process's
default agent, audited as ``outside_session`` — or refused where the operator says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from iron_sdk import OutsideSessionError, Runtime, RuntimeConfig, set_runtime
from iron_sdk.ledger import SQLiteLedger
from iron_sdk.policies.audit import read_events
from iron_sdk.remote import RemoteRuntime
from tests.helpers import expected_micro
from tests.router_util import ROOT, RouterProcess

SSN = "SSN 123-45-6789"
MSG = [{"role": "user", "content": f"File {SSN} please."}]


def _outside_call(client) -> None:  # noqa: ANN001 - the openai client fixture
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=10)


def test_a_call_outside_any_session_is_governed(runtime, provider, client):
    _outside_call(client)
    assert provider.requests[0]["messages"][0]["content"] == "File SSN [SSN_REDACTED] please."
    runtime.flush()
    want = expected_micro("gpt-4o-mini", provider.usage(provider.requests[0], 10))
    assert runtime.ledger.state("agent:unattributed").spent_micro == want
    events = read_events(runtime.config.home / "audit.jsonl")
    [outside] = [e for e in events if e["type"] == "outside_session"]
    assert outside["agent_id"] == "unattributed" and outside["integration"] == "openai"
    assert [e["agent_id"] for e in events if e["type"] == "call_completed"] == ["unattributed"]


def test_the_default_agent_comes_from_the_config_or_the_environment(iron_home, provider,
                                                                    client, monkeypatch):
    monkeypatch.setenv("IRON_AGENT", "nightly-batch")
    for config, agent in ((RuntimeConfig(home=iron_home), "nightly-batch"),
                          (RuntimeConfig(home=iron_home, default_agent="helper"), "helper")):
        rt = Runtime(config)
        previous = set_runtime(rt)
        try:
            _outside_call(client)
            rt.flush()
            assert rt.ledger.state(f"agent:{agent}").spent_micro > 0
        finally:
            set_runtime(previous)
            rt.close()


def test_the_operator_can_refuse_calls_outside_sessions(iron_home, provider, client):
    rt = Runtime(RuntimeConfig(home=iron_home, outside_session="refuse"))
    previous = set_runtime(rt)
    try:
        with pytest.raises(OutsideSessionError, match="@protect_agent") as caught:
            _outside_call(client)
        assert caught.value.status == 403 and caught.value.code == "outside_session"
        assert provider.requests == []
    finally:
        set_runtime(previous)
        rt.close()


def test_outside_sessions_in_http_mode(tmp_path, provider, client, monkeypatch):
    home = tmp_path / "iron"
    monkeypatch.setenv("IRON_AGENT", "remote-helper")
    with RouterProcess(home=home, config={"iron": {"anonymous_sessions": True}}) as router:
        rt = RemoteRuntime(router.url)
        previous = set_runtime(rt)
        try:
            _outside_call(client)
            rt.flush()
        finally:
            set_runtime(previous)
            rt.close()
        assert provider.requests[0]["messages"][0]["content"] == "File SSN [SSN_REDACTED] please."
        with SQLiteLedger(home / "ledger.db") as ledger:
            assert ledger.state("agent:remote-helper").spent_micro > 0
        assert any(e["type"] == "outside_session" and e["agent_id"] == "remote-helper"
                   for e in read_events(home / "audit.jsonl"))


def test_a_helper_called_before_any_protected_function_runs(tmp_path: Path, provider):
    """A fresh process: the client is used before the first protected call (only a
    decorated function exists), and that call is governed."""
    script = tmp_path / "agent.py"
    script.write_text(f"""
import openai
from iron_sdk import protect_agent

client = openai.OpenAI(base_url={provider.url!r}, api_key="sk-test", max_retries=0)

def helper():
    client.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                                   messages=[{{"role": "user", "content": "{SSN}"}}])

@protect_agent(agent_id="main-agent")
def agent():
    return "done"

helper()
print(agent())
""")
    env = {"IRON_HOME": str(tmp_path / "iron"), "PATH": "/usr/bin:/bin",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "done"
    assert provider.requests[0]["messages"][0]["content"] == "SSN [SSN_REDACTED]"
    with SQLiteLedger(tmp_path / "iron" / "ledger.db") as ledger:
        assert ledger.state("agent:unattributed").spent_micro > 0
