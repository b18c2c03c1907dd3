"""The routes hit on every LLM call, served without Starlette's routing machinery.

For each request Starlette's router tries every route's regex in turn, then runs the
endpoint inside two closures (the request/response adapter and its exception handling),
behind the exception middleware: on this 2-core machine some 35 µs a request for an
endpoint whose own work is 5 µs. The runtime API is called twice per LLM call (begin,
settle) and the OpenAI door once, so that was a tenth of the SDK's round trip.

:class:`HotRoutes`, the innermost middleware, hands a request whose method and path
match one of its routes straight to that route's endpoint: a dict lookup for fixed
paths, the route's own regex and convertors for the few with parameters. The endpoint
gets what Starlette would give it (a :class:`~starlette.requests.Request`, its
``path_params``, ``scope["route"]`` and ``scope["endpoint"]``), and an
``HTTPException`` it raises is answered by ``on_http_error`` as the app's handler would.
Everything else (another path, a wrong method, a trailing slash, an app mounted under
a ``root_path``) goes on to the Starlette app unchanged, which also keeps serving the
same routes' OpenAPI document.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

OnHttpError = Callable[[Request, Exception], Awaitable[Response]]


class HotRoutes:
    """ASGI middleware serving ``routes`` (function endpoints only) directly."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute],
                 on_http_error: OnHttpError) -> None:
        self.app = app
        self.on_http_error = on_http_error
        self.fixed: dict[tuple[str, str], Route] = {}
        self.with_params: list[Route] = []
        for route in routes:
            if not (isinstance(route, Route) and route.methods
                    and inspect.isfunction(route.endpoint)):
                continue  # an ASGI app or middleware of its own: the router's job
            if route.param_convertors:
                self.with_params.append(route)
            else:
                for method in route.methods:
                    self.fixed[(method, route.path)] = route

    def match(self, method: str, path: str) -> tuple[Route, dict[str, Any]] | None:
        route = self.fixed.get((method, path))
        if route is not None:
            return route, {}
        for route in self.with_params:
            found = route.path_regex.match(path)
            if found is not None and method in route.methods:  # type: ignore[operator]
                params = found.groupdict()
                for key, value in params.items():
                    params[key] = route.param_convertors[key].convert(value)
                return route, params
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = (self.match(scope["method"], scope["path"])
                 if scope["type"] == "http" and not scope.get("root_path") else None)
        if found is None:
            await self.app(scope, receive, send)
            return
        route, params = found
        scope["route"], scope["endpoint"], scope["path_params"] = route, route.endpoint, params
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except HTTPException as exc:
            response = await self.on_http_error(request, exc)
        await response(scope, receive, send)
