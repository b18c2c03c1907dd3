"""``iron-runtime --mode=router``: the router under uvicorn.

SIGTERM/SIGINT: uvicorn stops accepting, lets in-flight requests finish, then the app's
lifespan writes the settlements; the process exits 0.

Scale-out: ``--workers N`` runs N uvicorn worker processes on one port (each its own
runtime; budgets, rate limits and the operator's policy are shared through the ledger,
SQLite on one machine or Redis across machines). Several routers on several machines
behind a load balancer share a Redis ledger the same way (``iron: {ledger:
redis://...}``). On a Redis ledger the per-deployment circuit breakers are shared too
(:mod:`iron_router.breaker_store`): a deployment one router cools down is skipped by the
others within a quarter second, and after the cooldown one router sends the half-open
trial; each router decides from its own copy, refreshed in the background, so a request
never waits on Redis, and without Redis the breakers are per process. On an SQLite
ledger (``--workers`` on one machine) each process judges the deployments on its own.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import signal
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from iron_router.config import ConfigError, RouterConfig, default_openai_base, load_config


class _Formatter(logging.Formatter):
    """The standard format; the date and time part is formatted once a second, not per
    line (``time.strftime`` was a third of a request log line's cost)."""

    _second: int | None = None
    _stamp = ""

    def formatTime(self, record: logging.LogRecord,  # noqa: N802 - logging's name
                   datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return self.default_msec_format % (self._stamp, record.msecs)


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("iron_router", "iron_sdk"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


def _where(url: str) -> str:
    """scheme://host:port of an upstream (a URL may carry credentials; they stay out)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


def describe(config: RouterConfig) -> str:
    if config.routes:
        return f"{len(config.routes)} model(s) from {config.path}"
    return f"no config: model names pass through to {_where(default_openai_base())}"


_CONFIG_ENV = "IRON_ROUTER_CONFIG"


def worker_app() -> Any:
    """The app of one ``--workers`` process (uvicorn imports it by name)."""
    from iron_router.app import create_app

    return create_app(load_config(os.environ.get(_CONFIG_ENV) or None))


def serve(host: str = "127.0.0.1", port: int = 8080, config_path: str | None = None,
          workers: int = 1) -> int:
    """Run the router until SIGTERM/SIGINT; return the exit code."""
    _setup_logging()
    # The router holds signing keys, the ledger and the audit log: whatever it creates
    # (a ledger's -wal/-shm made later, rotated logs) is private to its user.
    os.umask(0o077)
    log = logging.getLogger("iron_router")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    has = importlib.util.find_spec
    options: dict[str, Any] = dict(
        host=host, port=port, lifespan="on", access_log=False, log_level="warning",
        http="httptools" if has("httptools") else "h11",
        loop="uvloop" if has("uvloop") else "asyncio",
        timeout_graceful_shutdown=config.settings.shutdown_timeout_s, server_header=False,
        # Nothing here reads the client's address, and trusting X-Forwarded-* from
        # 127.0.0.1 (uvicorn's default) would let any local process set it: off, and one
        # middleware less per request.
        proxy_headers=False)
    if workers > 1:
        if config_path:
            os.environ[_CONFIG_ENV] = str(config_path)
        log.info("iron router on http://%s:%d with %d workers — %s", host, port, workers,
                 describe(config))
        uvicorn.run("iron_router.server:worker_app", factory=True, workers=workers,
                    **options)
        return 0
    from iron_router.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(config), **options))
    # After a graceful shutdown uvicorn re-raises the signal it caught with the handler
    # that was installed before it; a no-op there makes the process end with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    ledger = re.sub(r"//[^/@]*@", "//***@", config.runtime.ledger_url())  # no credentials
    log.info("iron router on http://%s:%d — %s; ledger %s", host, port, describe(config), ledger)
    server.run()
    if not server.started:
        return 1  # could not bind (uvicorn logged why)
    log.info("iron router stopped; settlements written")
    return 0
