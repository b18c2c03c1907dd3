"""Router mode: an unmodified OpenAI client governed by ``iron-runtime --mode=router``.

The agent's code changes nothing but its base URL and API key (an IC token). Runs
offline: a local stand-in plays the provider, IRON_HOME is a temporary folder.

    python3 -m uv run --extra all python examples/router_mode.py
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import openai

from iron_sdk.standin import StandInProvider

HOME = tempfile.mkdtemp(prefix="iron-router-example-")
ENV = {**os.environ, "IRON_HOME": HOME, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
ENV.pop("IRON_RUNTIME_URL", None)


def iron_runtime(*args: str) -> str:
    """The ``iron-runtime`` CLI on the same IRON_HOME as the router."""
    done = subprocess.run([sys.executable, "-m", "iron_sdk.cli", *args], env=ENV, check=True,
                          capture_output=True, text=True)
    return done.stdout.strip()


def start_router(provider_url: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**ENV, "OPENAI_BASE_URL": provider_url, "OPENAI_API_KEY": "sk-local-provider-key"}
    router = subprocess.Popen([sys.executable, "-m", "iron_sdk.cli", "--mode=router",
                               "--port", str(port)], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return router, url
        except httpx.HTTPError:
            if router.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the router did not start") from None
        time.sleep(0.05)


def main() -> int:
    with StandInProvider() as provider:
        router, url = start_router(provider.url)
        print(f"router on {url}, provider stand-in on {provider.url}")
        token = iron_runtime("token", "issue", "--agent", "support-bot")

        # The agent: a plain OpenAI client. Only base_url and api_key point at the router.
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0)
        reply = client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=50,
            messages=[{"role": "user", "content": "Where is my order?"}])
        print(f"reply: {reply.choices[0].message.content}")
        print(f"usage: {reply.usage.prompt_tokens} in, {reply.usage.completion_tokens} out")

        client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=50,
            messages=[{"role": "user", "content": "My invoice is wrong, mail alice@example.com"}])
        print(f"stand-in saw: {provider.requests[-1]['messages'][0]['content']}")

        stream = client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=50, stream=True,
            messages=[{"role": "user", "content": "Stream me an answer."}])
        print("streamed: " + "".join(c.choices[0].delta.content or "" for c in stream
                                      if c.choices))

        print(iron_runtime("budget", "set", "support-bot", "--usd", "0.000001"))
        sent = len(provider.requests)
        try:
            client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=50,
                messages=[{"role": "user", "content": "One more question."}])
        except openai.APIStatusError as exc:
            print(f"budget stop: {exc.status_code} {exc.body['code']}: {exc.body['message']}")
        print(f"requests the provider saw after the stop: {len(provider.requests) - sent}")

        router.send_signal(signal.SIGTERM)  # finishes in-flight calls, writes settlements
        print(f"router exited with {router.wait(20)}")
    # The router wrote to the same ledger the CLI and library mode use.
    for row in json.loads(iron_runtime("usage", "--json")):
        print(f"ledger: {row['agent_id']} spent ${row['cost_usd']:.6f} on {row['calls']} "
              f"{row['model']} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
