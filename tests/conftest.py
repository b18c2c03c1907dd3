"""Shared fixtures: a throwaway IRON_HOME, a real runtime on it, a real stand-in provider."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on loopback for the whole run (.ci/run installs it)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (optional dependency; .ci/run installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path_factory.mktemp("redis"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """A clean Redis database for one test."""
    import redis

    client = redis.Redis.from_url(redis_server + "/0")
    client.flushdb()
    client.close()
    return redis_server + "/0"


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
