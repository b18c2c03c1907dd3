"""The hook spec as a public contract: entry-point plugins, IC tokens, the CLI, and
several processes sharing one ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jwt
import pytest

from iron_sdk import (
    InvalidTokenError,
    IronCageError,
    Runtime,
    RuntimeConfig,
    RuntimeUnavailableError,
    protect_agent,
    set_runtime,
)
from iron_sdk.cli import main as cli
from iron_sdk.identity import issue_token

MSG = [{"role": "user", "content": "hello"}]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install a plugin the way a user would: a distribution with an iron_sdk entry point."""
    site = tmp_path / "site"
    (site / "veto_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "veto_plugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: veto-plugin\nVersion: 1.0\n")
    (site / "veto_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[iron_sdk]\nveto = veto_plugin\n")
    (site / "veto_plugin.py").write_text(textwrap.dedent('''
        from iron_sdk import IronCageError, hookimpl

        EVENTS = []

        class ForbiddenTopic(IronCageError):
            code = "forbidden_topic"

        @hookimpl
        def iron_llm_request(call):
            if any("forbidden" in str(m.get("content")) for m in call.messages):
                raise ForbiddenTopic("this agent may not talk about that")
            if any("crash" in str(m.get("content")) for m in call.messages):
                raise KeyError("plugin bug")

        @hookimpl
        def iron_event(event):
            EVENTS.append(event["type"])
    '''))
    monkeypatch.syspath_prepend(str(site))
    return site


def test_entry_point_plugin_vetoes_and_receives_events(third_party, iron_home, provider,
                                                      client):
    rt = Runtime(RuntimeConfig(home=iron_home))
    previous = set_runtime(rt)
    try:
        import veto_plugin

        assert rt.pm.get_plugin("veto") is veto_plugin

        @protect_agent(agent_id="plugged", budget_usd=1)
        def agent(text: str):
            return client.chat.completions.create(model="gpt-4o-mini", messages=[
                {"role": "user", "content": text}])

        with pytest.raises(veto_plugin.ForbiddenTopic):
            agent("the forbidden topic")
        assert provider.requests == []
        with pytest.raises(RuntimeUnavailableError, match="plugin failed"):
            agent("crash please")  # a broken plugin fails closed
        assert provider.requests == []
        agent("a fine topic")
        assert len(provider.requests) == 1
        assert veto_plugin.EVENTS == ["call_blocked", "call_blocked", "call_completed"]
        assert rt.ledger.state("agent:plugged").reserved_micro == 0
    finally:
        set_runtime(previous)
        rt.close()


def test_ic_token_names_the_agent_and_is_checked_at_call_time(runtime, provider, client,
                                                             iron_home, monkeypatch):
    monkeypatch.delenv("IC_TOKEN", raising=False)

    @protect_agent(ic_token=os.environ.get("IC_TOKEN") or "not-yet-a-token")
    def early():
        return "ran"

    with pytest.raises(InvalidTokenError):
        early()  # decoration succeeded; the check happens at call time

    token = issue_token(iron_home, "research-bot")
    secret = iron_home / "secret"
    assert secret.stat().st_mode & 0o777 == 0o600

    @protect_agent(ic_token=token)
    def agent():
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)

    agent()
    assert runtime.ledger.state("agent:research-bot").spent_micro > 0


def test_forged_and_expired_tokens_are_refused(runtime, iron_home):
    good = issue_token(iron_home, "bot")
    forged = jwt.encode({"sub": "bot", "iss": "iron-sdk"}, "guessed-secret-0123456789abcdef"
                        "0123456789", algorithm="HS256")
    expired = issue_token(iron_home, "bot", expires_in_s=1)
    time.sleep(2.1)
    for token, message in ((forged, "not valid"), (expired, "expired"),
                           (good[:-3] + "abc", "not valid")):
        @protect_agent(ic_token=token)
        def agent():
            return 1

        with pytest.raises(InvalidTokenError, match=message):
            agent()

    @protect_agent(ic_token=good)
    def fine():
        return 1

    assert fine() == 1


def test_cli_token_budget_and_usage(iron_home, provider, client, capsys):
    assert cli(["token", "issue", "--agent", "cli-bot", "--scope", "team:search"]) == 0
    token = capsys.readouterr().out.strip()
    assert cli(["budget", "set", "cli-bot", "--usd", "0.5"]) == 0
    assert cli(["budget", "set", "team:search", "--usd", "2"]) == 0
    capsys.readouterr()

    rt = Runtime(RuntimeConfig(home=iron_home))
    previous = set_runtime(rt)
    try:
        @protect_agent(ic_token=token)
        def agent():
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)

        agent()
        agent()
    finally:
        set_runtime(previous)
        rt.close()

    assert cli(["usage", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["agent_id"], r["model"], r["calls"]) for r in rows] == [
        ("cli-bot", "gpt-4o-mini", 2)]
    assert rows[0]["cost_micro"] > 0
    assert cli(["budget", "show", "cli-bot", "team:search", "--json"]) == 0
    budgets = {b["scope"]: b for b in json.loads(capsys.readouterr().out)}
    assert budgets["agent:cli-bot"]["limit_usd"] == 0.5
    assert budgets["team:search"]["spent_usd"] == rows[0]["cost_usd"]
    assert cli(["usage"]) == 0
    assert "cli-bot" in capsys.readouterr().out


def test_cli_reports_errors_without_traceback(iron_home, capsys, monkeypatch):
    monkeypatch.setenv("IRON_SECRET", "x" * 40)
    assert cli(["token", "issue", "--agent", "a"]) == 0
    capsys.readouterr()
    (iron_home / "a-directory").mkdir(parents=True)
    monkeypatch.setenv("IRON_LEDGER", str(iron_home / "a-directory"))
    assert cli(["usage"]) == 2
    assert "error:" in capsys.readouterr().err


CHILD = textwrap.dedent('''
    import json, sys
    import openai
    from iron_sdk import BudgetExceededError, protect_agent, current_session
    url, token = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0)
    spent, calls = 0, 0

    @protect_agent(ic_token=token)
    def agent():
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=30,
                                       messages=[{"role": "user", "content": "hi"}])
        return current_session().spent_micro

    try:
        while True:
            spent += agent()
            calls += 1
    except BudgetExceededError:
        pass
    print(json.dumps({"spent": spent, "calls": calls}))
''')


def test_processes_sharing_an_agent_budget_never_overspend(iron_home, provider, tmp_path):
    token = issue_token(iron_home, "shared-bot")
    assert cli(["budget", "set", "shared-bot", "--usd", "0.0006"]) == 0
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "IRON_HOME": str(iron_home), "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(script), provider.url, token], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    rt = Runtime(RuntimeConfig(home=iron_home))
    try:
        state = rt.ledger.state("agent:shared-bot")
    finally:
        rt.close()
    total_calls = sum(r["calls"] for r in results)
    assert state.spent_micro <= 600
    assert state.spent_micro == sum(r["spent"] for r in results)
    assert total_calls == len(provider.requests) > 4
    assert state.reserved_micro == 0


def test_import_is_light():
    code = ("import sys, iron_sdk; heavy = [m for m in ('litellm', 'crewai', 'langchain_core',"
            " 'openai', 'jwt') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "[]"


def test_errors_carry_http_shape():
    from iron_sdk.errors import BudgetExceededError, error_from_body

    err = BudgetExceededError(scope="agent:a", limit_usd=1.0, spent_usd=0.9, requested_usd=0.2)
    again = error_from_body(err.to_body())
    assert isinstance(again, BudgetExceededError) and isinstance(again, IronCageError)
    assert (again.scope, again.limit_usd, again.spent_usd, again.requested_usd) == (
        "agent:a", 1.0, 0.9, 0.2)
    assert str(again) == str(err) and err.status == 402


def test_request_hooks_run_in_pluggys_order_and_the_first_refusal_stops_them() -> None:
    # Runtime.begin_call calls iron_llm_request with its own loop (iron_sdk.plugins.
    # call_in_order); it must behave as calling the hook through pluggy does, wrappers too.
    import pluggy

    from iron_sdk import hookimpl, hookspecs
    from iron_sdk.plugins import call_in_order

    seen: list[str] = []

    def plugin(name: str, raises: bool = False, **marks: bool) -> object:
        class P:
            @hookimpl(**marks)
            def iron_llm_request(self, call: object) -> None:
                seen.append(name)
                if raises:
                    raise ValueError(name)
        return P()

    def manager(*plugins: tuple[str, object]) -> pluggy.PluginManager:
        pm = pluggy.PluginManager("iron_sdk")
        pm.add_hookspecs(hookspecs)
        for name, p in plugins:
            pm.register(p, name=name)
        return pm

    pm = manager(("last", plugin("last", trylast=True)), ("a", plugin("a")),
                 ("first", plugin("first", tryfirst=True)), ("b", plugin("b", raises=True)))
    with pytest.raises(ValueError, match="b"):
        call_in_order(pm, "iron_llm_request", call=None)
    ours = list(seen)
    seen.clear()
    with pytest.raises(ValueError, match="b"):
        pm.hook.iron_llm_request(call=None)
    assert ours == seen == ["first", "b"]  # "a" and "last" never ran

    class Wrapper:
        @hookimpl(wrapper=True)
        def iron_llm_request(self, call: object):  # noqa: ANN201
            seen.append("wrapper in")
            try:
                return (yield)
            finally:
                seen.append("wrapper out")

    seen.clear()
    pm = manager(("a", plugin("a")), ("w", Wrapper()))
    call_in_order(pm, "iron_llm_request", call=None)
    assert seen == ["wrapper in", "a", "wrapper out"]
