"""Router-mode overhead, side by side in one run.

    .venv/bin/python benchmarks/router_overhead.py

A stand-in provider process (``python -m iron_sdk.standin``) and a router process
(``iron-runtime --mode=router``) in front of it, then:

1. Added latency: the same chat request sent directly to the stand-in and through the
   router, sequentially in interleaved pairs (httpx, keep-alive); added = router − direct
   per pair, p50 and p95.
2. Throughput: requests/s with 32 concurrent requests (asyncio + httpx.AsyncClient),
   directly and through the router; and the router's CPU time per request: the router
   process's utime+stime (``/proc/PID/stat``) over the concurrent phase / requests.
3. The SDK's HTTP mode: ``iron_sdk.remote.RemoteRuntime(url)`` — one session, then
   ``begin_call`` + ``settle_call`` round trips, p50 and p95.
4. LiteLLM's own proxy (``litellm --config``, no callbacks, a master key, no database,
   telemetry off) in front of the same stand-in, measured as 1 and 2: added latency
   p50/p95 and CPU per request at 32 concurrent (its process tree's utime+stime). It
   runs from ``.venv-proxy`` (built by the LiteLLM Proxy tests, or by
   ``examples/litellm_proxy/run.py``) or from this interpreter's environment when that
   can import the proxy; else ``litellm_proxy`` says why it was not compared.

``--policies`` gives the agent an operator policy (model allowlist, rpm and tpm limits)
and a budget, so the operator-policy checks and the ledger reservation are on the path.
``--against CHECKOUT`` runs another checkout's router (its own ``.venv``; a worktree of
the commit before a change) beside this one, with the same policies as far as that
checkout has them (``before.policies`` says which): 1 then interleaves rounds of direct, this
router and that one in rotating order, 2 alternates their phases, and ``after_vs_before``
gives the ratios; on a noisy machine that is the comparison to trust.

Targets: added ≤ 0.6 ms p50; router CPU ≤ 0.5 ms per request at 32 concurrent; SDK round
trip ≤ 1 ms p50. JSON last.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# IRON_BENCH_ROOT: measure another checkout (e.g. the pre-refactor one) with this script.
ROOT = Path(os.environ.get("IRON_BENCH_ROOT") or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ["IRON_HOME"] = tempfile.mkdtemp(prefix="iron-router-bench-")
os.environ.pop("IRON_RUNTIME_URL", None)

import httpx  # noqa: E402

PAIRS = int(os.environ.get("BENCH_ROUNDS", "2000"))
CONCURRENT_REQUESTS = int(os.environ.get("BENCH_CONCURRENT_REQUESTS", "4000"))
CONCURRENCY = 32
BODY = {"model": "gpt-4o-mini", "max_tokens": 32,
        "messages": [{"role": "user", "content": "Summarise the plan in one line."}]}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def start_standin(fast: bool) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "iron_sdk.standin", "--port", "0",
                             *(["--fast"] if fast else [])],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def added_latency(direct: str, gateways: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Interleaved rounds: the stand-in directly and through each gateway (name → its
    base URL and auth), in an order that rotates every round; added = gateway − direct
    within a round, so a slow moment of the machine weighs on every side alike."""
    data = json.dumps(BODY).encode()
    headers = {"content-type": "application/json"}
    targets = [("direct", f"{direct}/chat/completions", "Bearer sk-bench")] + [
        (name, f"{url}/v1/chat/completions", auth) for name, (url, auth) in gateways.items()]
    clients = {name: httpx.Client(timeout=30) for name, _, _ in targets}
    try:
        def one(name: str, url: str, auth: str) -> float:
            t = time.perf_counter()
            r = clients[name].post(url, content=data, headers={**headers, "authorization": auth})
            elapsed = time.perf_counter() - t
            assert r.status_code == 200, r.text
            return elapsed

        for _ in range(200):  # warm up: connections, tokenizer, price map, statements
            for target in targets:
                one(*target)
        times: dict[str, list[float]] = {name: [] for name, _, _ in targets}
        for i in range(PAIRS):
            k = i % len(targets)
            for target in targets[k:] + targets[:k]:
                times[target[0]].append(one(*target))
    finally:
        for client in clients.values():
            client.close()
    out: dict[str, Any] = {}
    for name in gateways:
        added = [g - d for g, d in zip(times[name], times["direct"], strict=True)]
        out[name] = {"direct_p50_ms": ms(statistics.median(times["direct"])),
                     "gateway_p50_ms": ms(statistics.median(times[name])),
                     "added_p50_ms": ms(statistics.median(added)),
                     "added_p95_ms": ms(pct(added, 0.95))}
    return out


DROPPED: collections.Counter[str] = collections.Counter()  # connections dropped, per URL


async def _throughput(url: str, auth: str) -> float:
    data = json.dumps(BODY).encode()
    headers = {"content-type": "application/json", "authorization": auth}
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        remaining = CONCURRENT_REQUESTS

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                try:
                    r = await client.post(url, content=data, headers=headers)
                except httpx.TransportError:  # a connection the gateway dropped: counted,
                    DROPPED[url] += 1          # and the request is made again
                    remaining += 1
                    continue
                assert r.status_code == 200, r.text

        await asyncio.gather(*(client.post(url, content=data, headers=headers)
                               for _ in range(CONCURRENCY)))  # open the connections
        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return CONCURRENT_REQUESTS / (time.perf_counter() - t)


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (``state`` first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime so far of process ``pid`` and every process under it (Linux
    ``/proc``; a gateway's workers or helpers count as its own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):  # ended meanwhile
                children.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = _stat(p)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        todo += children.get(p, [])
    return total / os.sysconf("SC_CLK_TCK")


def gateway_throughput(gateway: str, auth: str, pid: int) -> tuple[float, float]:
    """Requests/s through ``gateway`` at 32 concurrent, and its CPU ms per request."""
    cpu = cpu_seconds(pid)
    rps = asyncio.run(_throughput(f"{gateway}/v1/chat/completions", auth))
    # The warm-up gather is CONCURRENCY requests more than CONCURRENT_REQUESTS.
    cpu_per_request = (cpu_seconds(pid) - cpu) / (CONCURRENT_REQUESTS + CONCURRENCY)
    return rps, round(cpu_per_request * 1e3, 3)


def throughput(direct: str, gateways: dict[str, tuple[str, str, int]],
               phases: int = 1) -> dict[str, Any]:
    """Requests/s at 32 concurrent directly and through each gateway (name → base URL,
    auth, pid), and each gateway's CPU per request; with several gateways, ``phases``
    alternating phases each, summed."""
    d = asyncio.run(_throughput(f"{direct}/chat/completions", "Bearer sk-bench"))
    rates: dict[str, list[float]] = {name: [] for name in gateways}
    cpus: dict[str, list[float]] = {name: [] for name in gateways}
    for _ in range(phases):
        for name, (url, auth, pid) in gateways.items():
            rps, cpu_ms = gateway_throughput(url, auth, pid)
            rates[name].append(rps)
            cpus[name].append(cpu_ms)
    return {name: {"direct_rps": round(d, 1),
                   "gateway_rps": round(statistics.fmean(rates[name]), 1),
                   "gateway_vs_direct": round(statistics.fmean(rates[name]) / d, 3),
                   "gateway_cpu_ms_per_request": round(statistics.fmean(cpus[name]), 3),
                   "dropped_connections": DROPPED[f"{url}/v1/chat/completions"]}
            for name, (url, _, _) in gateways.items()}


# LiteLLM's proxy as a plain gateway: the same stand-in, a master key, nothing else.
LITELLM_CONFIG = """\
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: os.environ/IRON_STANDIN_URL
      api_key: os.environ/OPENAI_API_KEY
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
"""


def _proxy_runner() -> Any:
    """``examples/litellm_proxy/run.py``: how the LiteLLM Proxy tests start the proxy."""
    spec = importlib.util.spec_from_file_location(
        "litellm_proxy_runner", ROOT / "examples" / "litellm_proxy" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def litellm_env() -> Path | None:
    """An environment whose ``bin/litellm`` can run the proxy: ``.venv-proxy`` (the
    LiteLLM Proxy tests build it), else this interpreter's."""
    for env in (ROOT / ".venv-proxy", Path(sys.prefix)):
        if not (env / "bin" / "litellm").exists():
            continue
        probe = "import importlib.util as u, sys; sys.exit(u.find_spec('fastapi') is None)"
        if subprocess.run([str(env / "bin" / "python"), "-c", probe],
                          capture_output=True).returncode == 0:
            return env
    return None


def litellm_version(env: Path) -> str:
    done = subprocess.run([str(env / "bin" / "python"), "-c",
                           "from importlib.metadata import version; print(version('litellm'))"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def litellm_proxy(direct: str, direct_rps: float, home: Path) -> dict[str, Any]:
    """LiteLLM's proxy measured like the router (sections 1 and 2), or why not."""
    env_dir = litellm_env()
    if env_dir is None:
        return {"skipped": "LiteLLM Proxy not installed (litellm[proxy]: run the LiteLLM "
                           "Proxy tests or examples/litellm_proxy/run.py once to build "
                           ".venv-proxy)"}
    runner = _proxy_runner()
    config = home / "litellm-bench.yaml"
    config.write_text(LITELLM_CONFIG)
    master_key = "sk-" + secrets.token_urlsafe(24)
    env = runner.proxy_environment(home, master_key, direct)
    env.update(OPENAI_API_KEY="sk-bench", LITELLM_TELEMETRY_DISABLED="true")
    server = runner.ProxyServer(env_dir, env, home / "litellm-proxy.log", config=config)
    try:
        try:
            server.wait_ready()
        except RuntimeError as exc:
            return {"skipped": f"LiteLLM Proxy did not start: {str(exc)[-500:]}"}
        auth = f"Bearer {master_key}"
        latency = added_latency(direct, {"proxy": (server.url, auth)})["proxy"]
        print("litellm proxy added latency:", latency, flush=True)
        rps, cpu_ms = gateway_throughput(server.url, auth, server.process.pid)
        print("litellm proxy throughput:", rps, cpu_ms, flush=True)
    finally:
        server.stop()
    return {"version": litellm_version(env_dir), "added_latency": latency,
            "throughput_32": {"proxy_rps": round(rps, 1),
                              "proxy_vs_direct": round(rps / direct_rps, 3),
                              "proxy_cpu_ms_per_request": cpu_ms}}


def cli(home: Path, checkout: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """``iron-runtime ARGS`` of this checkout (or ``checkout``, with its own venv)."""
    python = str(checkout / ".venv" / "bin" / "python") if checkout else sys.executable
    return subprocess.run([python, "-m", "iron_sdk.cli", *args], cwd=checkout or ROOT,
                          env={**os.environ, "IRON_HOME": str(home)}, capture_output=True,
                          text=True)


def set_policies(home: Path, checkout: Path | None = None) -> dict[str, bool]:
    """An operator policy and a budget for the bench agent, through the CLI of this
    checkout (or ``checkout``); says which of the two that checkout has (an older one may
    have budgets but no operator policy)."""
    applied = {}
    for name, args in (("operator_policy", ["policy", "set", "bench", "--models", "gpt-4o*",
                                            "--rpm", "10000000", "--tpm", "1000000000"]),
                       ("budget", ["budget", "set", "bench", "--usd", "100000"])):
        done = cli(home, checkout, *args)
        if done.returncode != 0 and checkout is None:
            raise RuntimeError(done.stderr)
        applied[name] = done.returncode == 0
    return applied


def sdk_times(router: str, token: str, n: int) -> list[float]:
    """``begin_call`` + ``settle_call`` round trips of ``RemoteRuntime`` (after 200 to warm
    up), for whichever API the checkout has."""
    from iron_sdk.call import Usage
    from iron_sdk.remote import RemoteRuntime

    remote: Any = RemoteRuntime(router)
    session = remote.open_session(ic_token=token)
    usage = Usage(input_tokens=20, output_tokens=12)
    try:
        from iron_sdk.request import LlmRequest
    except ImportError:  # before the request model: the request's fields as arguments
        def begin() -> Any:
            return remote.begin_call(session, model="gpt-4o-mini",
                                     messages=BODY["messages"], max_tokens=32)
    else:
        def begin() -> Any:
            return remote.begin_call(session, LlmRequest.chat(
                "gpt-4o-mini", BODY["messages"], max_tokens=32))
    times = []
    for i in range(n + 200):
        t = time.perf_counter()
        remote.settle_call(begin(), usage)
        if i >= 200:
            times.append(time.perf_counter() - t)
    remote.close_session(session)
    remote.close()
    return times


def sdk_round_trip(sides: dict[str, tuple[str, str, Path | None]],
                   blocks: int = 4) -> dict[str, dict[str, float]]:
    """The SDK's HTTP mode against each router (name → URL, token, checkout or None for
    this one), each block in a fresh client process of its checkout, alternating."""
    here = Path(__file__).resolve()
    times: dict[str, list[float]] = {name: [] for name in sides}
    env = {**os.environ}
    env.pop("IRON_BENCH_ROOT", None)
    for block in range(blocks):
        order = list(sides) if block % 2 == 0 else list(reversed(sides))
        for name in order:
            url, token, checkout = sides[name]
            python = str(checkout / ".venv" / "bin" / "python") if checkout else sys.executable
            done = subprocess.run(
                [python, str(here), "--sdk-times", url, token, str(max(PAIRS // blocks, 1))],
                env={**env, "IRON_BENCH_ROOT": str(checkout)} if checkout else env,
                cwd=checkout or ROOT, capture_output=True, text=True, check=True)
            times[name] += json.loads(done.stdout)
    return {name: {"begin_settle_p50_ms": ms(statistics.median(t)),
                   "begin_settle_p95_ms": ms(pct(t, 0.95))} for name, t in times.items()}


def before_token(checkout: Path, home: Path) -> str:
    """An agent token from the other checkout's own CLI (its token format, its key)."""
    done = cli(home, checkout, "token", "issue", "--agent", "bench")
    done.check_returncode()
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stdlib-standin", action="store_true",
                        help="use the stand-in's stdlib server (default: its uvicorn mode; "
                             "the stdlib one caps the 32-concurrent numbers)")
    parser.add_argument("--policies", action="store_true",
                        help="an operator policy and a budget on the bench agent")
    parser.add_argument("--no-litellm", action="store_true",
                        help="skip the side-by-side LiteLLM Proxy measurement")
    parser.add_argument("--sdk-times", nargs=3, metavar=("URL", "TOKEN", "N"),
                        help=argparse.SUPPRESS)  # a client process of sdk_round_trip
    parser.add_argument("--against", type=Path, metavar="CHECKOUT",
                        help="also run CHECKOUT's router (a checkout with its own .venv, "
                             "e.g. a worktree of an older commit) side by side, with the "
                             "same policies if it has them: latency rounds interleaved, "
                             "throughput phases alternated")
    args = parser.parse_args()
    if args.sdk_times:
        url, token, n = args.sdk_times
        print(json.dumps(sdk_times(url, token, int(n))))
        return
    from iron_sdk.identity import issue_token
    from tests.router_util import RouterProcess

    home = Path(os.environ["IRON_HOME"])
    standin, direct = start_standin(fast=not args.stdlib_standin)
    try:
        upstream = {"OPENAI_BASE_URL": direct, "OPENAI_API_KEY": "sk-bench"}
        with contextlib.ExitStack() as stack:
            router = stack.enter_context(RouterProcess(home=home, env=upstream))
            token = issue_token(home, "bench")
            if args.policies:
                set_policies(home)
            assert router.proc is not None
            gateways = {"router": (router.url, f"Bearer {token}", router.proc.pid)}
            if args.against:
                other = stack.enter_context(RouterProcess(home=home / "before", env=upstream,
                                                          root=args.against.resolve()))
                assert other.proc is not None
                before_policies = (set_policies(home / "before", args.against.resolve())
                                   if args.policies else {})
                auth = f"Bearer {before_token(args.against.resolve(), home / 'before')}"
                gateways["before"] = (other.url, auth, other.proc.pid)
            latency = added_latency(direct, {n: (url, auth) for n, (url, auth, _) in
                                             gateways.items()})
            print("added latency:", latency, flush=True)
            rps = throughput(direct, gateways, phases=2 if args.against else 1)
            print("throughput:", rps, flush=True)
            sdk = sdk_round_trip({"router": (router.url, token, None), **(
                {"before": (gateways["before"][0], gateways["before"][1].split()[1],
                            args.against.resolve())} if args.against else {})})
            print("sdk round trip:", sdk, flush=True)
        litellm = ({"skipped": "--no-litellm"} if args.no_litellm
                   else litellm_proxy(direct, rps["router"]["direct_rps"], home))
    finally:
        standin.terminate()
        standin.wait(10)
    result: dict[str, Any] = {
        "pairs": PAIRS, "concurrency": CONCURRENCY, "concurrent_requests": CONCURRENT_REQUESTS,
        "standin": "stdlib" if args.stdlib_standin else "uvicorn (--fast)",
        "policies": args.policies,
        "added_latency": latency["router"], "throughput_32": rps["router"],
        "sdk_http_round_trip": sdk["router"],
        "targets": {"added_p50_ms": 0.6, "router_cpu_ms_per_request": 0.5,
                    "sdk_round_trip_p50_ms": 1.0},
        "litellm_proxy": litellm,
    }
    if args.against:
        after, before = result, {"added_latency": latency["before"],
                                 "throughput_32": rps["before"],
                                 "sdk_http_round_trip": sdk["before"]}
        result["before"] = {"checkout": str(args.against), "policies": before_policies,
                            **before}
        result["after_vs_before"] = {
            "added_p50": round(after["added_latency"]["added_p50_ms"]
                               / before["added_latency"]["added_p50_ms"], 3),
            "cpu_per_request": round(
                after["throughput_32"]["gateway_cpu_ms_per_request"]
                / before["throughput_32"]["gateway_cpu_ms_per_request"], 3),
            "sdk_round_trip_p50": round(
                after["sdk_http_round_trip"]["begin_settle_p50_ms"]
                / before["sdk_http_round_trip"]["begin_settle_p50_ms"], 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
