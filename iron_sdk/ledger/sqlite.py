"""SQLite ledger: budgets shared by every thread and process that opens the same file.

Concurrency model: WAL journal (readers never block the writer), one connection per thread,
autocommit mode, and ``BEGIN IMMEDIATE`` around every multi-statement write so the reserve
check-and-insert is serialised across processes by SQLite's own write lock. Reservations
are leases (``expires`` is wall-clock time, comparable across processes): expired ones are
ignored in every sum and purged now and then, so a crashed process cannot hold budget.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from iron_sdk.ledger.base import (
    Ledger,
    LedgerError,
    ScopeState,
    Settlement,
    UsageRow,
    check_amount,
    exceeded,
    unique_scopes,
)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS scopes (
        scope TEXT PRIMARY KEY,
        limit_micro INTEGER,
        spent_micro INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS reservations (
        id TEXT NOT NULL,
        scope TEXT NOT NULL,
        amount_micro INTEGER NOT NULL,
        expires REAL NOT NULL,
        PRIMARY KEY (id, scope)
    ) WITHOUT ROWID""",
    # Covering index: the per-scope sum of active reservations never touches the table.
    """CREATE INDEX IF NOT EXISTS reservations_by_scope
        ON reservations (scope, expires, amount_micro)""",
    """CREATE TABLE IF NOT EXISTS usage (
        agent_id TEXT NOT NULL,
        model TEXT NOT NULL,
        calls INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost_micro INTEGER NOT NULL,
        PRIMARY KEY (agent_id, model)
    ) WITHOUT ROWID""",
)

_RESERVED = ("(SELECT COALESCE(SUM(amount_micro), 0) FROM reservations r "
             "WHERE r.scope = {outer}.scope AND r.expires >= ?{now})")
_INSERT_RESERVATION = "INSERT INTO reservations VALUES (?, ?, ?, ?)"
_DELETE_RESERVATION = "DELETE FROM reservations WHERE id = ?"
_PURGE = "DELETE FROM reservations WHERE expires < ?"
_UPSERT_USAGE = (
    "INSERT INTO usage VALUES (?, ?, 1, ?, ?, ?) ON CONFLICT (agent_id, model) DO UPDATE SET "
    "calls = calls + 1, input_tokens = input_tokens + excluded.input_tokens, "
    "output_tokens = output_tokens + excluded.output_tokens, "
    "cost_micro = cost_micro + excluded.cost_micro")
_SET_LIMIT = ("INSERT INTO scopes (scope, limit_micro) VALUES (?, ?) "
              "ON CONFLICT (scope) DO UPDATE SET limit_micro = excluded.limit_micro")
_STATE = ("SELECT limit_micro, spent_micro, " + _RESERVED.format(outer="s", now="2")
          + " FROM scopes s WHERE scope = ?1")
_USAGE = ("SELECT agent_id, model, calls, input_tokens, output_tokens, cost_micro "
          "FROM usage ORDER BY agent_id, model")
_RESET = "UPDATE scopes SET spent_micro = 0 WHERE scope = ?"

_PURGE_EVERY = 64  # limited reserves between purges of expired leases (cheap, table is small)

# SQL texts per number of scopes, so sqlite3's statement cache can reuse the prepared forms.
_CHECK_SQL: dict[int, str] = {}
_SETTLE_SQL: dict[int, str] = {}


def _check_sql(n: int) -> str:
    """Limit, spent and active reservations of the limited scopes among ?2..?(n+1); ?1 = now."""
    sql = _CHECK_SQL.get(n)
    if sql is None:
        marks = ", ".join(f"?{i}" for i in range(2, n + 2))
        sql = _CHECK_SQL[n] = (
            f"SELECT scope, limit_micro, spent_micro, {_RESERVED.format(outer='s', now='1')} "
            f"FROM scopes s WHERE scope IN ({marks}) AND limit_micro IS NOT NULL")
    return sql


def _settle_sql(n: int) -> str:
    """Add ?1 to spent of scopes ?3..?(n+2) (creating rows) and return their states; ?2 = now."""
    sql = _SETTLE_SQL.get(n)
    if sql is None:
        rows = ", ".join(f"(?{i}, ?1)" for i in range(3, n + 3))
        sql = _SETTLE_SQL[n] = (
            f"INSERT INTO scopes (scope, spent_micro) VALUES {rows} "
            "ON CONFLICT (scope) DO UPDATE SET spent_micro = spent_micro + excluded.spent_micro "
            # RETURNING cannot see a table alias, hence the full table name.
            "RETURNING scope, limit_micro, spent_micro, "
            f"{_RESERVED.format(outer='scopes', now='2')}")
    return sql


# Connections must not cross fork(): children of a forking parent start with fresh ones.
_LIVE: weakref.WeakSet[SQLiteLedger] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for ledger in list(_LIVE):
        ledger._forget_connections()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class SQLiteLedger(Ledger):
    """Ledger in one SQLite file, safe across threads and processes."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 10.0) -> None:
        self._path = Path(path)
        self._timeout = busy_timeout_s
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        self._reserves = 0  # racy counter is fine: it only paces purges
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            # WAL is persistent in the file; set once here, not per connection.
            conn.execute("PRAGMA journal_mode=WAL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                conn.execute(_PURGE, (time.time(),))
                conn.execute("COMMIT")
            except BaseException:
                self._abort(conn)
                raise
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise self._error(exc) from exc
        _LIVE.add(self)

    @property
    def path(self) -> Path:
        return self._path

    def __repr__(self) -> str:
        return f"SQLiteLedger({str(self._path)!r})"

    # -- connections -----------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        try:
            conn: sqlite3.Connection = self._local.conn
            return conn
        except AttributeError:
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise LedgerError(f"SQLite ledger at '{self._path}' is closed")
        # check_same_thread=False only so close() may close every thread's connection;
        # each connection is otherwise used by its own thread alone.
        conn = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None,
                               check_same_thread=False, cached_statements=64)
        try:
            # WAL + NORMAL: always consistent, no fsync per commit (power loss may drop the last).
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        with self._conns_lock:
            self._conns.append(conn)
        self._local.conn = conn
        return conn

    def _forget_connections(self) -> None:
        # Inherited connections are abandoned, not closed: closing could disturb the parent.
        self._local = threading.local()
        self._conns = []
        self._conns_lock = threading.Lock()

    def _abort(self, conn: sqlite3.Connection) -> None:
        """Roll back after a failure; a connection that cannot even do that is discarded."""
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            self._local.__dict__.pop("conn", None)
            with self._conns_lock:
                if conn in self._conns:
                    self._conns.remove(conn)
            conn.close()

    def _error(self, exc: BaseException) -> LedgerError:
        return LedgerError(f"SQLite ledger at '{self._path}' failed: {exc}")

    # -- operations ------------------------------------------------------------------

    def reserve(self, reservation_id: str, scopes: Sequence[str], amount_micro: int,
                ttl_s: float) -> bool:
        check_amount("amount_micro", amount_micro)
        uniq = unique_scopes(scopes)
        if not uniq:
            return False
        sql = _check_sql(len(uniq))
        try:
            conn = self._conn()
            # Unlocked pre-check on the latest committed snapshot: no limit -> done without
            # any write lock; over budget -> refuse without one (the snapshot was real).
            rows = conn.execute(sql, (time.time(), *uniq)).fetchall()
            if not rows:
                return False
            _check(uniq, rows, amount_micro)
            try:  # BEGIN inside: an interrupt right after it must still roll back
                conn.execute("BEGIN IMMEDIATE")
                now = time.time()  # after the lock wait, so expiry is judged fairly
                rows = conn.execute(sql, (now, *uniq)).fetchall()  # limits may have changed
                if rows:
                    _check(uniq, rows, amount_micro)
                    expires = now + ttl_s
                    conn.executemany(_INSERT_RESERVATION, [
                        (reservation_id, row[0], amount_micro, expires) for row in rows])
                    self._reserves += 1
                    if self._reserves % _PURGE_EVERY == 0:
                        conn.execute(_PURGE, (now,))
                conn.execute("COMMIT")
            except BaseException:
                self._abort(conn)
                raise
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return bool(rows)

    def settle(self, reservation_id: str, scopes: Sequence[str], cost_micro: int, *,
               agent_id: str, model: str, input_tokens: int,
               output_tokens: int) -> list[ScopeState]:
        return self.settle_many([Settlement(reservation_id, tuple(scopes), cost_micro, agent_id,
                                            model, input_tokens, output_tokens)])[0]

    def settle_many(self, items: Sequence[Settlement]) -> list[list[ScopeState]]:
        """Settle a batch in one transaction: one commit's worth of page writes for all."""
        for item in items:
            check_amount("cost_micro", item.cost_micro)
        out: list[list[ScopeState]] = []
        try:
            conn = self._conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
                now = time.time()
                for item in items:
                    uniq = unique_scopes(item.scopes)
                    conn.execute(_DELETE_RESERVATION, (item.reservation_id,))
                    rows = conn.execute(_settle_sql(len(uniq)),
                                        (item.cost_micro, now, *uniq)).fetchall() if uniq else []
                    conn.execute(_UPSERT_USAGE, (item.agent_id, item.model, item.input_tokens,
                                                 item.output_tokens, item.cost_micro))
                    # RETURNING order is unspecified; answer in the caller's order.
                    by_scope = {row[0]: row for row in rows}
                    out.append([ScopeState(*by_scope[s]) for s in uniq])
                conn.execute("COMMIT")
            except BaseException:
                self._abort(conn)
                raise
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return out

    def release(self, reservation_id: str) -> None:
        self._write(_DELETE_RESERVATION, (reservation_id,))

    def set_limit(self, scope: str, limit_micro: int | None) -> None:
        if limit_micro is not None:
            check_amount("limit_micro", limit_micro)
        self._write(_SET_LIMIT, (scope, limit_micro))

    def reset(self, scope: str) -> None:
        self._write(_RESET, (scope,))

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        """One statement in autocommit mode is its own atomic transaction."""
        try:
            self._conn().execute(sql, params)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def state(self, scope: str) -> ScopeState:
        try:
            row = self._conn().execute(_STATE, (scope, time.time())).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return ScopeState(scope, *row) if row else ScopeState(scope, None, 0, 0)

    def scopes(self) -> list[str]:
        try:
            return [r[0] for r in self._conn().execute("SELECT scope FROM scopes ORDER BY scope")]
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def usage(self) -> list[UsageRow]:
        try:
            rows = self._conn().execute(_USAGE).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return [UsageRow(*row) for row in rows]

    def close(self) -> None:
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        self._local = threading.local()
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):  # best effort; nothing is pending
                conn.close()
        _LIVE.discard(self)


def _check(uniq: tuple[str, ...], rows: list[tuple[str, int, int, int]], amount: int) -> None:
    """Raise for the first scope, in the caller's order, whose limit the amount would break."""
    failing = {scope: (limit, spent + reserved) for scope, limit, spent, reserved in rows
               if spent + reserved + amount > limit}
    if failing:
        scope = next(s for s in uniq if s in failing)
        limit, used = failing[scope]
        raise exceeded(scope, limit, used, amount)
