"""Who may read and act: reading is open to a loopback visitor of a loopback address;
anything else, and every action, needs an admin token. The token lives in an HttpOnly,
SameSite=Strict cookie; every form carries a CSRF token bound to the browser session."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from iron_router.admin_api import authorize_admin
from iron_sdk.errors import IronCageError
from iron_sdk.runtime import Runtime

TOKEN_COOKIE = "iron_ui_admin"
SESSION_COOKIE = "iron_ui_session"
_KEY = secrets.token_bytes(32)  # per process: forms of an earlier process are refused


class Admin:
    """A signed-in operator (from a verified, unrevoked admin token)."""

    def __init__(self, agent: str, token_id: str | None, handle: object) -> None:
        self.agent = agent
        self.token_id = token_id
        self.handle = handle  # what the admin API's audit_change takes


def base(request: Request) -> str:
    """Where the dashboard is mounted (``/ui``)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def reading_open(request: Request) -> bool:
    """Pages read without signing in only when the connection is loopback on both ends and
    the page was asked for by a loopback name (not through a proxy's public name)."""
    from iron_router.app import host_name, is_loopback_host  # app.py mounts this module

    server, client = request.scope.get("server"), request.scope.get("client")
    if not server or not client:
        return False
    host = host_name(request.headers.get("host", ""))
    return (is_loopback_host(str(server[0])) and is_loopback_host(str(client[0]))
            and is_loopback_host(host))


def session_id(request: Request) -> str:
    sid = request.cookies.get(SESSION_COOKIE, "")
    return sid if 20 <= len(sid) <= 64 and sid.isalnum() else ""


def new_session_id() -> str:
    return secrets.token_hex(16)


def csrf_token(sid: str) -> str:
    return hmac.new(_KEY, b"csrf:" + sid.encode(), hashlib.sha256).hexdigest()


def csrf_ok(request: Request, sent: object) -> bool:
    sid = session_id(request)
    return bool(sid) and isinstance(sent, str) and hmac.compare_digest(csrf_token(sid), sent)


def set_cookie(response: Response, request: Request, name: str, value: str) -> None:
    response.set_cookie(name, value, path=base(request) or "/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


def clear_cookie(response: Response, request: Request, name: str) -> None:
    response.delete_cookie(name, path=base(request) or "/", httponly=True, samesite="strict")


def verify(runtime: Runtime, token: str) -> Admin:
    """The operator an admin token names (IronCageError if it is not one)."""
    who = authorize_admin(runtime, token)
    return Admin(who.agent, who.token_id, who)


async def signed_in(request: Request) -> Admin | None:
    token = request.cookies.get(TOKEN_COOKIE)
    if not token or len(token) > 4096:
        return None
    try:
        return await run_in_threadpool(verify, request.app.state.runtime, token)
    except IronCageError:
        return None
