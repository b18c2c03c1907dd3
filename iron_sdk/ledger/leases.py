"""Keep the leases of this process's in-flight reservations alive.

A reservation is a lease (``BudgetConfig.lease_s``, 30 s by default): if its process dies,
the lease runs out and the reservation is charged at its reserved amount (see
:mod:`iron_sdk.ledger.base`). A live process must therefore renew the leases of the calls
it still has in flight, however long they run: one daemon thread per ledger renews them
every third of the shortest lease held.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref

from iron_sdk.ledger.base import Ledger, LedgerError

log = logging.getLogger("iron_sdk.ledger")
_LIVE: weakref.WeakSet[LeaseKeeper] = weakref.WeakSet()


class LeaseKeeper:
    """Renews the leases of the ids it holds (``hold`` after reserve, ``drop`` at settle or
    release). The thread starts on the first ``hold``."""

    def __init__(self, ledger: Ledger, *, name: str = "iron-lease-keeper") -> None:
        self.ledger = ledger
        self.name = name
        self._held: dict[str, float] = {}  # id -> lease seconds
        self._cond = threading.Condition()
        self._closed = False
        self._basis: float | None = None  # the shortest lease the thread's sleep allows for
        self._thread: threading.Thread | None = None
        _LIVE.add(self)

    def hold(self, reservation_id: str, ttl_s: float) -> None:
        self._held[reservation_id] = ttl_s  # atomic under the GIL; no lock on the hot path
        basis = self._basis
        if basis is None or ttl_s < basis:  # the thread sleeps too long for this lease
            with self._cond:
                self._basis = ttl_s if basis is None else min(basis, ttl_s)
                self._cond.notify_all()
        if self._thread is None:
            with self._cond:
                if self._thread is None and not self._closed:
                    self._thread = threading.Thread(target=self._run, daemon=True,
                                                    name=self.name)
                    self._thread.start()

    def drop(self, reservation_id: str) -> None:
        self._held.pop(reservation_id, None)  # atomic under the GIL; no lock on the hot path

    def held(self) -> dict[str, float]:
        return self._held.copy()  # atomic under the GIL

    def renew_now(self) -> int:
        """Renew every held lease for its full length now; return how many were renewed."""
        by_ttl: dict[float, list[str]] = {}
        for rid, ttl in self.held().items():
            by_ttl.setdefault(ttl, []).append(rid)
        renewed = 0
        for ttl, ids in by_ttl.items():
            try:
                renewed += self.ledger.renew(ids, ttl)
            except LedgerError as exc:  # the next round tries again; the lease has slack
                log.warning("lease renewal of %d calls failed: %s", len(ids), exc)
        return renewed

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                ttls = self.held().values()
                # The shortest lease seen lately, kept while nothing is held so that the
                # next call's hold() need not wake this thread.
                self._basis = min(ttls) if ttls else self._basis
                self._cond.wait(self._basis / 3 if self._basis is not None else 60.0)
                if self._closed:
                    return
            if self._held:
                self.renew_now()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _forget(self) -> None:
        self._cond = threading.Condition()
        self._held, self._thread, self._basis = {}, None, None


def _after_fork_in_child() -> None:
    for keeper in list(_LIVE):  # the parent's calls are the parent's to renew
        keeper._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
