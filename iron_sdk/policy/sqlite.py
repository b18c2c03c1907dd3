"""Policy store in the ledger's SQLite file: its own tables, its own connections.

Every process opening the same file shares the policy. The version check costs one
``PRAGMA data_version`` on a dedicated connection (it changes when any other connection
commits), and only when that moved, one read of the ``policy_version`` row; both are
skipped when checked less than ``CHECK_EVERY_S`` ago.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from iron_sdk.errors import RuntimeUnavailableError
from iron_sdk.policy.model import Policy
from iron_sdk.policy.rate_windows import NoWindow, RateWindows
from iron_sdk.policy.store import (
    PolicyStore,
    TokenRecord,
    bucket_of,
    live_after,
    revoked_at,
    window_decision,
)

CHECK_EVERY_S = 0.25  # a CLI change is seen within 1 s; the hot path rarely asks SQLite

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS policy_fields (
        scope TEXT NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (scope, field)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS policy_version (
        id INTEGER PRIMARY KEY CHECK (id = 0), version INTEGER NOT NULL)""",
    "INSERT OR IGNORE INTO policy_version VALUES (0, 0)",
    """CREATE TABLE IF NOT EXISTS rate_buckets (
        scope TEXT NOT NULL, second INTEGER NOT NULL, requests INTEGER NOT NULL,
        tokens INTEGER NOT NULL, PRIMARY KEY (scope, second)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS ic_tokens (
        jti TEXT PRIMARY KEY, agent TEXT, scopes TEXT NOT NULL DEFAULT '[]',
        issued REAL NOT NULL DEFAULT 0, expires REAL, admin INTEGER NOT NULL DEFAULT 0,
        revoked REAL) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS revoked_agents (
        agent TEXT PRIMARY KEY, before REAL NOT NULL) WITHOUT ROWID""",
)
_BUMP = "UPDATE policy_version SET version = version + 1 WHERE id = 0"


_PURGE_BUCKETS = "DELETE FROM rate_buckets WHERE scope = ? AND second <= ?"
_WINDOW_SUMS = ("SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(tokens), 0) FROM rate_buckets "
                "WHERE scope = ? AND second > ?")
_WINDOW_BUCKETS = "SELECT second, requests, tokens FROM rate_buckets WHERE scope = ? AND second > ?"
_COUNT_REQUEST = ("INSERT INTO rate_buckets VALUES (?, ?, 1, ?) ON CONFLICT (scope, second) "
                  "DO UPDATE SET requests = requests + 1, tokens = tokens + excluded.tokens")


class SQLitePolicyStore(PolicyStore):
    """Policy in the SQLite file at ``path`` (the ledger's), safe across processes."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 10.0) -> None:
        super().__init__()
        self._purged: dict[str, int] = {}  # scope -> the second its old buckets last went
        self._path = Path(path)
        self._timeout = busy_timeout_s
        self._lock = threading.Lock()
        self._vlock = threading.Lock()
        self._pid = 0
        self._conn: sqlite3.Connection | None = None
        self._vconn: sqlite3.Connection | None = None
        self._checked = 0.0
        self._data_version = -1
        self._version = 0
        # Rate windows in shared memory beside the file; in SQL for an in-memory database.
        self._windows = None if str(path) == ":memory:" else RateWindows(self._path)
        with self._tx() as conn:
            for stmt in _SCHEMA:
                conn.execute(stmt)

    def __repr__(self) -> str:
        return f"SQLitePolicyStore({str(self._path)!r})"

    # -- connections ---------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _fresh(self) -> None:
        """Connections must not cross fork(): a child opens its own."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._conn = self._vconn = None
            self._data_version = -1

    @contextlib.contextmanager
    def _tx(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._fresh()
                if self._conn is None:
                    self._conn = self._connect()
                conn = self._conn
                if not immediate:
                    yield conn
                    return
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise RuntimeUnavailableError(
                    f"policy store at '{self._path}' failed: {exc}") from exc

    # -- version -------------------------------------------------------------------------
    def version(self) -> int:
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY_S:  # a forked child may reuse the parent's
            return self._version  # answer that long: it is still a version of this file
        with self._vlock:
            try:
                self._fresh()
                if self._vconn is None:
                    self._vconn = self._connect()
                data_version = self._vconn.execute("PRAGMA data_version").fetchone()[0]
                if data_version != self._data_version:
                    # Another connection committed (maybe only a ledger write): re-read ours.
                    self._version = self._vconn.execute(
                        "SELECT version FROM policy_version WHERE id = 0").fetchone()[0]
                    self._data_version = data_version
            except sqlite3.Error as exc:
                raise RuntimeUnavailableError(
                    f"policy store at '{self._path}' failed: {exc}") from exc
            self._checked = now
        return self._version

    def _invalidate(self) -> None:
        super()._invalidate()
        self._checked = 0.0  # our own writes do not move our data_version: re-read

    def _force_reread(self) -> None:
        self._data_version = -1

    # -- records ---------------------------------------------------------------------------
    def _write(self, scope: str, to_set: dict[str, Any], to_clear: Iterable[str]) -> None:
        with self._tx() as conn:
            conn.executemany("INSERT INTO policy_fields VALUES (?, ?, ?) ON CONFLICT "
                             "(scope, field) DO UPDATE SET value = excluded.value",
                             [(scope, k, json.dumps(v)) for k, v in to_set.items()])
            conn.executemany("DELETE FROM policy_fields WHERE scope = ? AND field = ?",
                             [(scope, k) for k in to_clear])
            conn.execute(_BUMP)
        self._force_reread()

    def _load_policies(self) -> dict[str, Policy]:
        with self._tx(immediate=False) as conn:
            rows = conn.execute("SELECT scope, field, value FROM policy_fields").fetchall()
        records: dict[str, dict[str, Any]] = {}
        for scope, name, value in rows:
            records.setdefault(scope, {})[name] = json.loads(value)
        return {s: Policy.model_validate(r) for s, r in records.items()}

    # -- rate limits ---------------------------------------------------------------------
    def take(self, scope: str, tokens: int, rpm: int | None, tpm: int | None,
             now: float) -> float | None:
        if self._windows is not None:
            with contextlib.suppress(NoWindow):
                return self._windows.take(scope, tokens, rpm, tpm, now)
        after, second = live_after(now), bucket_of(now)
        with self._tx() as conn:
            if self._purged.get(scope) != second:  # old buckets go once a second, not per call
                conn.execute(_PURGE_BUCKETS, (scope, after))
                if len(self._purged) >= 1024:
                    self._purged.clear()
                self._purged[scope] = second
            # The window's sums decide; the buckets themselves only when the call is refused
            # (to say how long to wait).
            requests, used = conn.execute(_WINDOW_SUMS, (scope, after)).fetchone()
            if (rpm is None or requests + 1 <= rpm) and (tpm is None or used + tokens <= tpm):
                conn.execute(_COUNT_REQUEST, (scope, second, tokens))
                return None
            buckets = conn.execute(_WINDOW_BUCKETS, (scope, after)).fetchall()
        return window_decision(buckets, now, tokens, rpm, tpm)

    # -- tokens ----------------------------------------------------------------------------
    def record_token(self, record: TokenRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO ic_tokens (jti, agent, scopes, issued, expires, admin) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (jti) DO UPDATE SET "
                "agent = excluded.agent, scopes = excluded.scopes, issued = excluded.issued, "
                "expires = excluded.expires, admin = excluded.admin",
                (record.jti, record.agent, json.dumps(list(record.scopes)), record.issued,
                 record.expires, int(record.admin)))

    def tokens(self, agent: str | None = None) -> list[TokenRecord]:
        sql = ("SELECT jti, agent, scopes, issued, expires, admin, revoked FROM ic_tokens "
               "WHERE agent IS NOT NULL" + (" AND agent = ?" if agent else "")
               + " ORDER BY issued, jti")
        with self._tx(immediate=False) as conn:
            rows = conn.execute(sql, (agent,) if agent else ()).fetchall()
            agents = dict(conn.execute("SELECT agent, before FROM revoked_agents").fetchall())
        records = [TokenRecord(jti, a, tuple(json.loads(scopes)), issued, expires,
                               bool(admin), revoked)
                   for jti, a, scopes, issued, expires, admin, revoked in rows]
        return [TokenRecord(r.jti, r.agent, r.scopes, r.issued, r.expires, r.admin,
                            revoked_at(r, agents)) for r in records]

    def _load_revocations(self) -> tuple[frozenset[str], dict[str, float]]:
        with self._tx(immediate=False) as conn:
            ids = conn.execute("SELECT jti FROM ic_tokens WHERE revoked IS NOT NULL").fetchall()
            agents = conn.execute("SELECT agent, before FROM revoked_agents").fetchall()
        return frozenset(r[0] for r in ids), dict(agents)

    def _revoke_token(self, jti: str, now: float) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO ic_tokens (jti, revoked) VALUES (?, ?) ON CONFLICT (jti) "
                         "DO UPDATE SET revoked = COALESCE(revoked, excluded.revoked)",
                         (jti, now))
            conn.execute(_BUMP)
        self._force_reread()

    def _revoke_agent(self, agent: str, now: float) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO revoked_agents VALUES (?, ?) ON CONFLICT (agent) "
                         "DO UPDATE SET before = MAX(before, excluded.before)", (agent, now))
            conn.execute(_BUMP)
        self._force_reread()

    def close(self) -> None:
        if self._windows is not None:
            self._windows.close()
        with self._lock, self._vlock:
            for conn in (self._conn, self._vconn):
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
            self._conn = self._vconn = None
