"""LiteLLM Proxy governed by iron-sdk, end to end and offline.

Starts a local stand-in provider and the real LiteLLM Proxy (``config.yaml`` beside this
file, from its own environment ``.venv-proxy``), then calls the proxy the way any
OpenAI client does: spend per request from the shared ledger, a redacted prompt, a
budget stop (HTTP 402, the provider never contacted), the usage per agent.

    python3 -m uv run --extra all --extra dev python examples/litellm_proxy/run.py

The first run builds ``.venv-proxy`` (``uv venv`` + ``uv pip install -r
requirements.txt -e .``; needs PyPI once). IRON_HOME is a temporary folder.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIG = HERE / "config.yaml"
REQUIREMENTS = HERE / "requirements.txt"
PROXY_ENV = ROOT / ".venv-proxy"


def env_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def build_proxy_env(env_dir: Path = PROXY_ENV) -> None:
    """Create ``env_dir`` with LiteLLM Proxy and this repository (core iron-sdk only)."""
    uv = [sys.executable, "-m", "uv"]
    steps = {
        "uv venv": [*uv, "venv", "--quiet", "--clear", "--python", sys.executable,
                    str(env_dir)],
        "uv pip install": [*uv, "pip", "install", "--quiet", "--python",
                           str(env_python(env_dir)), "-r", str(REQUIREMENTS), "-e", str(ROOT)],
    }
    for name, cmd in steps.items():
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            raise RuntimeError(f"`{name}` failed:\n{done.stderr[-3000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proxy_environment(iron_home: Path, master_key: str, provider_url: str) -> dict[str, str]:
    """The proxy's environment: offline, no database, our IRON_HOME."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "IRON_RUNTIME_URL", "VIRTUAL_ENV", "PYTHONPATH")}
    env.update(IRON_HOME=str(iron_home), LITELLM_MASTER_KEY=master_key,
               IRON_STANDIN_URL=provider_url, OPENAI_API_KEY="sk-standin-not-a-real-key",
               LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1",
               LITELLM_LOG="ERROR")
    return env


class ProxyServer:
    """``litellm --config ... --port ...`` from ``env_dir``, as a child process."""

    def __init__(self, env_dir: Path, env: dict[str, str], log_path: Path,
                 config: Path = CONFIG) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.process = subprocess.Popen(
            [str(env_dir / "bin" / "litellm"), "--config", str(config),
             "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(config.parent))

    def wait_ready(self, timeout_s: float = 240.0) -> None:
        """Wait for ``/health/liveliness``; the proxy's imports take 10-30 s."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"LiteLLM Proxy exited ({self.process.returncode}):\n"
                                   + self.log_tail())
            try:
                if httpx.get(f"{self.url}/health/liveliness", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"LiteLLM Proxy not ready after {timeout_s:.0f}s:\n"
                           + self.log_tail())

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> ProxyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(read: Callable[[], Any], ok: Callable[[Any], bool], timeout_s: float = 20.0
             ) -> Any:
    """Poll ``read()`` until ``ok(value)``: the proxy writes its ledger behind the reply."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


def main() -> None:
    home = Path(os.environ.get("IRON_HOME") or tempfile.mkdtemp(prefix="iron-example-"))
    os.environ["IRON_HOME"] = str(home)
    if not (PROXY_ENV / "bin" / "litellm").exists():
        print(f"building {PROXY_ENV.name} once (LiteLLM Proxy + iron-sdk; needs PyPI) ...")
        build_proxy_env()

    import openai

    from iron_sdk.errors import error_from_body
    from iron_sdk.identity import issue_token
    from iron_sdk.ledger import open_ledger
    from iron_sdk.standin import StandInProvider

    ledger = open_ledger(str(home / "ledger.db"))
    token = issue_token(home, "proxy-demo-bot")  # what the agent sends as x-iron-ic-token
    ledger.set_limit("agent:proxy-demo-bot", 60)  # 60 µ$ for this agent, across requests
    master_key = "sk-" + secrets.token_urlsafe(32)

    with StandInProvider() as provider, ProxyServer(
            PROXY_ENV, proxy_environment(home, master_key, provider.url),
            home / "proxy.log") as proxy:
        proxy.wait_ready()
        print(f"LiteLLM Proxy on {proxy.url} (callbacks: iron_litellm.proxy.handler)")
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=master_key, max_retries=0,
                               default_headers={"x-iron-ic-token": token})

        def spent() -> int:
            return ledger.state("agent:proxy-demo-bot").spent_micro

        def charged(label: str, before: int, requests: int) -> None:
            after = wait_for(spent, lambda v: v > before)
            print(f"{label}: charged {after - before} µ$ "
                  f"(agent total {after} µ$ of 60 µ$; provider requests {requests})")

        before = spent()
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=20, messages=[
            {"role": "user", "content": "Summarise the complaint from ann@example.com"}])
        charged("plain request", before, len(provider.requests))
        print("provider received:", provider.requests[-1]["messages"][0]["content"])

        before = spent()
        stream = client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=20, stream=True,
            messages=[{"role": "user", "content": "Draft a short reply."}])
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        charged(f"streamed request ({len(text.split())} words)", before, len(provider.requests))

        while True:
            before, sent = spent(), len(provider.requests)
            try:
                client.chat.completions.create(model="gpt-4o-mini", max_tokens=20, messages=[
                    {"role": "user", "content": "And one more thing."}])
            except openai.APIStatusError as exc:
                error = error_from_body(exc.response.json())
                print(f"budget stop: HTTP {exc.status_code} {type(error).__name__} "
                      f"({error.code}, scope {getattr(error, 'scope', '?')}); provider "
                      f"requests still {len(provider.requests)} (was {sent})")
                break
            charged("another request", before, len(provider.requests))

        for row in ledger.usage():
            print(f"usage: {row.agent_id} {row.model} calls={row.calls} "
                  f"cost={row.cost_micro} µ$")
    ledger.close()


if __name__ == "__main__":
    main()
