"""Fuzz every operation of the router's own OpenAPI document (schemathesis): no client
input may produce a 5xx or a hang.

A real router process in front of the stand-in provider, a valid IC token on every
request (so the fuzzer gets past authentication into the handlers), data that fits the
schema and data that does not, a bounded number of examples per operation. Failures are
collected (not shrunk) and reported together, one line per operation and status.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")  # the dev extra; CI installs it

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402

from iron_sdk.identity import issue_token  # noqa: E402
from iron_sdk.standin import StandInProvider  # noqa: E402
from tests.router_util import RouterProcess  # noqa: E402

EXAMPLES = int(os.environ.get("IRON_FUZZ_EXAMPLES", "15"))  # per operation and mode
TIMEOUT_S = 10.0  # a request that takes longer counts as a hang


@pytest.fixture(scope="module")
def fuzz_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    home = Path(tmp_path_factory.mktemp("fuzz")) / "iron"
    token = issue_token(home, "fuzzer")
    with StandInProvider() as provider, RouterProcess(
            home=home, env={"OPENAI_BASE_URL": provider.url,
                            "OPENAI_API_KEY": "sk-standin-0123456789"}) as router:
        yield router.url, token


def _fuzz_operation(operation: object, mode: GenerationMode, base_url: str,
                    headers: dict[str, str], session: object) -> tuple[list[str], int]:
    failures: list[str] = []
    sent = 0

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))  # type: ignore[attr-defined]
    def run(case: object) -> None:
        nonlocal sent
        sent += 1
        label = f"{case.method} {case.formatted_path}"  # type: ignore[attr-defined]
        try:
            response = case.call(base_url=base_url, headers=headers,  # type: ignore[attr-defined]
                                 session=session, timeout=TIMEOUT_S)
        except Exception as exc:  # a timeout or a dropped connection: the router hung up
            failures.append(f"{label}: {type(exc).__name__} for {_request(case)}")
            return
        if response.status_code >= 500:
            failures.append(f"{label}: {response.status_code} for {_request(case)}")

    with contextlib.suppress(Unsatisfiable):  # nothing to make invalid (no inputs)
        run()
    return failures, sent


def _request(case: object) -> str:
    c = case  # type: ignore[assignment]
    parts = [f"path={c.path_parameters!r}"] if c.path_parameters else []  # type: ignore[attr-defined]
    if c.query:  # type: ignore[attr-defined]
        parts.append(f"query={c.query!r}")  # type: ignore[attr-defined]
    if c.body is not None and not isinstance(c.body, type(Ellipsis)):  # type: ignore[attr-defined]
        parts.append(f"body={c.body!r}"[:300])  # type: ignore[attr-defined]
    return " ".join(parts) or "(no input)"


def test_no_input_gets_a_5xx_or_a_hang(fuzz_router: tuple[str, str]) -> None:
    import requests

    base_url, token = fuzz_router
    document = requests.get(base_url + "/openapi.json", timeout=TIMEOUT_S).json()
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            if method == "post" and "requestBody" not in op and path != "/v1/runtime/flush":
                # Operations that document no body still read one: fuzz it as any object.
                op["requestBody"] = {"required": False, "content": {
                    "application/json": {"schema": {"type": "object"}}}}
    schema = schemathesis.openapi.from_dict(document)
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    operations = sent = 0
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            operations += 1
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                found, n = _fuzz_operation(operation, mode, base_url, headers, session)
                failures += found
                sent += n
        # The router still answers after all of it.
        assert session.get(base_url + "/healthz", timeout=TIMEOUT_S).status_code == 200
    assert operations >= 10 and sent >= operations * EXAMPLES  # every one exercised
    distinct = sorted({f.split(" for ")[0]: f for f in failures}.values())
    assert not distinct, f"{len(failures)} failing requests:\n" + "\n".join(distinct)


MSGS = '"messages": [{"role": "user", "content": "hi"}]'
HOSTILE: tuple[bytes, ...] = (
    b"", b"[]", b"null", b'"text"', b"\xff\xfe{", b"{" * 100_000,
    f'{{"model": "\\ud800", {MSGS}}}'.encode(),
    b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\\udfff"}]}',
    b'{"\\ud800": 1, "model": "gpt-4o-mini", "input": "x", "agent_id": "\\ud800"}',
    b'{"model": "gpt-4o-mini", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    f'{{"model": "gpt-4o-mini", {MSGS}, "max_tokens": 1e309}}'.encode(),
    f'{{"model": "gpt-4o-mini", {MSGS}, "max_tokens": NaN, "temperature": -Infinity}}'.encode(),
    f'{{"model": "gpt-4o-mini", {MSGS}, "max_tokens": {10**30}, "n": {10**20}}}'.encode(),
    b'{"model": ["gpt-4o-mini"], "messages": {"role": "user"}, "stream": "yes"}',
    b'{"budget_usd": NaN}', b'{"budget_usd": 1e309}', b'{"budget": {"lease_s": 1e309}}',
    b'{"budget": {"lease_s": 1e300, "session_usd": 1e300}}',
    b'{"reliability": {"requests_per_minute": Infinity}}',
    b'{"session_id": "x", "model": "gpt-4o-mini", "messages": [], "usage": '
    b'{"input_tokens": 1e309, "output_tokens": -1}, "status": NaN}',
    b'{"type": "usage_missing", "data": ' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}",
)


def test_hostile_bodies_get_a_4xx(fuzz_router: tuple[str, str]) -> None:
    """Bodies a schema-driven fuzzer does not make (lone surrogates, deep nesting, NaN,
    1e309, huge integers) sent to every POST operation: 4xx, never 5xx or a hang."""
    import httpx

    base_url, token = fuzz_router
    schema = httpx.get(base_url + "/openapi.json", timeout=TIMEOUT_S).json()
    posts = [path for path, ops in schema["paths"].items() if "post" in ops]
    assert len(posts) >= 5
    failures: list[str] = []
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=TIMEOUT_S) as http:
        for path in posts:
            url = path.replace("{session_id}", "s-x").replace("{call_id}", "c-x").replace(
                "{tool_id}", "t-x")
            for body in HOSTILE:
                try:
                    status = http.post(url, content=body).status_code
                except httpx.HTTPError as exc:
                    failures.append(f"POST {path}: {type(exc).__name__} for {body[:120]!r}")
                    continue
                if status >= 500:
                    failures.append(f"POST {path}: {status} for {body[:120]!r}")
        assert http.get("/healthz").status_code == 200
    assert not failures, f"{len(failures)} failing requests:\n" + "\n".join(failures)
