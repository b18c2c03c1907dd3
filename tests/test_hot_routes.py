"""The runtime API and the OpenAI door served by :class:`iron_router.hot_routes.HotRoutes`
(issues 7 and 9: the SDK's round trip): every request finds the route and parameters
Starlette's router would, everything else still goes to that router, and the request
log and metrics name the route, as before; an allowed ``begin`` logs at DEBUG and a
client without ``iron_event`` plugins gets no events back. Against a real router.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import Match

from iron_router.app import _http_error
from iron_router.hot_routes import HotRoutes
from iron_router.openai_api import routes as openai_routes
from iron_router.runtime_api import routes as runtime_routes
from iron_sdk.identity import issue_token
from tests.router_util import RouterProcess

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10}


def _starlette_match(method: str, path: str):  # noqa: ANN202
    """What Starlette's router picks: the first route matching fully, and its params."""
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    for route in [*openai_routes, *runtime_routes]:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return route, child["path_params"]
    return None


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings"), ("GET", "/v1/models"),
    ("HEAD", "/v1/models"), ("POST", "/v1/runtime/sessions"),
    ("DELETE", "/v1/runtime/sessions/abc"), ("POST", "/v1/runtime/calls"),
    ("POST", "/v1/runtime/calls/01ab/settle"), ("POST", "/v1/runtime/calls/01ab/fail"),
    ("POST", "/v1/runtime/tools"), ("POST", "/v1/runtime/tools/t1/end"),
    ("POST", "/v1/runtime/events"), ("POST", "/v1/runtime/flush"),
    ("GET", "/v1/runtime/prices/gpt-4o-mini"), ("GET", "/v1/runtime/prices/openai/gpt-4o"),
    # not served here: a wrong method, a trailing slash, an empty or extra segment
    ("GET", "/v1/chat/completions"), ("GET", "/v1/runtime/calls"),
    ("POST", "/v1/runtime/calls/"), ("POST", "/v1/runtime/calls//settle"),
    ("POST", "/v1/runtime/calls/a/b/settle"), ("PUT", "/v1/runtime/sessions/abc"),
    ("POST", "/v1/runtime/nothing"), ("GET", "/v1/runtime/prices/"),
])
def test_finds_what_starlette_finds(method: str, path: str) -> None:
    async def app(scope, receive, send) -> None:  # noqa: ANN001
        raise AssertionError("not called")

    hot = HotRoutes(app, [*openai_routes, *runtime_routes], _http_error)
    assert hot.match(method, path) == _starlette_match(method, path)


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    home: Path = tmp_path_factory.mktemp("hot") / "iron"
    with RouterProcess(home=home) as proc:
        yield proc


def test_misses_get_the_routers_own_answers(router: RouterProcess) -> None:
    http = httpx.Client(trust_env=False, timeout=20)
    token = {"authorization": f"Bearer {issue_token(router.home, 'hot')}"}
    wrong = http.get(router.url + "/v1/runtime/calls", headers=token)
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    missing = http.post(router.url + "/v1/runtime/calls//settle", headers=token, json={})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    slash = http.post(router.url + "/v1/runtime/calls/", headers=token, json={},
                      follow_redirects=False)
    assert slash.status_code == 307  # Starlette's redirect to the path without it
    price = http.get(router.url + "/v1/runtime/prices/openai/gpt-4o-mini", headers=token)
    assert price.status_code == 200 and price.json()["output"] > 0


def test_calls_answer_and_are_logged_by_route(router: RouterProcess) -> None:
    http = httpx.Client(trust_env=False, timeout=20)
    api = router.url + "/v1/runtime"
    token = {"authorization": f"Bearer {issue_token(router.home, 'logged')}"}
    sid = http.post(api + "/sessions", headers=token, json={}).json()["session_id"]
    begun = http.post(api + "/calls", headers=token, json={"session_id": sid,
                                                           "request": CHAT})
    assert begun.status_code == 200 and begun.json()["reserved_micro"] > 0
    call_id = begun.json()["call_id"]
    settled = http.post(f"{api}/calls/{call_id}/settle", headers=token,
                        json={"usage": {"input_tokens": 5, "output_tokens": 3}})
    assert settled.status_code == 200 and settled.json()["outcome"] == "completed"
    again = http.post(f"{api}/calls/{call_id}/settle", headers=token,
                      json={"usage": {"input_tokens": 5, "output_tokens": 3}})
    assert again.status_code == 404 and again.json()["error"]["code"] == "call_not_found"
    metrics = http.get(router.url + "/metrics").text
    settle_lines = [line for line in metrics.splitlines()
                    if line.startswith("iron_router_requests_total")
                    and 'path="/v1/runtime/calls/{call_id}/settle"' in line]
    assert {'status="200"' in line for line in settle_lines} == {True, False}
    assert call_id not in metrics  # the route names the series, never the id
    # One INFO line per LLM call: the settle's, with the cost; an allowed begin is DEBUG,
    # a refused one is logged.
    assert f"POST /v1/runtime/calls/{call_id}/settle 200" in router.stderr
    assert "cost_usd=" in router.stderr
    assert "POST /v1/runtime/calls 200" not in router.stderr
    refused = http.post(api + "/calls", headers=token,
                        json={"session_id": sid, "request": {**CHAT, "max_tokens": -1}})
    assert refused.status_code == 400
    assert "POST /v1/runtime/calls 400" in router.stderr


def test_events_come_back_unless_the_client_declines(router: RouterProcess) -> None:
    http = httpx.Client(trust_env=False, timeout=20)
    api = router.url + "/v1/runtime"
    token = {"authorization": f"Bearer {issue_token(router.home, 'quiet')}"}
    sid = http.post(api + "/sessions", headers=token, json={}).json()["session_id"]

    def call(events: object) -> tuple[httpx.Response, httpx.Response]:
        extra = {} if events is None else {"events": events}
        begun = http.post(api + "/calls", headers=token,
                          json={"session_id": sid, "request": CHAT, **extra})
        assert begun.status_code == 200, begun.text
        settled = http.post(f"{api}/calls/{begun.json()['call_id']}/settle", headers=token,
                            json={"usage": {"input_tokens": 5, "output_tokens": 3}, **extra})
        return begun, settled

    begun, settled = call(None)
    assert begun.json()["events"] == []
    assert [e["type"] for e in settled.json()["events"]] == ["call_completed"]
    begun, settled = call(False)
    assert "events" not in begun.json() and "events" not in settled.json()
    assert settled.json()["outcome"] == "completed"
    bad = http.post(api + "/calls", headers=token,
                    json={"session_id": sid, "request": CHAT, "events": "no"})
    assert bad.status_code == 400 and "'events'" in bad.json()["error"]["message"]
    begun = http.post(api + "/calls", headers=token, json={"session_id": sid,
                                                           "request": CHAT})
    call_id = begun.json()["call_id"]
    refused = http.post(f"{api}/calls/{call_id}/settle", headers=token,
                        json={"usage": {"input_tokens": 5, "output_tokens": 3},
                              "events": 1})
    assert refused.status_code == 400
    state = http.post(f"{api}/calls/{call_id}/fail", headers=token, json={}).json()
    assert state["outcome"] == "failed"  # the refused settle charged nothing: still open
    assert state["session"]["calls"] == 2 and state["session"]["reserved_micro"] == 0
