"""SQLite ledger: budgets shared by every thread and process that opens the same file.

Concurrency model: WAL journal (readers never block the writer), one connection per thread,
autocommit mode, and ``BEGIN IMMEDIATE`` around every multi-statement write so the reserve
check-and-insert is serialised across processes by SQLite's own write lock. Reservations
are leases (``expires`` is wall-clock time, comparable across processes); see
:mod:`iron_sdk.ledger.base` for what happens when one runs out. The file and its WAL are
created 0600.

Schema version 3 (``PRAGMA user_version``); an older file is migrated when opened. From
version 0 (limits and spend in ``scopes``) limits, spend and usage are kept and the
reservations of processes that ran it are dropped; from version 2 everything is kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii as _q
from pathlib import Path

from iron_sdk.ledger import periods
from iron_sdk.ledger.base import (
    SETTLED_RETENTION_S,
    Ledger,
    LedgerError,
    ScopeState,
    Settlement,
    UsageRow,
    check_amount,
    check_ttl,
    exceeded,
    unique_scopes,
)
from iron_sdk.ledger.limits_version import LimitsVersion

SCHEMA_VERSION = 3
log = logging.getLogger("iron_sdk.ledger")
# The sum held per scope and period, kept by triggers: a reservation reads one row however
# many calls are in flight (summing the held rows cost about 0.07 µs per row in flight, and
# write-behind keeps a batch window's worth of settled calls held).
_HELD_SUM = (
    """CREATE TABLE held_sum (
        scope TEXT NOT NULL,
        pkey TEXT NOT NULL,
        amount_micro INTEGER NOT NULL,
        PRIMARY KEY (scope, pkey)
    ) WITHOUT ROWID""",
    """CREATE TRIGGER held_added AFTER INSERT ON held BEGIN
        INSERT INTO held_sum VALUES (new.scope, new.pkey, new.amount_micro)
        ON CONFLICT (scope, pkey) DO UPDATE SET
        amount_micro = amount_micro + excluded.amount_micro;
    END""",
    """CREATE TRIGGER held_removed AFTER DELETE ON held BEGIN
        UPDATE held_sum SET amount_micro = amount_micro - old.amount_micro
        WHERE scope = old.scope AND pkey = old.pkey;
    END""",
)
_TABLES = (
    # Limits only: a scope without a row has no limit and one 'total' period.
    """CREATE TABLE scopes (
        scope TEXT PRIMARY KEY,
        limit_micro INTEGER NOT NULL,
        period TEXT NOT NULL DEFAULT 'total',
        tz TEXT NOT NULL DEFAULT 'UTC'
    ) WITHOUT ROWID""",
    # Spend per scope and period key ('' for total; see iron_sdk.ledger.periods).
    """CREATE TABLE spend (
        scope TEXT NOT NULL,
        pkey TEXT NOT NULL,
        spent_micro INTEGER NOT NULL,
        PRIMARY KEY (scope, pkey)
    ) WITHOUT ROWID""",
    # One row per live reservation and limited scope, in the period it was made in; the
    # call's agent, model and `charge` (JSON [[scope, pkey], ...] of every scope of the
    # call) are what its lease running out charges. Only calls in flight live here.
    """CREATE TABLE held (
        id TEXT NOT NULL,
        scope TEXT NOT NULL,
        pkey TEXT NOT NULL,
        amount_micro INTEGER NOT NULL,
        expires REAL NOT NULL,
        agent_id TEXT NOT NULL,
        model TEXT NOT NULL,
        charge TEXT NOT NULL,
        PRIMARY KEY (id, scope)
    ) WITHOUT ROWID""",
    *_HELD_SUM,
    # Finished call ids (idempotency). unsettled_micro is set while the call stands charged
    # at its reserved amount because its lease ran out (agent_id, model, charge then too).
    """CREATE TABLE settled (
        id TEXT PRIMARY KEY,
        at REAL NOT NULL,
        unsettled_micro INTEGER,
        agent_id TEXT,
        model TEXT,
        charge TEXT
    ) WITHOUT ROWID""",
    "CREATE INDEX settled_by_time ON settled (at)",
    """CREATE TABLE usage (
        agent_id TEXT NOT NULL,
        model TEXT NOT NULL,
        calls INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost_micro INTEGER NOT NULL,
        unsettled_calls INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (agent_id, model)
    ) WITHOUT ROWID""",
)
_MIGRATE_FROM_2 = (
    "DROP INDEX held_by_scope",
    *_HELD_SUM,
    "INSERT INTO held_sum SELECT scope, pkey, SUM(amount_micro) FROM held GROUP BY scope, pkey",
)
_MIGRATE_FROM_0 = (
    "ALTER TABLE scopes RENAME TO scopes_v0",
    "ALTER TABLE usage RENAME TO usage_v0",
    "DROP TABLE reservations",
    *_TABLES,
    "INSERT INTO scopes (scope, limit_micro) SELECT scope, limit_micro FROM scopes_v0 "
    "WHERE limit_micro IS NOT NULL",
    "INSERT INTO spend SELECT scope, '', spent_micro FROM scopes_v0",
    "INSERT INTO usage (agent_id, model, calls, input_tokens, output_tokens, cost_micro) "
    "SELECT agent_id, model, calls, input_tokens, output_tokens, cost_micro FROM usage_v0",
    "DROP TABLE scopes_v0",
    "DROP TABLE usage_v0",
)

# A finished id is never reserved again (it would be held until its lease ran out).
_INSERT_HELD = ("INSERT INTO held SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 "
                "WHERE NOT EXISTS (SELECT 1 FROM settled WHERE id = ?1)")
_TAKE_HELD = "DELETE FROM held WHERE id = ? RETURNING charge"
_EXPIRED = "DELETE FROM held WHERE expires < ? RETURNING id, amount_micro, agent_id, model, charge"
_ANY_EXPIRED = "SELECT 1 FROM held WHERE expires < ? LIMIT 1"  # the table is small
_FINISHED = "SELECT unsettled_micro, agent_id, model, charge FROM settled WHERE id = ?"
_NEW_SETTLED = "INSERT OR IGNORE INTO settled (id, at) VALUES (?, ?)"
_MARK_SETTLED = "UPDATE settled SET at = ?, unsettled_micro = NULL, charge = NULL WHERE id = ?"
_MARK_UNSETTLED = "INSERT OR REPLACE INTO settled VALUES (?, ?, ?, ?, ?, ?)"
_FORGET_SETTLED = "DELETE FROM settled WHERE at < ?"
_FORGET_HELD_SUMS = "DELETE FROM held_sum WHERE amount_micro = 0"  # past periods mostly
_CHARGE = ("INSERT INTO spend VALUES (?, ?, ?) ON CONFLICT (scope, pkey) "
           "DO UPDATE SET spent_micro = spent_micro + excluded.spent_micro")
_UPSERT_USAGE = (
    "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id, model) DO UPDATE SET "
    "calls = calls + excluded.calls, input_tokens = input_tokens + excluded.input_tokens, "
    "output_tokens = output_tokens + excluded.output_tokens, "
    "cost_micro = cost_micro + excluded.cost_micro, "
    "unsettled_calls = unsettled_calls + excluded.unsettled_calls")
_RENEW = "UPDATE held SET expires = ? WHERE id = ?"
_SET_LIMIT = ("INSERT INTO scopes VALUES (?, ?, ?, ?) ON CONFLICT (scope) DO UPDATE SET "
              "limit_micro = excluded.limit_micro, period = excluded.period, tz = excluded.tz")
_REMOVE_LIMIT = "DELETE FROM scopes WHERE scope = ?"
_CONFIGS = "SELECT scope, period, tz FROM scopes WHERE scope IN ({marks})"
_SCOPES = "SELECT scope FROM scopes UNION SELECT scope FROM spend ORDER BY scope"
_USAGE = ("SELECT agent_id, model, calls, input_tokens, output_tokens, cost_micro, "
          "unsettled_calls FROM usage ORDER BY agent_id, model")
_RESET = "UPDATE spend SET spent_micro = 0 WHERE scope = ? AND pkey = ?"

_PURGE_EVERY = 64  # limited reserves between charges of expired leases
_CHECKPOINT_BYTES = 4 << 20  # WAL size at which upkeep copies it into the database
_LOOK_EVERY = 16  # upkeeps between looks at the WAL's size (a batch writes a few pages)
_FORGET_EVERY = 256  # settlements between sweeps of finished ids past retention

_HOLD_SQL: dict[int, str] = {}
_STATE_SQL: dict[tuple[int, bool], str] = {}  # SQL texts per shape, for the statement cache


def _state_sql(n: int, limited_only: bool) -> str:
    """Per (scope, pkey) pair in the parameters: scope, limit, period, tz, spent, held, in
    order (only the scopes with a limit if ``limited_only``). A UNION ALL of primary-key
    lookups: about half the cost of a join over a VALUES list."""
    sql = _STATE_SQL.get((n, limited_only))
    if sql is None:
        parts = []
        for i in range(n):
            scope, pkey = f"?{2 * i + 1}", f"?{2 * i + 2}"
            source = (f"scopes s WHERE s.scope = {scope}" if limited_only
                      else f"(SELECT 1) LEFT JOIN scopes s ON s.scope = {scope}")
            parts.append(
                f"SELECT {scope}, s.limit_micro, s.period, s.tz, "
                f"COALESCE((SELECT spent_micro FROM spend WHERE scope = {scope} "
                f"AND pkey = {pkey}), 0), "
                f"COALESCE((SELECT amount_micro FROM held_sum WHERE scope = {scope} "
                f"AND pkey = {pkey}), 0) FROM {source}")
        sql = _STATE_SQL[(n, limited_only)] = " UNION ALL ".join(parts)
    return sql


def _hold_sql(n: int) -> str:
    """Reserve in one statement (its own transaction: SQLite takes the write lock before
    reading). Parameters: id, amount, expires, agent, model, charge, how many scopes are
    expected to have a periodic limit, then per scope: scope, pkey, period and tz as last
    seen. Inserts a held row per limited scope only if every limited scope's config is as
    last seen, none assumed periodic lost its limit, all fit and the id is not finished;
    else nothing (the full check under the lock then says why)."""
    sql = _HOLD_SQL.get(n)
    if sql is None:
        parts = []
        for i in range(n):
            scope, pkey, period, tz = (f"?{8 + 4 * i + k}" for k in range(4))
            parts.append(
                f"SELECT s.scope, {pkey}, s.limit_micro, s.period = {period} AND s.tz = {tz}, "
                f"COALESCE((SELECT spent_micro FROM spend WHERE scope = {scope} "
                f"AND pkey = {pkey}), 0), "
                f"COALESCE((SELECT amount_micro FROM held_sum WHERE scope = {scope} "
                f"AND pkey = {pkey}), 0) FROM scopes s WHERE s.scope = {scope}")
        sql = _HOLD_SQL[n] = (
            "INSERT INTO held WITH st (scope, pkey, lim, same, spent, in_flight) AS ("
            + " UNION ALL ".join(parts) + ") "
            "SELECT ?1, scope, pkey, ?2, ?3, ?4, ?5, ?6 FROM st "
            "WHERE NOT EXISTS (SELECT 1 FROM st WHERE NOT same OR spent + in_flight + ?2 > lim) "
            "AND (SELECT count(*) FROM st WHERE pkey != '') = ?7 "
            "AND NOT EXISTS (SELECT 1 FROM settled WHERE id = ?1)")
    return sql


def _charge_json(pairs: list[str]) -> str:
    """A held row's ``charge``: JSON [[scope, pkey], ...] from flat (scope, pkey) pairs."""
    return "[" + ", ".join(f"[{_q(s)}, {_q(k)}]" for s, k in zip(pairs[::2], pairs[1::2],
                                                                   strict=True)) + "]"


def _charge_sql(n: int) -> str:
    """Add to the spend of n (scope, pkey, amount) triples; return per pair: scope, pkey,
    spent (after), limit, period, tz, held (RETURNING order is unspecified)."""
    sql = _CHARGE_SQL.get(n)
    if sql is None:
        cfg = "(SELECT {} FROM scopes s WHERE s.scope = spend.scope)"
        sql = _CHARGE_SQL[n] = (
            f"INSERT INTO spend VALUES {', '.join(['(?, ?, ?)'] * n)} "
            "ON CONFLICT (scope, pkey) DO UPDATE SET "
            "spent_micro = spent_micro + excluded.spent_micro "
            f"RETURNING scope, pkey, spent_micro, {cfg.format('limit_micro')}, "
            f"{cfg.format('period')}, {cfg.format('tz')}, COALESCE((SELECT amount_micro FROM "
            "held_sum h WHERE h.scope = spend.scope AND h.pkey = spend.pkey), 0)")
    return sql


def _new_settled_sql(n: int) -> str:
    """Record n (id, at) pairs as finished; RETURNING names the ids that were not yet."""
    return ("INSERT OR IGNORE INTO settled (id, at) VALUES "
            f"{', '.join(['(?, ?)'] * n)} RETURNING id")


def _take_held_sql(n: int) -> str:
    """Drop the reservations of n ids; RETURNING gives (id, scope, pkey) per held scope."""
    return f"DELETE FROM held WHERE id IN ({', '.join(['?'] * n)}) RETURNING id, scope, pkey"


_CHARGE_SQL: dict[int, str] = {}
_CHUNK = 256  # items per statement: far below SQLite's limit on parameters


class _StaleConfig(Exception):  # noqa: N818 - internal signal, never escapes
    """A scope's period changed since this process last looked (the batch is redone)."""


# Connections must not cross fork(): children of a forking parent start with fresh ones.
_LIVE: weakref.WeakSet[SQLiteLedger] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for ledger in list(_LIVE):
        ledger._forget_connections()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_Row = tuple[str, int | None, str | None, str | None, int, int]
_States = list[list[ScopeState]]


class SQLiteLedger(Ledger):
    """Ledger in one SQLite file, safe across threads and processes."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 10.0) -> None:
        self._path = Path(path)
        self.home = self._path.parent
        self._timeout = busy_timeout_s
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        self._reserves = 0  # racy counters are fine: they only pace sweeps
        self._settles = 0
        # scope -> (period, tz) last seen; checked against the row on every use.
        self._configs: dict[str, tuple[str, str]] = {}
        # (scope, pkey, ...) -> the parameters of _hold_sql after the first six; rebuilt
        # whenever a config is learnt (they carry the configs last seen)
        self._hold_params: dict[tuple[str, ...], tuple[object, ...]] = {}
        self._limited: set[tuple[str, ...]] = set()  # scope lists last seen with a limit
        # scope lists last seen without any limit -> the limits version read before looking
        self._unlimited: dict[tuple[str, ...], int] = {}
        self._limits_version: LimitsVersion | None = None
        self._upkept = False  # checkpoints left to upkeep() (a write-behind thread calls it)
        self._upkeeps = 0
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # 0600 from birth, WAL inherits it
                os.close(os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            self._limits_version = LimitsVersion(self._path)
            conn = self._conn()
            # WAL is persistent in the file; set once here, not per connection.
            conn.execute("PRAGMA journal_mode=WAL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                self._migrate(conn)
                self._expire(conn, time.time())
                conn.execute("COMMIT")
            except BaseException:
                self._abort(conn)
                raise
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise self._error(exc) from exc
        _LIVE.add(self)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise LedgerError(f"SQLite ledger at '{self._path}' has schema version {version}; "
                              f"this iron-sdk knows up to {SCHEMA_VERSION}: upgrade iron-sdk")
        if version == 2:
            steps = _MIGRATE_FROM_2
        elif conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'scopes'").fetchone():
            steps = _MIGRATE_FROM_0
        else:
            steps = _TABLES
        for stmt in steps:
            conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def path(self) -> Path:
        return self._path

    @property
    def identity(self) -> str:
        return f"sqlite://{self._path.resolve()}"

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
                               check_same_thread=False, cached_statements=128)
        try:
            # WAL + NORMAL: always consistent, no fsync per commit (power loss may drop the last).
            conn.execute("PRAGMA synchronous=NORMAL")
            if self._upkept:
                conn.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            conn.close()
            raise
        with self._conns_lock:
            self._conns.append(conn)
        self._local.conn = conn
        return conn

    def upkeep(self) -> None:
        """Checkpoint the WAL once it passes 4 MB (its size looked at every 16th call). By
        default SQLite checkpoints in whichever commit crosses 1000 pages, copying the WAL
        into the database and syncing it: a millisecond stall on a caller's reservation.
        From the first call on, this process's connections leave that to this method
        (other processes keep their own rule, and a checkpoint is shared work: whoever
        runs it, the WAL is copied)."""
        try:
            if not self._upkept:
                self._upkept = True
                with self._conns_lock:
                    conns = list(self._conns)
                for conn in conns:  # SQLite serialises a connection used from two threads
                    conn.execute("PRAGMA wal_autocheckpoint=0")
            self._upkeeps += 1
            if self._upkeeps % _LOOK_EVERY:
                return
            wal = self._path.with_name(self._path.name + "-wal")
            if wal.stat().st_size >= _CHECKPOINT_BYTES:
                self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")
        except (OSError, sqlite3.Error) as exc:  # the next batch tries again
            log.debug("ledger upkeep failed: %s", type(exc).__name__)

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

    def _transaction(self, work):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
        """Run ``work(conn, now)`` inside BEGIN IMMEDIATE … COMMIT; storage errors become
        LedgerError, anything else (a refusal, a bad value) rolls back and propagates."""
        try:
            conn = self._conn()
            try:  # BEGIN inside: an interrupt right after it must still roll back
                conn.execute("BEGIN IMMEDIATE")
                result = work(conn, time.time())  # after the lock wait: judged fairly
                conn.execute("COMMIT")
            except BaseException:
                self._abort(conn)
                raise
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return result

    # -- periods ---------------------------------------------------------------------

    def _pairs(self, uniq: tuple[str, ...], now: float) -> list[str]:
        """Flat (scope, current pkey) parameters, from the configs last seen."""
        flat: list[str] = []
        for scope in uniq:
            cfg = self._configs.get(scope)
            flat += (scope, "" if cfg is None else periods.current(*cfg, now).key)
        return flat

    def _stale(self, rows: list[_Row]) -> bool:
        """Learn the configs in ``rows``; True if a pkey was computed from an outdated one."""
        stale = False
        configs, total = self._configs, periods.TOTAL
        for scope, limit, period, tz, _, _ in rows:
            cfg = total if limit is None else (period, tz)
            if configs.get(scope, total) != cfg:
                stale = True
                if cfg == total:
                    configs.pop(scope, None)
                else:
                    configs[scope] = cfg  # type: ignore[assignment]
                self._hold_params.clear()
        return stale

    def _check(self, conn: sqlite3.Connection, uniq: tuple[str, ...], now: float,
               amount: int) -> tuple[list[str], list[_Row]]:
        """Limited scopes' rows for the current periods; raise if the amount does not fit."""
        sql = _state_sql(len(uniq), limited_only=True)
        configs = self._configs
        while True:
            pairs = self._pairs(uniq, now)
            rows = conn.execute(sql, pairs).fetchall()
            stale = self._stale(rows)
            if configs:  # a limit removed since: its scope is back to one total period
                limited = {row[0] for row in rows}
                for scope in [s for s in uniq if s in configs and s not in limited]:
                    del configs[scope]
                    self._hold_params.clear()
                    stale = True
            if not stale:
                break
        over = {row[0]: row for row in rows if row[4] + row[5] + amount > row[1]}
        for scope in uniq:  # the first that does not fit, in the caller's order
            if scope in over:
                _, limit, _, _, spent, held = over[scope]
                raise exceeded(scope, limit, spent + held, amount)
        return pairs, rows

    def _states(self, conn: sqlite3.Connection, flat: list[str]) -> list[ScopeState]:
        rows = conn.execute(_state_sql(len(flat) // 2, limited_only=False), flat).fetchall()
        out = []
        for (scope, limit, _, _, spent, held), pkey in zip(rows, flat[1::2], strict=True):
            period = periods.of_key(pkey)
            out.append(ScopeState(scope, limit, spent, held, period.name, period.start,
                                  period.end))
        return out

    # -- operations ------------------------------------------------------------------

    def reserve(self, reservation_id: str, scopes: Sequence[str], amount_micro: int,
                ttl_s: float, *, agent_id: str = "", model: str = "") -> bool:
        check_amount("amount_micro", amount_micro)
        check_ttl(ttl_s)
        uniq = unique_scopes(scopes)
        if not uniq:
            return False
        if uniq not in self._limited:
            # No limit on any of these scopes (the common case) -> nothing to hold: known
            # without a query while no limit changed since we looked (limits_version), else
            # an unlocked check on the latest committed snapshot, without the write lock.
            # Once these scopes were seen limited, the check under the lock is the only one.
            version = self._limits_version.read() if self._limits_version else None
            if version is not None and self._unlimited.get(uniq) == version:
                return False
            try:
                _, rows = self._check(self._conn(), uniq, time.time(), amount_micro)
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            if not rows:
                if version is not None:
                    if len(self._unlimited) >= 1024:
                        self._unlimited.clear()
                    self._unlimited[uniq] = version
                return False
            if len(self._limited) >= 1024:
                self._limited.clear()
            self._limited.add(uniq)

        self._reserves += 1
        purge = self._reserves % _PURGE_EVERY == 0  # racy counter: it only paces sweeps

        def work(conn: sqlite3.Connection, now: float) -> bool:
            if purge:
                self._expire(conn, now)
            pairs, rows = self._check(conn, uniq, now, amount_micro)  # limits may have changed
            if not rows:
                self._limited.discard(uniq)
                return False
            by_scope = dict(zip(pairs[::2], pairs[1::2], strict=True))
            expires, charge = now + ttl_s, _charge_json(pairs)
            inserted = conn.executemany(_INSERT_HELD, [
                (reservation_id, row[0], by_scope[row[0]], amount_micro, expires, agent_id,
                 model, charge) for row in rows]).rowcount
            if inserted != len(rows):
                raise LedgerError(f"reservation id {reservation_id!r} is already in use")
            return True

        try:
            # Scopes known to be limited: first the one-statement hold (a third cheaper than
            # BEGIN, check, insert, COMMIT); when it holds nothing, the full check says why.
            if not purge and self._hold(reservation_id, uniq, amount_micro, ttl_s, agent_id,
                                        model):
                return True
            return bool(self._transaction(work))
        except LedgerError as exc:
            if "UNIQUE" in str(exc):
                raise LedgerError(f"reservation id {reservation_id!r} is already in use") from exc
            raise

    def _hold(self, reservation_id: str, uniq: tuple[str, ...], amount_micro: int,
              ttl_s: float, agent_id: str, model: str) -> bool:
        """:func:`_hold_sql` for ``uniq`` with the configs last seen; True if it held.
        ``now`` is read before the write lock, so a wait for it shortens the lease."""
        now = time.time()
        pairs = self._pairs(uniq, now)
        key = tuple(pairs)
        fixed = self._hold_params.get(key)
        if fixed is None:  # once per scope list and period
            configs, total = self._configs, periods.TOTAL
            built: list[object] = [_charge_json(pairs), sum(1 for k in pairs[1::2] if k)]
            for i, scope in enumerate(uniq):
                built += (scope, pairs[2 * i + 1], *configs.get(scope, total))
            if len(self._hold_params) >= 1024:
                self._hold_params.clear()
            fixed = self._hold_params[key] = tuple(built)
        params = (reservation_id, amount_micro, now + ttl_s, agent_id, model, *fixed)
        try:
            return self._conn().execute(_hold_sql(len(uniq)), params).rowcount > 0
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def settle(self, reservation_id: str, scopes: Sequence[str], cost_micro: int, *,
               agent_id: str, model: str, input_tokens: int,
               output_tokens: int) -> list[ScopeState]:
        return self.settle_many([Settlement(reservation_id, tuple(scopes), cost_micro, agent_id,
                                            model, input_tokens, output_tokens)])[0]

    def settle_many(self, items: Sequence[Settlement]) -> list[list[ScopeState]]:
        """Settle a batch in one transaction (all or nothing). The batch costs a handful of
        statements whatever its size: ids, reservations, spend and usage are each written
        with one statement per chunk of :data:`_CHUNK` items."""
        shapes = []
        for item in items:
            item.check()
            shapes.append(unique_scopes(item.scopes))

        def work(conn: sqlite3.Connection, now: float) -> list[Callable[[], _States]]:
            self._settles += len(items)
            if self._settles % _FORGET_EVERY < len(items):
                conn.execute(_FORGET_SETTLED, (now - SETTLED_RETENTION_S,))
                conn.execute(_FORGET_HELD_SUMS)
            return [self._settle_chunk(conn, now, items[k:k + _CHUNK], shapes[k:k + _CHUNK])
                    for k in range(0, len(items), _CHUNK)]

        while True:
            try:
                builders: list[Callable[[], _States]] = self._transaction(work)
                break
            except _StaleConfig:  # a period changed since we last looked: learnt, again
                continue
        # The states are built after COMMIT: the write lock is held for the SQL alone.
        return [states for build in builders for states in build()]

    def _settle_chunk(self, conn: sqlite3.Connection, now: float, items: Sequence[Settlement],
                      shapes: Sequence[tuple[str, ...]]) -> Callable[[], _States]:
        """Write a chunk; return what builds its states (called after the commit)."""
        ids = [item.reservation_id for item in items]
        fresh = {r[0] for r in conn.execute(_new_settled_sql(len(ids)),
                                            [x for rid in ids for x in (rid, now)])}
        held: dict[str, dict[str, str]] = {}  # id -> scope -> the period it was reserved in
        if fresh:
            for rid, scope, key in conn.execute(_take_held_sql(len(fresh)), list(fresh)):
                held.setdefault(rid, {})[scope] = key
        plan: list[tuple[int, list[tuple[str, str]]]] = []  # item index, its charged keys
        totals: dict[tuple[str, str], int] = {}
        guessed: set[str] = set()  # scopes whose period came from the configs last seen
        usage: dict[tuple[str, str], list[int]] = {}
        finished: dict[int, list[str]] = {}  # item index -> its (scope, pkey) pairs, flat
        for n, (item, uniq) in enumerate(zip(items, shapes, strict=True)):
            rid = item.reservation_id
            if rid not in fresh:  # finished before (or earlier in this batch)
                finished[n] = self._settle_again(conn, now, item, uniq)
                continue
            fresh.discard(rid)
            keys = held.get(rid, {})  # scopes without a limit have one period: the current
            pairs = []
            for scope in uniq:
                key = keys.get(scope)
                if key is None:
                    key = self._pairs((scope,), now)[1]
                    guessed.add(scope)
                pairs.append((scope, key))
                totals[(scope, key)] = totals.get((scope, key), 0) + item.cost_micro
            plan.append((n, pairs))
            row = usage.setdefault((item.agent_id, item.model), [0, 0, 0, 0])
            row[0] += 1
            row[1] += item.input_tokens
            row[2] += item.output_tokens
            row[3] += item.cost_micro
        after: dict[tuple[str, str], tuple[int | None, int, int]] = {}  # limit, spent, held
        if totals:
            flat = [x for (scope, key), cost in totals.items() for x in (scope, key, cost)]
            for scope, key, spent, limit, period, tz, in_flight in conn.execute(
                    _charge_sql(len(totals)), flat).fetchall():
                if scope in guessed and self._stale([(scope, limit, period, tz, 0, 0)]):
                    raise _StaleConfig
                after[(scope, key)] = (limit, spent, in_flight)
            conn.executemany(_UPSERT_USAGE, [(agent, model, *vals, 0)
                                             for (agent, model), vals in usage.items()])
        again = {n: self._states(conn, flat) for n, flat in finished.items()}

        def build() -> _States:
            """Each item's states: the spend right after it, in the batch's order."""
            running = {k: after[k][1] - total for k, total in totals.items()}
            out = again
            for n, pairs in plan:
                states = []
                for scope, key in pairs:
                    running[(scope, key)] += items[n].cost_micro
                    limit, _, in_flight = after[(scope, key)]
                    period = periods.of_key(key)
                    states.append(ScopeState(scope, limit, running[(scope, key)], in_flight,
                                             period.name, period.start, period.end))
                out[n] = states
            return [out[n] for n in range(len(items))]

        return build

    def _settle_again(self, conn: sqlite3.Connection, now: float, item: Settlement,
                      uniq: tuple[str, ...]) -> list[str]:
        """An id already finished: nothing to charge, unless its lease ran out and it stands
        charged at its reserved amount; then that charge becomes the true cost, once.
        Returns the (scope, pkey) pairs, flat, whose states to report."""
        rid, cost = item.reservation_id, item.cost_micro
        unsettled, agent, model, charge = conn.execute(_FINISHED, (rid,)).fetchone()
        keys = dict(json.loads(charge)) if charge else {}
        if unsettled is not None:
            conn.executemany(_CHARGE, [(s, k, cost - unsettled) for s, k in keys.items()])
            conn.execute(_UPSERT_USAGE, (agent, model, 0, 0, 0, -unsettled, -1))
            conn.execute(_UPSERT_USAGE, (item.agent_id, item.model, 1, item.input_tokens,
                                         item.output_tokens, cost, 0))
            conn.execute(_MARK_SETTLED, (now, rid))
        flat: list[str] = []
        for s in uniq:
            flat += (s, keys[s] if s in keys else self._pairs((s,), now)[1])
        return flat

    def _current_keys(self, conn: sqlite3.Connection, uniq: tuple[str, ...],
                      now: float) -> dict[str, str]:
        marks = ", ".join("?" * len(uniq))
        rows = conn.execute(_CONFIGS.format(marks=marks), uniq).fetchall()
        return {scope: periods.current(period, tz, now).key for scope, period, tz in rows}

    def _expire(self, conn: sqlite3.Connection, now: float) -> int:
        """Charge every reservation whose lease ran out at its reserved amount (in a txn)."""
        expired = {row[0]: row for row in conn.execute(_EXPIRED, (now,)).fetchall()}
        for rid, amount, agent, model, charge in expired.values():
            conn.execute(_TAKE_HELD, (rid,)).fetchall()  # scopes renewed apart, if any
            conn.executemany(_CHARGE, [(s, k, amount) for s, k in json.loads(charge)])
            conn.execute(_UPSERT_USAGE, (agent, model, 0, 0, 0, amount, 1))
            conn.execute(_MARK_UNSETTLED, (rid, now, amount, agent, model, charge))
        return len(expired)

    def expire_leases(self) -> int:
        return self._transaction(self._expire)  # type: ignore[no-any-return]

    def _expire_if_due(self) -> None:
        """Reads first charge leases that ran out, taking the write lock only if one did."""
        try:
            due = self._conn().execute(_ANY_EXPIRED, (time.time(),)).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        if due:
            self.expire_leases()

    def release(self, reservation_id: str) -> None:
        def work(conn: sqlite3.Connection, now: float) -> None:
            if conn.execute(_NEW_SETTLED, (reservation_id, now)).rowcount == 0:
                unsettled, agent, model, charge = conn.execute(
                    _FINISHED, (reservation_id,)).fetchone()
                if unsettled is not None:  # charged when its lease ran out; it cost nothing
                    conn.executemany(_CHARGE, [(s, k, -unsettled)
                                               for s, k in json.loads(charge)])
                    conn.execute(_UPSERT_USAGE, (agent, model, 0, 0, 0, -unsettled, -1))
                    conn.execute(_MARK_SETTLED, (now, reservation_id))
                return
            conn.execute(_TAKE_HELD, (reservation_id,)).fetchall()

        self._transaction(work)

    def renew(self, reservation_ids: Sequence[str], ttl_s: float) -> int:
        check_ttl(ttl_s)
        ids = list(reservation_ids)
        if not ids:
            return 0

        def work(conn: sqlite3.Connection, now: float) -> int:
            return sum(conn.execute(_RENEW, (now + ttl_s, rid)).rowcount > 0 for rid in ids)

        return self._transaction(work)  # type: ignore[no-any-return]

    def set_limit(self, scope: str, limit_micro: int | None, *, period: str = "total",
                  tz: str = "UTC") -> None:
        if limit_micro is None:
            self._write(_REMOVE_LIMIT, (scope,))
        else:
            check_amount("limit_micro", limit_micro)
            periods.check_period(period, tz)
            self._write(_SET_LIMIT, (scope, limit_micro, period, tz))
        if self._limits_version is not None:  # committed: every process looks again
            self._limits_version.bump()

    def reset(self, scope: str) -> None:
        def work(conn: sqlite3.Connection, now: float) -> None:
            key = self._current_keys(conn, (scope,), now).get(scope, "")
            conn.execute(_RESET, (scope, key))

        self._transaction(work)

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        """One statement in autocommit mode is its own atomic transaction."""
        try:
            self._conn().execute(sql, params)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def state(self, scope: str) -> ScopeState:
        self._expire_if_due()
        try:
            conn = self._conn()
            return self._states(conn, self._current_flat(conn, scope))[0]
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _current_flat(self, conn: sqlite3.Connection, scope: str) -> list[str]:
        return [scope, self._current_keys(conn, (scope,), time.time()).get(scope, "")]

    def scopes(self) -> list[str]:
        try:
            return [r[0] for r in self._conn().execute(_SCOPES)]
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def usage(self) -> list[UsageRow]:
        self._expire_if_due()
        try:
            rows = self._conn().execute(_USAGE).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return [UsageRow(*row) for row in rows]

    def close(self) -> None:
        self._closed = True
        if self._limits_version is not None:
            self._limits_version.close()
        with self._conns_lock:
            conns, self._conns = self._conns, []
        self._local = threading.local()
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):  # best effort; nothing is pending
                conn.close()
        _LIVE.discard(self)
