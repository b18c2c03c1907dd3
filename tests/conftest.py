"""Shared fixtures: a throwaway IRON_HOME, a real runtime on it, a real stand-in provider."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Nothing phones home, and litellm never fetches its price map.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.pop("IRON_RUNTIME_URL", None)

import pytest

from iron_sdk import Runtime, RuntimeConfig, set_runtime
from iron_sdk.standin import StandInProvider


@pytest.fixture
def iron_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "iron"
    monkeypatch.setenv("IRON_HOME", str(home))
    monkeypatch.delenv("IRON_SECRET", raising=False)
    monkeypatch.delenv("IRON_LEDGER", raising=False)
    return home


@pytest.fixture
def runtime(iron_home: Path) -> Iterator[Runtime]:
    rt = Runtime(RuntimeConfig(home=iron_home))
    previous = set_runtime(rt)
    yield rt
    set_runtime(previous)
    rt.close()


@pytest.fixture
def provider() -> Iterator[StandInProvider]:
    with StandInProvider() as p:
        yield p


@pytest.fixture
def client(provider: StandInProvider):  # noqa: ANN201
    import openai

    return openai.OpenAI(base_url=provider.url, api_key="sk-test-not-a-real-key",
                         max_retries=0)


@pytest.fixture
def aclient(provider: StandInProvider):  # noqa: ANN201
    import openai

    return openai.AsyncOpenAI(base_url=provider.url, api_key="sk-test-not-a-real-key",
                              max_retries=0)
