"""Disguised PII, custom patterns and allow-lists through every door: library mode, the SDK
over HTTP (door 2) and the router's OpenAI endpoint configured with ``iron: safety:`` (door 3).
Real runtime, real router process, real stand-in provider."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iron_router.config import ConfigError, parse_config
from iron_sdk import Runtime, RuntimeConfig, SafetyConfig, protect_agent, set_runtime
from iron_sdk.identity import issue_token
from iron_sdk.remote import RemoteRuntime
from tests.router_util import RouterProcess

ZW = "\u200b"
DISGUISED = {
    "credit_card": ["4111.1111.1111.1111", "4111 1111-1111.1111", f"4111{ZW}1111 1111 1111",
                    "４１１１１１１１１１１１１１１１", "٤١١١ ١١١١ ١١١١ ١١١١"],
    "email": [f"ann{ZW}@corp.example", "ann＠corp.example", "ann%40corp.example",
              "ann&#64;corp.example", "ann&commat;corp.example"],
    "iban": ["de89370400440532013000"],
    "ssn": ["123 45 6789"],
    "phone": ["555 123 4567"],
}
CUSTOM = SafetyConfig(
    patterns=[{"kind": "employee_id", "regex": r"EMP-[0-9]{6}"},
              {"kind": "loyalty_card", "regex": r"LC[0-9]{12,18}", "validator": "luhn"}],
    allow={"support@company.example"}, allow_patterns=[r"[a-z]+@status\.company\.example"])


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    # The operator's safety config (custom patterns and allow-lists are the operator's).
    proc = RouterProcess(home=tmp_path_factory.mktemp("router") / "iron", config={"iron": {
        "safety": CUSTOM.model_dump(mode="json"), "anonymous_sessions": True}})
    proc.start()
    yield proc
    proc.close()


@pytest.fixture(params=["library", "http"])
def mode(request: pytest.FixtureRequest, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "library":
        home = tmp_path / "iron"
        rt: Any = Runtime(RuntimeConfig(home=home, safety=CUSTOM))
    else:
        router = request.getfixturevalue("router")
        home, rt = router.home, RemoteRuntime(router.url)
    monkeypatch.setenv("IRON_HOME", str(home))
    monkeypatch.delenv("IRON_SECRET", raising=False)
    monkeypatch.delenv("IRON_LEDGER", raising=False)
    previous = set_runtime(rt)
    yield request.param
    set_runtime(previous)
    rt.close()


def _send(client: Any, agent_id: str, text: str, safety: SafetyConfig | None = None) -> None:
    @protect_agent(agent_id=agent_id, safety=safety)
    def agent() -> Any:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}], max_tokens=5)

    agent()


@pytest.mark.parametrize("kind", sorted(DISGUISED))
def test_disguised_values_never_reach_the_provider(mode, provider, client, kind):
    values = DISGUISED[kind]
    _send(client, f"disguise-{kind}", " / ".join(f"({v})" for v in values))
    sent = provider.requests[0]["messages"][0]["content"]
    token = f"[{kind.upper()}_REDACTED]"
    assert sent == " / ".join(f"({token})" for _ in values)


def test_custom_patterns_and_allow_lists(mode, provider, client):
    text = ("Ask support@company.example or ops@status.company.example about EMP-004211; "
            "card LC4111111111111111 (not LC4111111111111112), cc jane@corp.example")
    _send(client, "custom", text)
    sent = provider.requests[0]["messages"][0]["content"]
    assert sent == ("Ask support@company.example or ops@status.company.example about "
                    "[EMPLOYEE_ID_REDACTED]; card [LOYALTY_CARD_REDACTED] "
                    "(not LC4111111111111112), cc [EMAIL_REDACTED]")


def test_router_config_safety_section(tmp_path, provider):
    """Door 3: custom patterns and allow-lists from the router config's ``iron: safety:``."""
    home = tmp_path / "iron"
    config = {"iron": {"safety": {
        "patterns": [{"kind": "employee_id", "regex": "EMP-[0-9]{6}"}],
        "allow": ["support@company.example"]}}}
    env = {"OPENAI_BASE_URL": provider.url, "OPENAI_API_KEY": "sk-provider-0123456789"}
    with RouterProcess(home=home, config=config, env=env) as router:
        reply = httpx.post(router.url + "/v1/chat/completions", timeout=30,
                           headers={"authorization": f"Bearer {issue_token(home, 'door3')}"},
                           json={"model": "gpt-4o-mini", "max_tokens": 5, "messages": [
                               {"role": "user", "content": "support@company.example, EMP-123456,"
                                " jane%40corp.example, 4111.1111.1111.1111"}]})
    assert reply.status_code == 200
    assert provider.requests[-1]["messages"][0]["content"] == (
        "support@company.example, [EMPLOYEE_ID_REDACTED], [EMAIL_REDACTED], "
        "[CREDIT_CARD_REDACTED]")


def test_router_config_safety_is_parsed_and_bad_regexes_are_clear_errors():
    cfg = parse_config({"iron": {"safety": {
        "patterns": [{"kind": "badge", "regex": "B-[0-9]{4}", "validator": "luhn",
                      "secret": True}],
        "allow": ["a@b.example"], "allow_patterns": [".*@corp\\.example"], "ner": True,
        "secrets": "block"}}})
    safety = cfg.runtime.safety
    assert safety.patterns[0].kind == "badge" and safety.ner
    assert safety.allow == frozenset({"a@b.example"})
    assert safety.action_for("badge") == "block" and safety.action_for("email") == "redact"
    with pytest.raises(ConfigError, match=r"safety\.patterns\.0\.regex.*invalid regular "
                                          r"expression.*secret123"
                                          r"|safety\.patterns\.0\.regex.*invalid regular"):
        parse_config({"iron": {"safety": {"patterns": [{"kind": "x", "regex": "(secret123"}]}}})
    with pytest.raises(ConfigError, match=r"allow_patterns.*empty string"):
        parse_config({"iron": {"safety": {"allow_patterns": ["x*"]}}})
    with pytest.raises(ConfigError, match=r"patterns\.0\.kind"):
        parse_config({"iron": {"safety": {"patterns": [{"kind": "Bad Kind", "regex": "x"}]}}})
    with pytest.raises(ConfigError, match=r"patterns\.0\.validator"):
        parse_config({"iron": {"safety": {"patterns": [{"kind": "k", "regex": "x",
                                                         "validator": "md5"}]}}})
