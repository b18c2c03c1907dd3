"""Start and stop a real ``iron-runtime --mode=router`` process for tests and benchmarks;
run the real CLI; wait for what another process does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
_NOT_INHERITED = ("IRON_RUNTIME_URL", "IRON_LEDGER", "IRON_SECRET", "OPENAI_API_KEY",
                  "OPENAI_BASE_URL", "OPENAI_API_BASE", "ANTHROPIC_API_KEY")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(home: Path, *args: str, ledger: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """The real ``iron-runtime`` in its own process (what an operator types)."""
    env = {"IRON_HOME": str(home), "PATH": "/usr/bin:/bin"}
    if ledger:
        env["IRON_LEDGER"] = ledger
    return subprocess.run([sys.executable, "-m", "iron_sdk.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=check)


def wait_until(predicate: Callable[[], Any], what: str = "the condition",
               timeout_s: float = 20.0) -> Any:
    """The first true value of ``predicate()`` (fails after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def seconds_until(predicate: Callable[[], Any], timeout_s: float) -> float:
    """Seconds until ``predicate()`` is true (fails after ``timeout_s``)."""
    start = time.monotonic()
    wait_until(predicate, f"it within {timeout_s}s", timeout_s)
    return time.monotonic() - start


class RouterProcess:
    """A real router subprocess on ``127.0.0.1:PORT`` with ``IRON_HOME=home``::

        with RouterProcess(home=tmp, config={"model_list": [...]}) as router:
            httpx.get(router.url + "/healthz")
    """

    def __init__(self, *, home: Path, config: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None, root: Path | None = None) -> None:
        """``root``: another checkout to run, with its own ``.venv`` (a benchmark's
        "before"); default this one, with this interpreter."""
        self.home = Path(home)
        self.root = root
        self.config = config
        self.extra_env = env or {}
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path: Path | None = None
        self._stderr: IO[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> RouterProcess:
        """Pick a free port, write the config, start the process, wait for ``/healthz``."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        python = str(self.root / ".venv" / "bin" / "python") if self.root else sys.executable
        cmd = [python, "-m", "iron_sdk.cli", "--mode=router", "--port", str(self.port)]
        if self.config is not None:
            fd, name = tempfile.mkstemp(prefix="router-", suffix=".yaml", dir=self.home)
            with os.fdopen(fd, "w") as f:
                yaml.safe_dump(self.config, f)
            self.config_path = Path(name)
            cmd += ["--config", str(self.config_path)]
        env = dict(os.environ)
        # Hermetic: no ledger, secret, runtime URL or provider endpoint/key from the
        # developer's shell (a real OPENAI_API_KEY must never be used by a test).
        for name in _NOT_INHERITED:
            env.pop(name, None)
        env.update({"IRON_HOME": str(self.home), "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    "PYTHONUNBUFFERED": "1", **self.extra_env})
        # stderr goes to a file: a pipe nobody reads would block a chatty router.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=self.root or ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=self._stderr)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited with {self.proc.returncode}:\n{self.stderr}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise RuntimeError(f"router not healthy after {timeout_s}s:\n{self.stderr}")
            time.sleep(0.05)

    @property
    def stderr(self) -> str:
        """Everything the router wrote to stderr so far (its request log)."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        """Send ``sig`` and wait for the exit code (SIGKILL after ``timeout_s``)."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def wait(self, timeout_s: float = 20.0) -> int:
        """Wait for the process to exit on its own (after a signal sent elsewhere)."""
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def close(self) -> None:
        self.stop()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> RouterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        # Keep stderr readable after the with block: tests assert on the log afterwards.
        self.stop()
