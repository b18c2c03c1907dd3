"""Hardening: private files, key rotation, Host check, metrics labels, strict JSON bodies,
and the event-loop offload helper."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import jwt
import pytest

from iron_sdk.cli import main as cli
from iron_sdk.errors import InvalidTokenError
from iron_sdk.home import ensure_home, secure_file
from iron_sdk.identity import KEYRING, TokenVerifier, issue_token, key_id, rotate_key
from tests.ledgers import Clock

DAY = 86400.0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- files ---------------------------------------------------------------------------------
def test_home_is_created_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        home = ensure_home(tmp_path / "a" / "iron")
        assert mode(home) == 0o700
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o755)
        os.chmod(shared, 0o755)
        ensure_home(shared)
        assert mode(shared) == 0o755  # an existing home is the user's choice
    finally:
        os.umask(old)


def test_secure_file_tightens_the_ledger_and_its_wal(tmp_path: Path) -> None:
    import sqlite3

    old = os.umask(0o022)
    try:
        db = tmp_path / "ledger.db"
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        assert mode(db) == 0o644 and (tmp_path / "ledger.db-wal").exists()
        secure_file(db)
        for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
            assert mode(tmp_path / name) == 0o600, name
        conn.close()
        secure_file(tmp_path / "missing.db")  # nothing to do, no error
    finally:
        os.umask(old)


def test_first_token_creates_a_private_home_and_secret(iron_home: Path) -> None:
    old = os.umask(0o022)
    try:
        token = issue_token(iron_home, "bot")
    finally:
        os.umask(old)
    assert mode(iron_home) == 0o700 and mode(iron_home / "secret") == 0o600
    secret = (iron_home / "secret").read_bytes().strip()
    assert jwt.get_unverified_header(token)["kid"] == key_id(secret)
    assert TokenVerifier(iron_home).verify(token)["sub"] == "bot"


# -- key rotation --------------------------------------------------------------------------
def test_rotation_grace_and_a_running_verifier(iron_home: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    old_token = issue_token(iron_home, "bot")
    secret = (iron_home / "secret").read_bytes().strip()
    legacy = jwt.encode({"sub": "old", "iss": "iron-sdk"}, secret, algorithm="HS256")
    assert "kid" not in jwt.get_unverified_header(legacy)
    verifier = TokenVerifier(iron_home, clock=clock)  # created before the rotation
    assert verifier.verify(old_token)["sub"] == "bot"
    assert verifier.verify(legacy)["sub"] == "old"

    assert cli(["secret", "rotate", "--grace", "7d"]) == 0
    assert mode(iron_home / KEYRING) == 0o600
    new_token = issue_token(iron_home, "bot")
    new_kid = jwt.get_unverified_header(new_token)["kid"]
    assert new_kid != key_id(secret)
    # The running verifier looks at the keyring at most once a second: move that on.
    monkeypatch.setattr(time, "monotonic", lambda: clock.now + 10)
    assert verifier.verify(new_token)["sub"] == "bot"
    assert verifier.verify(old_token)["sub"] == "bot"  # within the grace period
    assert verifier.verify(legacy)["sub"] == "old"  # no kid: the original secret

    clock.now += 7 * DAY + 1  # grace over (cached results are not trusted past it)
    for token in (old_token, legacy):
        with pytest.raises(InvalidTokenError, match="grace period has ended"):
            verifier.verify(token)
    assert verifier.verify(new_token)["sub"] == "bot"
    fresh = TokenVerifier(iron_home, clock=clock)
    with pytest.raises(InvalidTokenError):
        fresh.verify(old_token)

    # A second rotation after the grace drops the expired key from the keyring.
    rotate_key(iron_home, grace_s=60, now=clock.now)
    kids = [k["kid"] for k in json.loads((iron_home / KEYRING).read_text())["keys"]]
    assert kids[0] == new_kid and key_id(secret) not in kids and len(kids) == 2


def test_zero_grace_refuses_old_tokens_at_once(iron_home: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    old_token = issue_token(iron_home, "bot")
    verifier = TokenVerifier(iron_home)
    verifier.verify(old_token)
    rotate_key(iron_home, grace_s=0)
    monkeypatch.setattr(time, "monotonic", lambda: 1e12)
    with pytest.raises(InvalidTokenError):
        verifier.verify(old_token)
    assert verifier.verify(issue_token(iron_home, "bot"))["sub"] == "bot"


def test_iron_secret_is_a_single_key(iron_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRON_SECRET", "an-operator-secret-long-enough-for-hs256-0123456789")
    token = issue_token(iron_home, "bot")
    assert TokenVerifier(iron_home).verify(token)["sub"] == "bot"
    assert not (iron_home / "secret").exists()
    assert cli(["secret", "rotate"]) == 2  # the operator rotates IRON_SECRET itself
    with pytest.raises(InvalidTokenError, match="IRON_SECRET"):
        rotate_key(iron_home, grace_s=60)


def test_keyring_readable_by_others_is_refused(iron_home: Path) -> None:
    rotate_key(iron_home, grace_s=60)
    token = issue_token(iron_home, "bot")
    os.chmod(iron_home / KEYRING, 0o644)
    with pytest.raises(InvalidTokenError, match="chmod 600"):
        TokenVerifier(iron_home).verify(token)


def test_unknown_kid_is_refused(iron_home: Path) -> None:
    issue_token(iron_home, "bot")
    other = jwt.encode({"sub": "x", "iss": "iron-sdk"}, "s" * 40, algorithm="HS256",
                       headers={"kid": "not-ours"})
    with pytest.raises(InvalidTokenError, match="does not have"):
        TokenVerifier(iron_home).verify(other)


# -- strict JSON bodies --------------------------------------------------------------------
def _request(chunks: list[bytes], headers: dict[str, str] | None = None):  # noqa: ANN202
    """A real Starlette Request fed by an ASGI receive channel, in ``chunks``."""
    from starlette.requests import Request

    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
               for i, c in enumerate(chunks)] or [{"type": "http.request", "body": b""}]

    async def receive() -> dict[str, object]:
        return pending.pop(0)

    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw_headers,
                    "query_string": b""}, receive)


CHAT = {"model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 64, "stream": False,
        "messages": [{"role": "system", "content": "You are terse. " * 20},
                     {"role": "user", "content": "Summarise: " + "lorem ipsum dolor " * 80}]}


def test_parse_json_accepts_normal_bodies() -> None:
    from iron_router.bodies import parse_json

    raw = json.dumps(CHAT).encode()
    assert parse_json(raw) == CHAT
    emoji = b'{"m": "\\ud83d\\ude00 caf\\u00e9", "k": [1.5, -2, true, null]}'
    assert parse_json(emoji)["m"] == "\U0001F600 café"
    history = {"messages": [{"role": "user", "content": str(i)} for i in range(500)]}
    assert parse_json(json.dumps(history).encode()) == history  # many brackets, shallow
    nested = "[" * 63 + "]" * 63
    assert parse_json(f'{{"a": {nested}}}'.encode())["a"]  # depth 64 exactly


@pytest.mark.parametrize(("raw", "message"), [
    (b"", "empty"),
    (b"[1, 2]", "JSON object"),
    (b'"text"', "JSON object"),
    (b"null", "JSON object"),
    (b'{"a": 1', "not valid JSON"),
    (b'{"a": NaN}', "NaN"),
    (b'{"a": -Infinity}', "Infinity"),
    (b'{"budget_usd": 1e309}', "too large"),
    (b'{"a": "\\ud800"}', "lone surrogate"),
    (b'{"\\udfff": 1}', "lone surrogate"),
    (b'{"a": [{"b": ["x\\uDBFFy"]}]}', "lone surrogate"),
    (b'{"a": "\xff\xfe"}', "UTF-8"),
    (b'{"a": "\xed\xa0\x80"}', "UTF-8"),  # a surrogate encoded as UTF-8 bytes
    (b'\xef\xbb\xbf{"a": 1}', "not valid JSON"),  # BOM
    (b'{"a": ' + b"1" * 5000 + b"}", "not valid JSON"),  # past int's digit limit
    (b'{"a": ' + b"[" * 64 + b"]" * 64 + b"}", "deeper than 64"),
    (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "deeper than 64"),
    (b'{"a": ' + b'{"b":' * 5000 + b"1" + b"}" * 5000 + b"}", "deeper than 64"),
])
def test_parse_json_refuses_with_a_400(raw: bytes, message: str) -> None:
    from iron_router.bodies import InvalidBodyError, parse_json

    with pytest.raises(InvalidBodyError, match=message) as info:
        parse_json(raw)
    assert info.value.status == 400 and info.value.to_body()["error"]["code"] == "invalid_request"


async def test_read_json_limits_size_while_streaming() -> None:
    from iron_router.bodies import PayloadTooLargeError, read_json

    raw = json.dumps(CHAT).encode()
    request = _request([raw[:100], raw[100:]])
    assert await read_json(request, 10_000) == CHAT
    assert await request.body() == raw  # the handler can still forward the bytes
    with pytest.raises(PayloadTooLargeError) as info:  # no Content-Length: counted
        await read_json(_request([b"x" * 600, b"x" * 600]), 1000)
    assert info.value.status == 413 and info.value.code == "payload_too_large"
    with pytest.raises(PayloadTooLargeError):  # a lying Content-Length does not help
        await read_json(_request([b"{" * 2000], {"content-length": "2"}), 1000)
    with pytest.raises(PayloadTooLargeError, match="5000 bytes"):
        await read_json(_request([b"{}"], {"content-length": "5000"}), 1000)
    assert await read_json(_request([]), 1000, optional=True) == {}


async def test_read_body_stops_at_a_disconnect_and_reads_once() -> None:
    from starlette.requests import ClientDisconnect, Request

    from iron_router.bodies import read_body

    messages = [{"type": "http.request", "body": b'{"a"', "more_body": True},
                {"type": "http.disconnect"}]  # the client leaves mid-body

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    gone = Request({"type": "http", "method": "POST", "path": "/", "headers": [],
                    "query_string": b""}, receive)
    with pytest.raises(ClientDisconnect):
        await read_body(gone, 1000)
    whole = _request([b'{"a"', b": 1}"])
    assert await read_body(whole, 1000) == b'{"a": 1}'
    assert await read_body(whole, 1000) == b'{"a": 1}'  # read again: the same bytes


async def test_read_json_parses_large_bodies_off_the_loop() -> None:
    import threading

    from iron_router.bodies import InvalidBodyError, read_json
    from iron_router.offload import Offload

    threads: list[str] = []

    class Spy(Offload):
        async def run(self, func, *args, size=0):  # noqa: ANN001, ANN202
            def spied(*a):  # noqa: ANN002, ANN202
                threads.append(threading.current_thread().name)
                return func(*a)
            return await super().run(spied, *args, size=size)

    offload = Spy(max_threads=2, inline_max=1024)
    assert await read_json(_request([json.dumps(CHAT).encode()]), 1 << 20,
                           offload=offload) == CHAT  # 2 KB > 1 KB: off the loop
    assert threads and threads[0] != threading.current_thread().name
    with pytest.raises(InvalidBodyError):  # the error crosses the thread
        await read_json(_request([b'{"a": NaN' + b" " * 2000 + b"}"]), 1 << 20,
                        offload=offload)
    assert await read_json(_request([b'{"a": 1}']), 100, offload=offload) == {"a": 1}
    assert len(threads) == 2  # the small one ran inline


# -- offload -------------------------------------------------------------------------------
async def test_offload_runs_inline_when_small_and_bounded_otherwise() -> None:
    import threading

    import anyio

    from iron_router.offload import Offload

    loop_thread = threading.current_thread()
    offload = Offload(max_threads=2, inline_max=32 * 1024)
    assert await offload.run_sized(100, threading.current_thread) is loop_thread
    assert await offload.run_sized(33 * 1024, threading.current_thread) is not loop_thread
    assert offload.inline(32 * 1024) and not offload.inline(32 * 1024 + 1)

    running = 0
    peak = 0
    lock = threading.Lock()
    release = threading.Event()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(5)
        with lock:
            running -= 1

    ticks = 0
    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(offload.run, work)
        for _ in range(20):  # the loop keeps running while the pool is busy
            await anyio.sleep(0.005)
            ticks += 1
        release.set()
    assert peak == 2 and ticks == 20

    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await offload.run(boom)
    with pytest.raises(ValueError):
        Offload(max_threads=0)


async def test_a_cancelled_caller_waits_for_its_offloaded_work_to_finish() -> None:
    import asyncio
    import threading

    from iron_router.offload import Offload

    offload = Offload(max_threads=1)
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def work() -> None:
        started.set()
        release.wait(5)
        finished.set()

    task = asyncio.create_task(offload.run(work))
    while not started.is_set():
        await asyncio.sleep(0.001)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # still waiting for the thread: its work is not abandoned
    task.cancel()  # a second cancellation does not cut the wait short either
    await asyncio.sleep(0.02)
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


async def test_big_offloaded_work_runs_with_full_collections_held_off() -> None:
    import gc
    import threading

    from iron_router.offload import Offload, full_collections_held

    normal = gc.get_threshold()
    offload = Offload(hold_gc_over=1024)
    assert await offload.run(gc.get_threshold, size=1024) == normal
    held = await offload.run(gc.get_threshold, size=1025)
    assert held[:2] == normal[:2] and held[2] > 1_000_000  # no full pass in the meantime
    assert gc.get_threshold() == normal

    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await offload.run(boom, size=1 << 20)
    assert gc.get_threshold() == normal
    # Overlapping holds (two threads): the last one out restores the threshold.
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with full_collections_held():
            inside.set()
            leave.wait(5)

    other = threading.Thread(target=hold)
    with full_collections_held():
        other.start()
        assert inside.wait(5)
    assert gc.get_threshold() != normal  # the other thread still holds
    leave.set()
    other.join()
    assert gc.get_threshold() == normal


# -- /metrics ------------------------------------------------------------------------------
def test_metric_labels_are_escaped_and_folded() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from iron_router.metrics import OTHER, RouterMetrics

    m = RouterMetrics(max_agents=2, max_models=2, known_models=("gpt-4o-mini",))

    def event(kind: str, agent: str, model: str, **extra: object) -> None:
        m.iron_event({"type": kind, "agent_id": agent, "model": model, "cost_micro": 10,
                      "input_tokens": 1, "output_tokens": 2, **extra})

    event("call_completed", "a", "\ud800")
    event("call_completed", "b\n\x00", "x" * 10_000)
    event("call_completed", "c", "m3")  # past both limits
    event("call_blocked", "a", "made-up", reason="unknown_model_price")
    event("call_completed", "a", "gpt-4o-mini", cost_micro=-5, input_tokens=10**400)
    m.request("/v1/chat/completions", 400, "a", "never-governed", 0.01)
    text = m.render().decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    agents = {s.labels["agent"] for s in samples if "agent" in s.labels}
    models = {s.labels["model"] for s in samples if "model" in s.labels}
    assert agents == {"a", "b\\n\\x00", OTHER}
    assert models == {"\\ud800", "x" * 120, "gpt-4o-mini", OTHER}
    assert "made-up" not in text and "never-governed" not in text


def test_router_metrics_survive_hostile_model_names(tmp_path: Path, provider) -> None:  # noqa: ANN001
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from tests.router_util import RouterProcess

    home = tmp_path / "iron"
    token = issue_token(home, "bot")
    env = {"OPENAI_BASE_URL": provider.url, "OPENAI_API_KEY": "sk-standin-0123456789"}
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    msg = '"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5'
    with RouterProcess(home=home, env=env) as router, httpx.Client(
            base_url=router.url, headers=headers, timeout=30) as http:
        assert mode(home) == 0o700
        assert mode(home / "ledger.db") == 0o600 and mode(home / "secret") == 0o600
        ok = http.post("/v1/chat/completions", content=f'{{"model": "gpt-4o-mini", {msg}}}')
        assert ok.status_code == 200
        for body in (f'{{"model": "\\ud800", {msg}}}', f'{{"model": "a\\u0000\\n\\"b", {msg}}}',
                     f'{{"model": "{"y" * 100_000}", {msg}}}'):
            http.post("/v1/chat/completions", content=body)  # the handler's answer aside,
            assert http.get("/metrics").status_code == 200  # the scrape survives it
        for i in range(1500):
            r = http.post("/v1/chat/completions",
                          content=f'{{"model": "made-up-model-{i:05d}", {msg}}}')
            assert r.status_code < 500
        for name in ("ledger.db-wal", "ledger.db-shm", "audit.jsonl"):
            assert not (home / name).exists() or mode(home / name) == 0o600, name
        scrape = http.get("/metrics")
        assert scrape.status_code == 200
        assert len(scrape.content) < 200_000, len(scrape.content)
        samples = [s for f in text_string_to_metric_families(scrape.text) for s in f.samples]
        models = {s.labels.get("model") for s in samples}
        assert "gpt-4o-mini" in models and len(models) < 10
        assert http.get("/metrics").status_code == 200  # and again


# -- Host check ----------------------------------------------------------------------------
def test_host_names() -> None:
    from iron_router.app import host_name, is_loopback_host

    for value in ("localhost", "LOCALHOST:8080", "127.0.0.1:1", "127.8.9.10", "[::1]:8080",
                  "[::1]", "::1", "localhost.", "app.localhost:3000", "[::ffff:127.0.0.1]:80"):
        assert is_loopback_host(host_name(value)), value
    for value in ("evil.example:8080", "127.0.0.1.evil.example", "0.0.0.0:8080", "10.0.0.1",
                  "[::2]:80", "localhost.evil.example", "", "null"):
        assert not is_loopback_host(host_name(value)), value


def test_dns_rebinding_gets_421(tmp_path: Path) -> None:
    import httpx

    from tests.router_util import RouterProcess

    with RouterProcess(home=tmp_path / "iron",
                       config={"iron": {"allowed_hosts": ["router.internal"]}}) as router:
        def get(host: str | None = None, **headers: str) -> httpx.Response:
            if host:
                headers["host"] = host
            return httpx.get(router.url + "/healthz", headers=headers, timeout=10)

        evil = get("evil.example:8080")
        assert evil.status_code == 421
        assert evil.json()["error"]["code"] == "misdirected_request"
        post = httpx.post(router.url + "/v1/chat/completions", timeout=10, json={},
                          headers={"host": "evil.example:8080"})
        assert post.status_code == 421
        for host in (f"localhost:{router.port}", f"[::1]:{router.port}", "127.0.0.2",
                     "ROUTER.internal:8080"):
            assert get(host).status_code == 200, host
        page = get(origin="http://evil.example")
        assert page.status_code == 403
        assert page.json()["error"]["code"] == "cross_origin_request"
        assert get(origin="http://localhost:3000").status_code == 200
        assert "421" in router.stderr  # logged and counted like any request

    with RouterProcess(home=tmp_path / "iron2",
                       config={"iron": {"allowed_hosts": ["*"]}}) as router:
        assert httpx.get(router.url + "/healthz", headers={"host": "evil.example"},
                         timeout=10).status_code == 200


def test_running_router_follows_a_rotation(tmp_path: Path) -> None:
    import subprocess
    import sys

    import httpx

    from tests.router_util import ROOT, RouterProcess

    home = tmp_path / "iron"
    old_token = issue_token(home, "bot")
    config = {"model_list": [{"model_name": "m", "litellm_params": {
        "model": "openai/gpt-4o-mini", "api_base": "http://127.0.0.1:9/v1"}}]}
    with RouterProcess(home=home, config=config) as router:  # /v1/models answered locally
        def models(token: str) -> int:
            return httpx.get(router.url + "/v1/models", timeout=10,
                             headers={"authorization": f"Bearer {token}"}).status_code

        assert models(old_token) == 200
        out = subprocess.run([sys.executable, "-m", "iron_sdk.cli", "secret", "rotate",
                              "--grace", "0s"], env={**os.environ, "IRON_HOME": str(home)},
                             capture_output=True, text=True, cwd=ROOT, check=True).stdout
        assert "new signing key" in out
        new_token = issue_token(home, "bot")
        deadline = time.monotonic() + 10  # the router looks at the keyring once a second
        while models(new_token) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert models(new_token) == 200
        assert models(old_token) == 401  # grace 0: refused at once
