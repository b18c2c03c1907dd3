"""Rate-limit windows in shared memory, for every process sharing a SQLite ledger.

Counting a request in SQL is a write transaction per call (``BEGIN IMMEDIATE``, a sum, an
upsert, ``COMMIT``): about 60 µs, the largest part of a rate-limited call's governance.
The window of a minute needs no durability (a lost window is a minute of leniency), only
one count that every process on the machine agrees on, so it lives in a memory-mapped file
beside the ledger, ``<ledger>.rates`` (0600), taken under ``flock``: two system calls and
a few microseconds. A SQLite ledger is one machine's by design (its WAL needs shared
memory too); Redis keeps its own windows.

Layout: a table of :data:`SLOTS` slots, one per scope (found by an 8-byte hash of its name,
linear probing). A slot holds the window's totals and a ring of :data:`RING` one-second
buckets ``(second, requests, tokens)``; a call subtracts the buckets that left the window
since the last one (usually none), so deciding reads four numbers, not sixty. A window
holds at most 61 live seconds (:func:`~iron_sdk.policy.store.live_after`), so a ring of 62
never overwrites a live bucket. The same buckets and the same rule as the SQL and Redis
stores: the three agree call for call. When the file cannot be mapped, or the table
is full, :meth:`RateWindows.take` raises :class:`NoWindow` and the store counts in SQL.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import mmap
import struct
import threading
from pathlib import Path

from iron_sdk.policy.store import bucket_of, live_after, window_decision
from iron_sdk.shared_map import SharedMap

SLOTS = 4096
RING = 62
_PROBE = 64  # slots tried from a scope's home before the table counts as full
_HEAD = struct.Struct("<Qqqq")  # key, requests and tokens in the window, last second swept
_KEY = struct.Struct("<Q")
_BUCKET = struct.Struct("<qqq")  # second, requests, tokens
_RING_SIZE = RING * _BUCKET.size
_SLOT_SIZE = _HEAD.size + _RING_SIZE


class NoWindow(Exception):
    """This scope cannot be counted here (no map, or the table is full): count it elsewhere."""


def _key(scope: str) -> int:
    key = int.from_bytes(hashlib.blake2b(scope.encode(), digest_size=8).digest(), "little")
    return key or 1  # 0 marks a free slot


class RateWindows:
    """The windows in ``<ledger_path>.rates``; safe across threads, processes and fork."""

    def __init__(self, ledger_path: Path, *, slots: int = SLOTS) -> None:
        self.path = ledger_path.with_name(ledger_path.name + ".rates")
        self.slots = slots
        self._size = slots * _SLOT_SIZE
        self._lock = threading.Lock()
        self._where: dict[str, int] = {}  # scope -> slot offset, found once per process
        self._shared: SharedMap | None = None
        self._opened = False  # mapped on first use (zeros are free slots), tried once

    def _open(self) -> SharedMap | None:
        if not self._opened:
            self._opened = True
            with contextlib.suppress(OSError, ValueError):
                self._shared = SharedMap(self.path, self._size)
        return self._shared

    def _slot(self, mapped: mmap.mmap, scope: str) -> int | None:
        """The offset of ``scope``'s slot, claimed if new (under the file lock)."""
        offset = self._where.get(scope)
        if offset is not None:
            return offset
        key = _key(scope)
        home = key % self.slots
        for i in range(min(_PROBE, self.slots)):
            offset = ((home + i) % self.slots) * _SLOT_SIZE
            (held,) = _KEY.unpack_from(mapped, offset)
            if held == 0:
                _KEY.pack_into(mapped, offset, key)
            elif held != key:
                continue
            if len(self._where) >= self.slots:
                self._where.clear()
            self._where[scope] = offset
            return offset
        return None

    def take(self, scope: str, tokens: int, rpm: int | None, tpm: int | None,
             now: float) -> float | None:
        """Count one request of ``tokens`` in ``scope``'s window ending at ``now`` if it
        fits: None; else the seconds until it would (nothing counted). Raises
        :class:`NoWindow` when this scope cannot be counted here."""
        with self._lock:
            shared = self._open()
            if shared is None:
                raise NoWindow(scope)
            mapped = shared.map
            shared.acquire()
            try:
                offset = self._slot(mapped, scope)
                if offset is None:
                    raise NoWindow(scope)
                key, requests, used, swept = _HEAD.unpack_from(mapped, offset)
                ring = offset + _HEAD.size
                # Buckets of the seconds that left the window since the last call leave the
                # totals (one or none per call; a long pause empties the ring at once).
                expired = math.floor(live_after(now))
                if expired - swept >= RING:
                    mapped[ring:ring + _RING_SIZE] = bytes(_RING_SIZE)
                    requests = used = 0
                else:
                    for sec in range(swept + 1, expired + 1):
                        at = ring + (sec % RING) * _BUCKET.size
                        held, n, t = _BUCKET.unpack_from(mapped, at)
                        if held == sec:
                            requests, used = requests - n, used - t
                            _BUCKET.pack_into(mapped, at, 0, 0, 0)
                swept = max(swept, expired)
                if (rpm is None or requests + 1 <= rpm) and (tpm is None or used + tokens <= tpm):
                    second = bucket_of(now)
                    at = ring + (second % RING) * _BUCKET.size
                    held, n, t = _BUCKET.unpack_from(mapped, at)
                    if held != second:  # a bucket still counted (a clock that went back)
                        requests, used, n, t = requests - n, used - t, 0, 0
                    _BUCKET.pack_into(mapped, at, second, n + 1, t + tokens)
                    _HEAD.pack_into(mapped, offset, key, requests + 1, used + tokens, swept)
                    return None
                _HEAD.pack_into(mapped, offset, key, requests, used, swept)
                buckets = [b for b in _BUCKET.iter_unpack(mapped[ring:ring + _RING_SIZE])
                           if b[0] > swept]
            finally:
                shared.release()
        return window_decision(buckets, now, tokens, rpm, tpm)

    def close(self) -> None:
        with self._lock:
            if self._shared is not None:
                self._shared.close()
            self._shared, self._opened = None, False  # reopened if used again
