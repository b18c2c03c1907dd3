"""The offline demo and the OpenAI- and Anthropic-client examples run end to end as a user
runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], tmp_path: Path) -> str:
    env = {**os.environ, "IRON_HOME": str(tmp_path / "home"), "COLUMNS": "120"}
    env.pop("IRON_RUNTIME_URL", None)
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_openai_client_example(tmp_path):
    out = _run(["examples/openai_client.py"], tmp_path)
    assert "provider received: My invoice is wrong, reach me at [EMAIL_REDACTED]" in out
    assert "ann@example.com" not in out.split("provider received:")[1]
    assert re.search(r"budget stop: session:support-bot limit \$0\.000100", out)
    calls = re.findall(r"call \d+: spent", out)
    requests = int(re.search(r"provider saw (\d+) requests", out)[1])
    assert len(calls) == requests  # every request that left was charged, none after the stop


def test_anthropic_client_example(tmp_path):
    out = _run(["examples/anthropic_client.py"], tmp_path)
    assert "provider received: My invoice is wrong, reach me at [EMAIL_REDACTED]" in out
    assert "ann@example.com" not in out.split("provider received:")[1]
    assert re.search(r"streamed reply charged \$0\.0000[1-9]", out)
    assert re.search(r"budget stop: session:claude-support limit \$0\.001000", out)
    calls = re.findall(r"call \d+: spent", out)
    requests = int(re.search(r"provider saw (\d+) requests", out)[1])
    assert len(calls) + 1 == requests  # + the streamed one; none sent after the stop


def test_demo(tmp_path):
    out = _run(["-m", "iron_sdk.cli", "demo"], tmp_path)
    assert "provider saw:   Email [EMAIL_REDACTED] or call [PHONE_REDACTED]" in out
    assert "BudgetExceededError" in out
    assert "demo-agent" in out and "gpt-4o-mini" in out  # the usage table
