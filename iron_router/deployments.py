"""Which deployment a request tries next: the name's healthy deployments (round robin),
then its fallback models in order, each deployment behind its own circuit breaker.

A *deployment* is one ``model_list`` entry: (``model_name``, ``api_base``). A request
gets a :class:`Plan`; every route the plan hands out has taken the breaker's half-open
trial if it needed one, so the caller reports each route's outcome exactly once
(:meth:`Plan.succeeded`, :meth:`Plan.failed` or :meth:`Plan.abandon`).

The breakers are this process's own, or on a Redis ledger shared with every router on
it (:mod:`iron_router.breaker_store`; :meth:`Deployments.start` starts keeping them in
step). Either way a request only reads this process's memory.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from iron_router.breaker_store import SharedBreakers, breakers_for
from iron_sdk.errors import CircuitOpenError, ModelNotFoundError

if TYPE_CHECKING:
    from iron_router.config import Route, RouterConfig

_PASSTHROUGH_MAX = 1024  # cached pass-through routes (model names are client-chosen)


def deployment_key(route: Route) -> tuple[str, str]:
    """The breaker key of a route: its model name and where it is served."""
    return route.model_name, route.api_base or route.model


def deployment_label(route: Route) -> str:
    """``model_name@scheme://host:port`` (a URL may carry credentials; they stay out)."""
    if not route.api_base:
        return f"{route.model_name}@{route.model}"
    parts = urlsplit(route.api_base)
    port = f":{parts.port}" if parts.port else ""
    return f"{route.model_name}@{parts.scheme}://{parts.hostname}{port}"


class Deployments:
    """The router's deployments and their breakers (``RouterState.deployments``)."""

    def __init__(self, config: RouterConfig) -> None:
        s = config.settings
        self.config = config
        self.routes = config.routes
        self.num_retries = s.num_retries
        self.fallbacks = s.fallbacks
        self.context_window_fallbacks = s.context_window_fallbacks
        r = config.runtime.reliability
        self.breakers = breakers_for(
            config.runtime.ledger_url(),
            r.circuit_failures if s.allowed_fails is None else s.allowed_fails,
            r.circuit_reset_s if s.cooldown_time_s is None else s.cooldown_time_s)
        self._shared = self.breakers if isinstance(self.breakers, SharedBreakers) else None
        if self._shared is not None:
            for group in self.routes.values():
                for route in group:
                    self._shared.watch(deployment_key(route))
        self._passthrough: dict[str, Route] = {}
        self._rr = itertools.count()

    def start(self) -> None:
        """Keep shared breakers in step with the other routers (a background thread)."""
        if self._shared is not None:
            self._shared.start()

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()

    def group(self, name: str) -> tuple[Route, ...]:
        """The deployments of ``name`` (ModelNotFoundError when there is no such name)."""
        if not self.routes:
            route = self._passthrough.get(name)
            if route is None:
                if len(self._passthrough) >= _PASSTHROUGH_MAX:
                    self._passthrough.clear()
                route = self._passthrough[name] = self.config.passthrough(name)
                if self._shared is not None:
                    self._shared.watch(deployment_key(route))
            return (route,)
        group = self.routes.get(name)
        if group is None:
            names = ", ".join(sorted(self.routes)[:20])
            raise ModelNotFoundError(
                f"Model '{name[:100]}' is not in this router's model_list; "
                f"available: {names}.")
        return group

    def plan(self, name: str) -> Plan:
        return Plan(self, name, self.group(name))

    def health(self) -> dict[str, Any]:
        """Per model name: each deployment's breaker state; names with none usable."""
        models: dict[str, Any] = {}
        degraded: list[str] = []
        for name, group in self.routes.items():
            states = {deployment_label(r): self.breakers.state(deployment_key(r))
                      for r in group}
            models[name] = states
            if all(state == "open" for state in states.values()):
                degraded.append(name)
        return {"deployments": models, "degraded": degraded}


class Plan:
    """The attempts of one request, in order (see the module docstring)."""

    __slots__ = ("deployments", "name", "groups", "group_index", "left", "tried", "start",
                 "context_window")

    def __init__(self, deployments: Deployments, name: str, group: tuple[Route, ...]) -> None:
        self.deployments = deployments
        self.name = name
        self.groups: list[tuple[Route, ...]] = [group]
        self.group_index = 0
        self.left = self._budget(group)
        self.tried: set[tuple[str, str]] = set()
        self.start = next(deployments._rr) if len(group) > 1 else 0
        self.context_window = False

    def _budget(self, group: tuple[Route, ...]) -> int:
        n = self.deployments.num_retries
        return len(group) if n is None else n + 1

    def _take(self, group: tuple[Route, ...]) -> Route | None:
        """The next deployment of ``group`` whose breaker lets a request through:
        untried ones first, in round-robin order from this request's start."""
        breakers = self.deployments.breakers
        size = len(group)
        for fresh in (True, False):
            for i in range(size):
                route = group[(self.start + i) % size]
                key = deployment_key(route)
                if fresh == (key in self.tried):
                    continue
                if breakers.acquire(key):
                    self.tried.add(key)
                    return route
        return None

    def first(self) -> Route:
        """The first route to try; CircuitOpenError when every deployment is cooling down."""
        route = self.next()
        if route is None:
            group = self.groups[0]
            breakers = self.deployments.breakers
            wait = min(breakers.retry_after(deployment_key(r)) for r in group)
            raise CircuitOpenError(self.name, max(wait, 0.1), (
                f"Every deployment of '{self.name}' (and of its fallbacks) is cooling down "
                f"after repeated failures; retry after {max(wait, 0.1):.1f}s."))
        return route

    def next(self, *, context_window: bool = False) -> Route | None:
        """The next route after a failed attempt (None: no attempt left). A prompt too
        long for the model switches to the name's ``context_window_fallbacks``."""
        d = self.deployments
        if context_window and not self.context_window:
            self.context_window = True
            names = d.context_window_fallbacks.get(self.name, ())
            self.groups = [self.groups[0], *(d.group(n) for n in names)]
            self.group_index, self.left = 0, 0
        elif len(self.groups) == 1 and not self.context_window and self.group_index == 0:
            self.groups += [d.group(n) for n in d.fallbacks.get(self.name, ())]
        while self.group_index < len(self.groups):
            group = self.groups[self.group_index]
            if self.left > 0:
                self.left -= 1
                route = self._take(group)
                if route is not None:
                    return route
            self.group_index += 1
            if self.group_index < len(self.groups):
                self.left = self._budget(self.groups[self.group_index])
                self.start = 0
        return None

    def succeeded(self, route: Route) -> None:
        self.deployments.breakers.success(deployment_key(route))

    def failed(self, route: Route) -> None:
        self.deployments.breakers.failure(deployment_key(route))

    def abandon(self, route: Route) -> None:
        """The route was not tried after all, or its answer says nothing of its health."""
        self.deployments.breakers.release_trial(deployment_key(route))
