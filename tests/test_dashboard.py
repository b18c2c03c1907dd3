"""The dashboard (issue 12) on a real router process with real traffic through the local
stand-in provider, looked at in a real headless Chromium (the system package, driven by
Selenium and the system chromedriver; .ci/run installs both), plus its HTTP rules: the
Host check, admin-only actions with CSRF, and no prompt text on any page."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iron_sdk.identity import issue_token
from iron_sdk.policies.audit import read_events
from iron_sdk.standin import StandInProvider
from tests.router_util import ROOT, RouterProcess, free_port, run_cli, wait_until

PROMPT_MARKER = "PROMPT-MARKER-d41e9"  # in every prompt: must never reach a page
EMAIL = "erin.secret@example.com"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


class Setup:
    def __init__(self, home: Path, router: RouterProcess) -> None:
        self.home = home
        self.router = router
        self.url = router.url + "/ui"
        self.admin = issue_token(home, "ops", admin=True)
        self.tokens: dict[str, str] = {}

    def token(self, agent: str) -> str:
        if agent not in self.tokens:
            self.tokens[agent] = _issue(self.home, agent)
        return self.tokens[agent]

    def chat(self, agent: str, text: str = "Say hello.", model: str = "gpt-4o-mini",
             ) -> httpx.Response:
        return httpx.post(self.router.url + "/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": f"{text} {PROMPT_MARKER}"}]},
            headers={"Authorization": f"Bearer {self.token(agent)}"}, timeout=30)

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.home / "audit.jsonl")


def _issue(home: Path, agent: str, *extra: str) -> str:
    """Through the CLI, so the token is recorded for the tokens page."""
    return run_cli(home, "token", "issue", "--agent", agent, *extra, check=True).stdout.strip()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("dashboard") / "iron"
    issue_token(home, "bootstrap")  # the secret the router verifies with
    config = {"iron": {"safety": {"pii": "block"}, "allowed_hosts": ["dash.example"]}}
    with StandInProvider() as provider, RouterProcess(home=home, config=config, env={
            "OPENAI_BASE_URL": provider.url, "OPENAI_API_KEY": "sk-provider-dash-0f1e"}) as r:
        s = Setup(home, r)
        for agent, model, n in (("alpha", "gpt-4o-mini", 3), ("beta", "gpt-4o", 2),
                                ("gamma", "gpt-4o-mini", 1)):
            for _ in range(n):
                assert s.chat(agent, model=model).status_code == 200
        assert s.chat("gamma", f"Write to {EMAIL} please.").status_code == 403  # PII: blocked
        httpx.put(r.url + "/v1/admin/budgets/alpha", json={"usd": 5},
                  headers={"Authorization": f"Bearer {s.admin}"}, timeout=30).raise_for_status()
        wait_until(lambda: sum(e["type"] == "call_completed" for e in s.events()) >= 6)
        yield s


@pytest.fixture(scope="module")
def browser(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium/chromedriver not installed (system packages; .ci/run installs them)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,1000", "--force-device-scale-factor=1",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _by() -> Any:
    from selenium.webdriver.common.by import By

    return By


def _text(driver: Any, css: str) -> str:
    """The text of an element of the page now shown ("" while a page is loading)."""
    from selenium.common.exceptions import WebDriverException

    try:
        return str(driver.find_element(_by().CSS_SELECTOR, css).text)
    except WebDriverException:
        return ""


def _shot(driver: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 5000
    return path


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, html[:500]
    return match[1]


@contextlib.contextmanager
def _signed_in(setup: Setup, token: str | None = None) -> Iterator[httpx.Client]:
    """An HTTP client holding the dashboard's session (and admin) cookie."""
    with httpx.Client(base_url=setup.url, timeout=30) as client:
        page = client.get("/login")
        if token is not None:
            client.post("/login", data={"csrf": _csrf(page.text), "token": token,
                                        "next": "/ui/"})
        yield client


# -- in the browser ------------------------------------------------------------------------
def test_agents_page_shows_each_agent_with_its_budget(setup, browser, tmp_path):
    By = _by()
    browser.get(setup.url + "/")
    rows = {r.get_attribute("data-agent"): r
            for r in browser.find_elements(By.CSS_SELECTOR, "#agents tbody tr")}
    assert {"alpha", "beta", "gamma"} <= set(rows)
    alpha = rows["alpha"].text
    assert "$5.00" in alpha and "active" in alpha and "total" in alpha
    cells = rows["alpha"].find_elements(By.CSS_SELECTOR, "td")
    assert cells[8].text == "3"  # calls
    assert rows["alpha"].find_element(By.CSS_SELECTOR, ".bar .spent").size["width"] >= 0
    assert "ago" in cells[9].text
    _shot(browser, tmp_path, "agents")


def test_spend_chart_is_drawn(setup, browser, tmp_path):
    By = _by()
    browser.get(setup.url + "/spend?window=hour")
    for by in ("agent", "model"):
        figure = browser.find_element(By.ID, f"chart-{by}")
        paths = figure.find_elements(By.CSS_SELECTOR, "svg.chart path.line")
        assert len(paths) >= 2
        assert all(p.get_attribute("d").startswith("M") for p in paths)
        assert figure.find_element(By.CSS_SELECTOR, "svg.chart").size["height"] > 100
    legend = browser.find_element(By.ID, "chart-model").text
    assert "gpt-4o-mini" in legend and "gpt-4o" in legend
    _shot(browser, tmp_path, "spend")


def test_a_new_call_appears_live_without_reload(setup, browser, tmp_path):
    By = _by()
    browser.get(setup.url + "/live")
    browser.execute_script("window.__sameDocument = true;")
    wait_until(lambda: "on" in browser.find_element(By.ID, "live-status").get_attribute("class"))
    assert setup.chat("delta", model="gpt-4o").status_code == 200

    def delta_row() -> Any:
        for row in browser.find_elements(By.CSS_SELECTOR, "#live-rows tr"):
            if "delta" in row.text:
                return row
        return None

    row = wait_until(delta_row, timeout_s=15)
    assert browser.execute_script("return window.__sameDocument === true;")  # no reload
    text = row.text
    assert "gpt-4o" in text and "allowed" in text and "$" in text and "→" in text
    assert PROMPT_MARKER not in browser.page_source
    _shot(browser, tmp_path, "live")


def test_blocked_calls_name_reason_scope_and_pii_kinds(setup, browser, tmp_path):
    By = _by()
    browser.get(setup.url + "/blocked")
    text = browser.find_element(By.ID, "blocked").text
    assert "gamma" in text and "safety_violation" in text and "email" in text
    assert "agent:gamma" in text
    assert EMAIL not in browser.page_source and PROMPT_MARKER not in browser.page_source
    _shot(browser, tmp_path, "blocked")


def test_signing_in_and_disabling_an_agent_refuses_its_next_call(setup, browser, tmp_path):
    By = _by()
    assert setup.chat("beta").status_code == 200
    browser.get(setup.url + "/login")
    browser.find_element(By.NAME, "token").send_keys(setup.admin)
    browser.find_element(By.CSS_SELECTOR, "form.stack button").click()
    wait_until(lambda: "admin · ops" in _text(browser, ".who"))
    cookie = browser.get_cookie("iron_ui_admin")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    browser.find_element(By.CSS_SELECTOR, 'button[data-disable="beta"]').click()
    wait_until(lambda: "agent:beta disabled" in _text(browser, "main"))
    row = browser.find_element(By.CSS_SELECTOR, '#agents tr[data-agent="beta"]')
    assert "disabled" in row.text
    _shot(browser, tmp_path, "disabled")

    response = setup.chat("beta")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "agent_disabled"
    change = wait_until(lambda: [e for e in setup.events() if e["type"] == "admin_change"
                              and e.get("action") == "agent_disable"])
    assert change[-1]["scope"] == "agent:beta" and change[-1]["actor"] == "ops"
    assert change[-1]["via"] == "dashboard"

    # enable it again, and set a budget with the form
    row = browser.find_element(By.CSS_SELECTOR, '#agents tr[data-agent="beta"]')
    row.find_element(By.CSS_SELECTOR, 'button[value="enable"]').click()
    wait_until(lambda: "agent:beta enabled" in _text(browser, "main"))
    assert setup.chat("beta").status_code == 200
    form = browser.find_element(By.ID, "budget-form")
    form.find_element(By.NAME, "scope").send_keys("beta")
    form.find_element(By.NAME, "usd").send_keys("2.5")
    form.find_element(By.TAG_NAME, "button").click()
    wait_until(lambda: "Budget of agent:beta: $2.50" in _text(browser, "main"))
    row = browser.find_element(By.CSS_SELECTOR, '#agents tr[data-agent="beta"]')
    assert "$2.50" in row.text
    budget = httpx.get(setup.router.url + "/v1/admin/budgets/beta", timeout=30,
                       headers={"Authorization": f"Bearer {setup.admin}"}).json()
    assert budget["limit_micro"] == 2_500_000
    _shot(browser, tmp_path, "budget")


def test_revoking_a_token_in_the_browser(setup, browser, tmp_path):
    By = _by()
    token = setup.token("epsilon")
    assert setup.chat("epsilon").status_code == 200
    browser.get(setup.url + "/tokens")
    rows = browser.find_elements(By.CSS_SELECTOR, "#tokens tbody tr")
    mine = [r for r in rows if "epsilon" in r.text]
    assert len(mine) == 1 and "valid" in mine[0].text
    mine[0].find_element(By.CSS_SELECTOR, "button.danger").click()
    wait_until(lambda: "revoked" in _text(browser, "main"))
    row = [r for r in browser.find_elements(By.CSS_SELECTOR, "#tokens tbody tr")
           if "epsilon" in r.text][0]
    assert "revoked" in row.text
    response = httpx.post(setup.router.url + "/v1/chat/completions", timeout=30, json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    _shot(browser, tmp_path, "tokens")


# -- over HTTP -----------------------------------------------------------------------------
PAGES = ("/", "/spend?window=hour", "/spend?window=day", "/spend?window=month", "/live",
         "/blocked", "/tokens", "/login")


def test_pages_read_on_loopback_without_sign_in_and_never_show_prompt_text(setup):
    with httpx.Client(base_url=setup.url, timeout=30) as client:
        for page in PAGES:
            response = client.get(page)
            assert response.status_code == 200, page
            assert response.headers["content-type"].startswith("text/html")
            assert "script-src 'self'" in response.headers["content-security-policy"]
            assert PROMPT_MARKER not in response.text and EMAIL not in response.text
            assert "sk-provider-dash" not in response.text
        with client.stream("GET", "/events", params={"after": "0"}) as stream:
            seen = ""
            for line in stream.iter_lines():
                seen += line + "\n"
                if seen.count("event: call") >= 5:
                    break
        assert "event: call" in seen and PROMPT_MARKER not in seen and EMAIL not in seen
        data = [json.loads(x[6:]) for x in seen.splitlines() if x.startswith("data: ")]
        assert set(data[0]) == {"seq", "time", "agent", "model", "tokens", "cost", "decision",
                                "tone", "latency"}
        assert client.get("/static/dashboard.css").status_code == 200


def test_a_foreign_host_is_misdirected(setup):
    response = httpx.get(setup.url + "/", headers={"Host": "evil.example"}, timeout=30)
    assert response.status_code == 421
    assert response.json()["error"]["code"] == "misdirected_request"
    response = httpx.get(setup.url + "/events", headers={"Host": "evil.example:80"}, timeout=30)
    assert response.status_code == 421
    response = httpx.get(setup.url + "/", headers={"Origin": "http://evil.example"}, timeout=30)
    assert response.status_code == 403


def test_reached_by_a_non_loopback_name_every_page_needs_the_admin_token(setup):
    with httpx.Client(base_url=setup.url, headers={"Host": "dash.example"},
                      timeout=30) as client:
        for page in PAGES[:-1] + ("/events",):
            response = client.get(page)
            assert response.status_code == 303, page
            assert response.headers["location"].startswith("/ui/login?next=")
            assert "alpha" not in response.text
        login = client.get("/login")
        assert login.status_code == 200 and "alpha" not in login.text
        client.post("/login", data={"csrf": _csrf(login.text), "token": setup.admin})
        response = client.get("/")
        assert response.status_code == 200 and 'data-agent="alpha"' in response.text


def test_actions_are_for_admins_with_a_csrf_token(setup):
    body = {"scope": "gamma", "action": "disable"}
    with _signed_in(setup) as anonymous:  # session cookie, no admin token
        csrf = _csrf(anonymous.get("/login").text)
        response = anonymous.post("/actions/agent", data={**body, "csrf": csrf})
        assert response.status_code == 403 and "admin token" in response.text
    with _signed_in(setup, setup.token("gamma")) as agent:  # an agent's token is refused
        assert "admin ·" not in agent.get("/").text
        csrf = _csrf(agent.get("/login").text)
        response = agent.post("/actions/agent", data={**body, "csrf": csrf})
        assert response.status_code == 403
    with _signed_in(setup, "not-a-token") as bad:
        assert "admin ·" not in bad.get("/").text
    with _signed_in(setup, setup.admin) as admin:
        page = admin.get("/")
        assert "admin · ops" in page.text
        good = _csrf(page.text)
        for csrf in ("", "0" * 64, good[:-1] + ("1" if good.endswith("0") else "0")):
            response = admin.post("/actions/agent", data={**body, "csrf": csrf})
            assert response.status_code == 403, csrf
        other = httpx.Client(base_url=setup.url, timeout=30)  # a CSRF token of another session
        response = admin.post("/actions/agent", data={**body, "csrf": _csrf(
            other.get("/login").text)})
        other.close()
        assert response.status_code == 403
        assert setup.chat("gamma").status_code == 200  # nothing happened
        response = admin.post("/actions/budget", data={
            "scope": "gamma", "usd": "lots", "csrf": _csrf(page.text), "next": "/ui/"})
        assert response.status_code == 303 and "err=" in response.headers["location"]
        response = admin.post("/actions/budget", data={
            "scope": "bad scope!", "usd": "1", "csrf": _csrf(page.text),
            "next": "https://evil.example/"})
        assert response.status_code == 303
        assert response.headers["location"].startswith("/ui/?err=")
        response = admin.post("/actions/revoke", data={"token": "", "csrf": _csrf(page.text)})
        assert response.status_code == 303
        response = admin.post("/logout", data={"csrf": _csrf(page.text)})
        assert response.status_code == 303
        assert "admin ·" not in admin.get("/").text


def test_library_mode_dashboard_reads_the_same_home(setup):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "iron_sdk.cli", "dashboard", "--port", str(port)], cwd=ROOT,
        env={"IRON_HOME": str(setup.home), "PATH": "/usr/bin:/bin",
             "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(url + "/ui/", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout_s=30)
        page = httpx.get(url + "/", follow_redirects=True, timeout=30).text
        assert 'data-agent="alpha"' in page and "$5.00" in page
        spend = httpx.get(url + "/ui/spend?window=hour", timeout=30).text
        assert '<path class="line"' in spend
        assert httpx.get(url + "/ui/", headers={"Host": "evil.example"},
                         timeout=30).status_code == 421
    finally:
        proc.terminate()
        proc.wait(20)
    assert f"http://127.0.0.1:{port}/ui/" in proc.stdout.read().decode()  # loopback only


# -- the audit log tail ----------------------------------------------------------------------
def _line(**fields: Any) -> str:
    base = {"type": "call_completed", "ts": time.time(), "agent_id": "a", "model": "m",
            "cost_micro": 10, "input_tokens": 1, "output_tokens": 2}
    return json.dumps({**base, **fields}) + "\n"


def test_the_audit_tail_reads_tolerantly_and_follows_rotation(tmp_path):
    from iron_router.dashboard.auditlog import AuditTail

    log = tmp_path / "audit.jsonl"
    log.write_text(_line(mac="ab" * 16, prev="00", messages=[{"content": PROMPT_MARKER}])
                   + "not json\n[1, 2]\n" + _line(type="admin_change") + _line(agent_id=None)
                   + _line(agent_id="b", model="n", cost_micro=5)
                   + '{"type": "call_completed", "ts": 1')  # a line still being written
    tail = AuditTail(log)
    tail.refresh()
    assert [e.get("agent_id") for e in tail.after(0)] == ["a", "b"]
    assert all(PROMPT_MARKER not in json.dumps(e.fields) for e in tail.after(0))
    assert "mac" not in tail.after(0)[0].fields
    with log.open("a") as f:  # the partial line is completed
        f.write('.5, "agent_id": "c"}\n')
    tail.refresh()
    assert [e.get("agent_id") for e in tail.after(2)] == ["c"]
    with log.open("a") as f:
        f.write(_line(agent_id="d"))
    log.rename(tmp_path / "audit.1.jsonl")  # rotated before the tail read the last line
    log.write_text(_line(agent_id="e", type="call_blocked", reason="budget_exceeded"))
    tail.refresh()
    assert [e.get("agent_id") for e in tail.after(3)] == ["d", "e"]
    assert [e.get("reason") for e in tail.blocked] == ["budget_exceeded"]
    now = time.time()
    by_agent = tail.spend_series("agent", now - 3600, 60, 61)
    assert sum(by_agent["a"]) == 10 and sum(by_agent["b"]) == 5 and "e" not in by_agent
    assert set(tail.spend_series("model", now - 3600, 60, 61)) == {"m", "n"}  # c: in 1970
    fresh = AuditTail(log)  # a new dashboard reads the rotated files too
    fresh.refresh()
    assert [e.get("agent_id") for e in fresh.after(0)] == ["a", "b", "c", "d", "e"]
