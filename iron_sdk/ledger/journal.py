"""Write-ahead journal of settlements that were acknowledged but are not yet committed.

Each process appends to its own file, ``<home>/journal/<pid>-<random>.jsonl`` (0600,
directory 0700): a header line naming the ledger, then one JSON line per settlement or
release, each written with a single ``os.write`` on an ``O_APPEND`` descriptor before the
caller is answered. The file is emptied (back to its header) whenever everything written
to it has been committed, and removed when the process closes its ledger.

While its process lives, the file is ``flock``-ed; the kernel drops that lock when the
process dies, however it dies (kill -9 included). Whoever opens the ledger next takes
``journal/.lock`` (so two openers do not race) and replays every journal of that ledger
whose lock it can take, then removes it. Settlement is idempotent by call id, so replaying
an entry that did get committed charges nothing.

Durability: an entry survives the death of its process (it is in the kernel's page
cache). It is not fsynced, so a power loss or kernel crash can still lose the last ones,
unless the journal is opened with ``fsync=True`` (one fsync per settlement: slow).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import threading
import weakref
from collections.abc import Iterator
from json.encoder import encode_basestring_ascii as _q
from pathlib import Path

from iron_sdk.ledger.base import Settlement

log = logging.getLogger("iron_sdk.ledger")
Entry = Settlement | str  # a settlement, or the id of a release
_SUFFIX = ".jsonl"


def encode(entry: Entry) -> bytes:
    """One JSON line. Built by hand (strings JSON-escaped, numbers already checked ints):
    this runs in the caller's thread on every call, at a third of ``json.dumps``'s cost."""
    if isinstance(entry, str):
        return f'{{"r": {_q(entry)}}}\n'.encode()
    scopes = ", ".join(map(_q, entry.scopes))
    return (f'{{"s": [{_q(entry.reservation_id)}, [{scopes}], {entry.cost_micro:d}, '
            f'{_q(entry.agent_id)}, {_q(entry.model)}, {entry.input_tokens:d}, '
            f'{entry.output_tokens:d}]}}\n').encode()


def decode(line: bytes) -> Entry | None:
    """The entry on ``line``; None for a line cut short by a crash or otherwise unreadable."""
    try:
        obj = json.loads(line)
        if "r" in obj:
            return str(obj["r"])
        rid, scopes, cost, agent, model, tin, tout = obj["s"]
        return Settlement(rid, tuple(scopes), cost, agent, model, tin, tout)
    except (ValueError, TypeError, KeyError):
        return None


_LIVE: weakref.WeakSet[Journal] = weakref.WeakSet()


class Journal:
    """This process's journal for one ledger. Thread-safe; the file is created on first use."""

    def __init__(self, directory: Path, ledger_identity: str, *, fsync: bool = False) -> None:
        self.directory = directory
        self.identity = ledger_identity
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._header = 0
        self._pending = 0  # entries appended and not yet committed
        self.path: Path | None = None
        _LIVE.add(self)

    def _open(self) -> int:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for our whole life: "owner alive"
            header = json.dumps({"ledger": self.identity, "pid": os.getpid()}).encode() + b"\n"
            os.write(fd, header)
            self.path = self.directory / f"{name}{_SUFFIX}"
            os.rename(tmp, self.path)  # replayers only look at complete, locked files
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fd, self._header = fd, len(header)
        return fd

    def append(self, entry: Entry) -> None:
        """Write ``entry`` before the caller is answered. On a storage failure the entry is
        still counted (the writer commits it as usual) and the failure is logged."""
        line = encode(entry)
        with self._lock:
            self._pending += 1
            try:
                fd = self._fd if self._fd is not None else self._open()
                os.write(fd, line)
                if self.fsync:
                    os.fsync(fd)
            except OSError as exc:
                log.warning("ledger journal write failed (%s); this settlement is not "
                            "crash-safe until committed", type(exc).__name__)

    def committed(self, n: int) -> None:
        """``n`` entries were written to the ledger (or given up on): once none is left,
        empty the file back to its header."""
        with self._lock:
            self._pending = max(self._pending - n, 0)
            if self._pending == 0 and self._fd is not None:
                try:
                    os.ftruncate(self._fd, self._header)
                except OSError as exc:
                    log.warning("ledger journal truncate failed (%s)", type(exc).__name__)

    def close(self) -> None:
        """Remove the file if nothing in it is left to commit (else a later opener replays)."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            if self._pending == 0 and self.path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            os.close(fd)  # releases the lock

    def _forget(self) -> None:
        """In a forked child: the parent's file stays the parent's."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closes our copy only; the parent keeps its lock
        self._lock = threading.Lock()
        self._fd, self._pending, self.path = None, 0, None


def _after_fork_in_child() -> None:
    for journal in list(_LIVE):
        journal._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def _replay_lock(directory: Path) -> Iterator[None]:
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def orphans(directory: Path, ledger_identity: str) -> Iterator[tuple[Path, list[Entry]]]:
    """Under the replay lock, yield the entries of every journal of this ledger whose
    owner is dead; each file is removed once the consumer asks for the next one."""
    if not directory.is_dir():
        return
    with _replay_lock(directory):
        for path in sorted(directory.glob(f"*{_SUFFIX}")):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # removed meanwhile by its closing owner
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its owner is alive
                with os.fdopen(os.dup(fd), "rb") as f:
                    lines = f.read().split(b"\n")
                try:
                    header = json.loads(lines[0])
                except ValueError:
                    header = {}
                if header.get("ledger") != ledger_identity:
                    continue  # another ledger's journal: that ledger's openers replay it
                entries = [e for e in map(decode, lines[1:]) if e is not None]
                yield path, entries
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            finally:
                os.close(fd)
