"""Sessions follow the work (issue 14): threads and pool tasks started inside a protected
function run in its session, against the real runtime, the real SQLite ledger and the
real openai client talking to the real stand-in provider.

Every fan-out test sends 16 calls whose prompt carries an SSN, on a session cap that fits
exactly ``N``; a barrier makes all 16 reach the budget check together, so the cap is held
under real contention.
"""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from iron_sdk import BudgetExceededError, current_session, protect_agent
from iron_sdk.session import active_session
from iron_sdk.standin import StandInProvider
from tests.helpers import price_entry

WORKERS = 16
N = 3  # calls the session cap fits
MAX_TOKENS = 500  # the stand-in answers exactly this many tokens (reply_words below)
SSN = "123-45-6789"
PROMPT = f"Check the claim of the customer with SSN {SSN}, please."
_user_var: contextvars.ContextVar[str] = contextvars.ContextVar("user_var", default="unset")


def cap_usd(n: int) -> float:
    """A session cap that fits exactly ``n`` calls of ``MAX_TOKENS`` output on gpt-4o-mini.

    Each call reserves (and, since the stand-in answers ``MAX_TOKENS`` tokens, is charged)
    the output price plus a few micro-dollars of input: ``n`` fit under ``n + ½`` outputs,
    ``n + 1`` never do, in whatever order reservations and settlements interleave.
    """
    out_micro = MAX_TOKENS * price_entry("gpt-4o-mini")["output_cost_per_token"] * 1_000_000
    assert out_micro >= 100  # the input part (a few µ$) stays far below half an output
    return (n * out_micro + out_micro / 2) / 1_000_000


@pytest.fixture
def provider() -> Iterator[StandInProvider]:
    with StandInProvider(reply_words=MAX_TOKENS) as p:
        yield p


@pytest.fixture
def barrier() -> threading.Barrier:
    return threading.Barrier(WORKERS, timeout=30)


def make_call(client: Any, barrier: threading.Barrier | None = None) -> Callable[[], str]:
    """One governed call from wherever it runs: ``"ok"`` or ``"refused"``."""
    def call() -> str:
        if barrier is not None:
            barrier.wait()
        try:
            client.chat.completions.create(model="gpt-4o-mini", max_tokens=MAX_TOKENS,
                                           messages=[{"role": "user", "content": PROMPT}])
        except BudgetExceededError:
            return "refused"
        return "ok"
    return call


def assert_governed(outcomes: list[str], calls: int, provider: StandInProvider) -> None:
    assert sorted(outcomes) == ["ok"] * N + ["refused"] * (WORKERS - N)
    assert calls == N  # current_session().calls, read inside the protected function
    assert len(provider.requests) == N
    for body in provider.requests:
        content = body["messages"][0]["content"]
        assert SSN not in content and "[SSN_REDACTED]" in content


def test_thread_pool_submit(runtime, provider, client, barrier):
    @protect_agent(agent_id="pool-submit", budget_usd=cap_usd(N))
    def agent() -> tuple[list[str], int, int]:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            futures = [pool.submit(make_call(client, barrier)) for _ in range(WORKERS)]
            outcomes = [f.result() for f in futures]
        session = current_session()
        return outcomes, session.calls, session.spent_micro

    outcomes, calls, spent = agent()
    assert_governed(outcomes, calls, provider)
    runtime.flush()
    assert runtime.ledger.state("agent:pool-submit").spent_micro == spent > 0


def test_thread_pool_map(runtime, provider, client, barrier):
    call = make_call(client, barrier)

    @protect_agent(agent_id="pool-map", budget_usd=cap_usd(N))
    def agent() -> tuple[list[str], int]:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            outcomes = list(pool.map(lambda _: call(), range(WORKERS)))
        return outcomes, current_session().calls

    assert_governed(*agent(), provider)


def test_plain_threads(runtime, provider, client, barrier):
    call = make_call(client, barrier)

    @protect_agent(agent_id="threads", budget_usd=cap_usd(N))
    def agent() -> tuple[list[str], int]:
        outcomes: list[str] = []
        threads = [threading.Thread(target=lambda: outcomes.append(call()))
                   for _ in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return outcomes, current_session().calls

    assert_governed(*agent(), provider)


def test_thread_subclass_with_own_run_and_timer(runtime, provider, client):
    class Worker(threading.Thread):
        def run(self) -> None:
            self.outcome = make_call(client)()

    @protect_agent(agent_id="subclass", budget_usd=cap_usd(N))
    def agent() -> tuple[str, int]:
        worker = Worker()
        worker.start()
        worker.join()
        timer = threading.Timer(0, lambda: seen.append(active_session()))
        timer.start()
        timer.join()
        return worker.outcome, current_session().calls

    seen: list[Any] = []
    assert agent() == ("ok", 1)
    assert seen[0] is not None and seen[0].agent_id == "subclass"
    assert "[SSN_REDACTED]" in provider.requests[0]["messages"][0]["content"]


async def test_asyncio_to_thread(runtime, provider, client, barrier):
    call = make_call(client, barrier)

    @protect_agent(agent_id="to-thread", budget_usd=cap_usd(N))
    async def agent() -> tuple[list[str], int]:
        # 16 workers so the barrier can fill (the default pool is smaller on small hosts)
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(WORKERS))
        outcomes = await asyncio.gather(*(asyncio.to_thread(call) for _ in range(WORKERS)))
        return list(outcomes), current_session().calls

    assert_governed(*await agent(), provider)


async def test_loop_run_in_executor(runtime, provider, client, barrier):
    call = make_call(client, barrier)

    @protect_agent(agent_id="run-in-executor", budget_usd=cap_usd(N))
    async def agent() -> tuple[list[str], int]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(WORKERS) as pool:
            outcomes = await asyncio.gather(*(loop.run_in_executor(pool, call)
                                              for _ in range(WORKERS)))
        return list(outcomes), current_session().calls

    assert_governed(*await agent(), provider)


async def test_loop_run_in_executor_default_pool(runtime, provider, client):
    @protect_agent(agent_id="default-pool", budget_usd=cap_usd(N))
    async def agent() -> tuple[list[str], int]:
        loop = asyncio.get_running_loop()
        outcomes = await asyncio.gather(*(loop.run_in_executor(None, make_call(client))
                                          for _ in range(WORKERS)))
        return list(outcomes), current_session().calls

    assert_governed(*await agent(), provider)


def test_every_context_variable_travels_with_the_session(runtime):
    @protect_agent(agent_id="ctx")
    def agent() -> list[tuple[str, str]]:
        _user_var.set("set-in-agent")
        seen: list[tuple[str, str]] = []

        def look() -> tuple[str, str]:
            return current_session().agent_id, _user_var.get()

        with ThreadPoolExecutor(2) as pool:
            seen.append(pool.submit(look).result())
        thread = threading.Thread(target=lambda: seen.append(look()))
        thread.start()
        thread.join()
        return seen

    assert contextvars.copy_context().run(agent) == [("ctx", "set-in-agent")] * 2


def test_work_started_outside_a_session_stays_outside(runtime):
    pool = ThreadPoolExecutor(2)
    try:
        @protect_agent(agent_id="pool-owner")
        def agent() -> Any:
            return pool.submit(active_session).result()  # the pool's workers start here

        assert agent().agent_id == "pool-owner"
        # Later tasks on the same workers, submitted outside any session, have none.
        assert [f.result() for f in [pool.submit(active_session) for _ in range(4)]] == [None] * 4
        seen: list[Any] = []
        thread = threading.Thread(target=lambda: seen.append(active_session()))
        thread.start()
        thread.join()
        assert seen == [None]
    finally:
        pool.shutdown()


def test_a_thread_created_in_a_session_but_started_outside_has_none(runtime):
    seen: list[Any] = []

    @protect_agent(agent_id="creator")
    def agent() -> threading.Thread:
        return threading.Thread(target=lambda: seen.append(active_session()))

    thread = agent()
    thread.start()
    thread.join()
    assert seen == [None]


def test_generator_session_stays_out_of_the_consumers_threads(runtime):
    inside: list[Any] = []

    @protect_agent(agent_id="gen")
    def items() -> Iterator[int]:
        for i in range(2):
            thread = threading.Thread(target=lambda: inside.append(active_session()))
            thread.start()
            thread.join()
            yield i

    consumer: list[Any] = []
    with ThreadPoolExecutor(2) as pool:
        for _ in items():  # the consumer's code between items runs outside the session
            consumer.append(pool.submit(active_session).result())
            thread = threading.Thread(target=lambda: consumer.append(active_session()))
            thread.start()
            thread.join()
    assert [s.agent_id for s in inside] == ["gen", "gen"]
    assert consumer == [None] * 4



async def test_async_generator_session_stays_out_of_the_consumers_threads(runtime):
    @protect_agent(agent_id="agen")
    async def items() -> Any:
        for i in range(2):
            yield i, await asyncio.to_thread(active_session)

    consumer: list[Any] = []
    loop = asyncio.get_running_loop()
    async for _, inside in items():
        assert inside.agent_id == "agen"
        consumer.append(await loop.run_in_executor(None, active_session))
        consumer.append(await asyncio.to_thread(active_session))
    assert consumer == [None] * 4

def test_import_patches_nothing_and_install_is_idempotent(runtime):
    code = ("import threading, concurrent.futures as cf; start = threading.Thread.start; "
            "submit = cf.ThreadPoolExecutor.submit; import iron_sdk; "
            "from iron_sdk import protect_agent, current_session; "
            "assert threading.Thread.start is start and cf.ThreadPoolExecutor.submit is submit; "
            "protect_agent(agent_id='first')(lambda: None)(); "
            "assert threading.Thread.start is not start; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"IRON_HOME": str(runtime.config.home / "sub"),
                                 "PATH": "", "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
                            timeout=120)
    assert result.stdout.strip() == "ok", result.stderr

    from iron_sdk import propagation

    propagation.install()
    start, submit = threading.Thread.start, ThreadPoolExecutor.submit
    propagation.install()
    assert (threading.Thread.start, ThreadPoolExecutor.submit) == (start, submit)
    propagation.uninstall()
    try:
        assert not propagation.installed()
        assert threading.Thread.start is not start and ThreadPoolExecutor.submit is not submit
        assert ThreadPoolExecutor.submit.__module__ == "concurrent.futures.thread"
    finally:
        propagation.install()


def test_service_threads_started_mid_session_keep_no_session(iron_home, provider, client):
    import gc
    import weakref

    from iron_sdk import Runtime, RuntimeConfig, set_runtime

    rt = Runtime(RuntimeConfig(home=iron_home))  # fresh: its writer and audit threads
    previous = set_runtime(rt)                    # start during the first call below
    try:
        sessions: list[weakref.ref[Any]] = []

        @protect_agent(agent_id="first-call")
        def agent() -> None:
            sessions.append(weakref.ref(current_session()))
            make_call(client)()

        agent()
        rt.flush()
        gc.collect()
        assert sessions[0]() is None  # no long-lived thread holds the session
    finally:
        set_runtime(previous)
        rt.close()


def test_thread_pool_submit_in_http_mode(tmp_path, monkeypatch, provider, client, barrier):
    from iron_sdk import set_runtime
    from iron_sdk.remote import RemoteRuntime
    from tests.router_util import RouterProcess

    home = tmp_path / "iron"
    monkeypatch.setenv("IRON_HOME", str(home))
    monkeypatch.delenv("IRON_SECRET", raising=False)
    monkeypatch.delenv("IRON_LEDGER", raising=False)
    with RouterProcess(home=home, config={"iron": {"anonymous_sessions": True}}) as router:
        rt = RemoteRuntime(router.url)
        previous = set_runtime(rt)
        try:
            @protect_agent(agent_id="http-pool", budget_usd=cap_usd(N))
            def agent() -> tuple[list[str], int]:
                with ThreadPoolExecutor(max_workers=WORKERS) as pool:
                    futures = [pool.submit(make_call(client, barrier)) for _ in range(WORKERS)]
                    outcomes = [f.result() for f in futures]
                return outcomes, current_session().calls

            assert_governed(*agent(), provider)
        finally:
            set_runtime(previous)
            rt.close()


def _ids_in_child(out: Any) -> None:
    from iron_sdk.call import new_id

    out.put([new_id() for _ in range(3)])


def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    import multiprocessing

    from iron_sdk.call import new_id

    new_id()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_ids_in_child, args=(out,))
    child.start()  # the child inherits the parent's unused random ids
    theirs = out.get(timeout=30)
    child.join(30)
    ours = [new_id() for _ in range(3)]
    assert child.exitcode == 0 and len(set(theirs)) == 3
    # The random part (after the millisecond timestamp) is never shared.
    assert not {i[12:] for i in theirs} & {i[12:] for i in ours}


def test_ids_are_unique_across_threads_and_in_creation_order() -> None:
    import concurrent.futures

    from iron_sdk.call import new_id

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda _: [new_id() for _ in range(2000)], range(8)))
    ids = [i for batch in batches for i in batch]
    assert len(set(ids)) == len(ids) == 16_000  # several draws of 256, shared by threads
    assert all(len(i) == 44 and int(i, 16) >= 0 for i in ids)
    for batch in batches:  # a later id never sorts before an earlier one of its thread
        assert [i[:12] for i in batch] == sorted(i[:12] for i in batch)
