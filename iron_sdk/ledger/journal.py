"""Write-ahead journal of settlements that were acknowledged but are not yet committed.

Each process appends to its own file, ``<home>/journal/<pid>-<random>.jsonl`` (0600,
directory 0700): a header line naming the ledger, then one JSON line per settlement or
release, copied into a shared memory map of the file before the caller is answered (no
system call, so the caller's thread keeps the GIL: an ``os.write`` per call let the
writer threads take it mid-call, doubling the call's latency). The space after the last
entry is zeros; the map grows when full. Whenever everything written has been committed
the entries are zeroed (the file is back to its header), and the file is removed when the
process closes its ledger.

While its process lives, the file is ``flock``-ed; the kernel drops that lock when the
process dies, however it dies (kill -9 included). Whoever opens the ledger next takes
``journal/.lock`` (so two openers do not race) and replays every journal of that ledger
whose lock it can take, then removes it. Settlement is idempotent by call id, so replaying
an entry that did get committed charges nothing.

Durability: an entry survives the death of its process (a shared mapping's pages are the
kernel's page cache, written back whatever becomes of the process). It is not synced, so
a power loss or kernel crash can still lose the last ones, unless the journal is opened
with ``fsync=True`` (one msync per settlement: slow).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import mmap
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
_MAP_SIZE = 64 * 1024  # bytes of entries the map first holds (it doubles when full)


def encode(entry: Entry) -> bytes:
    """One JSON line. Built by hand (strings JSON-escaped, numbers already checked ints):
    this runs in the caller's thread on every call, at a third of ``json.dumps``'s cost;
    the escaped scopes, agent and model are kept per combination (a session repeats them)."""
    if isinstance(entry, str):
        return f'{{"r": {_q(entry)}}}\n'.encode()
    who = (entry.scopes, entry.agent_id, entry.model)
    fields = _fields.get(who)
    if fields is None:
        if len(_fields) >= 1024:
            _fields.clear()
        fields = _fields[who] = (", ".join(map(_q, entry.scopes)), _q(entry.agent_id),
                                 _q(entry.model))
    scopes, agent, model = fields
    return (f'{{"s": [{_q(entry.reservation_id)}, [{scopes}], {entry.cost_micro:d}, '
            f'{agent}, {model}, {entry.input_tokens:d}, {entry.output_tokens:d}]}}\n').encode()


_fields: dict[tuple[tuple[str, ...], str, str], tuple[str, str, str]] = {}


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
        self._map: mmap.mmap | None = None
        self._header = 0
        self._end = 0  # where the next entry goes
        self._pending = 0  # entries appended and not yet committed
        self.path: Path | None = None
        _LIVE.add(self)

    def _open(self) -> mmap.mmap:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for our whole life: "owner alive"
            header = json.dumps({"ledger": self.identity, "pid": os.getpid()}).encode() + b"\n"
            os.write(fd, header)
            os.ftruncate(fd, len(header) + _MAP_SIZE)
            mapped = mmap.mmap(fd, len(header) + _MAP_SIZE)
            self.path = self.directory / f"{name}{_SUFFIX}"
            os.rename(tmp, self.path)  # replayers only look at complete, locked files
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fd, self._map = fd, mapped
        self._header = self._end = len(header)
        return mapped

    def append(self, entry: Entry) -> None:
        """Write ``entry`` before the caller is answered. On a storage failure the entry is
        still counted (the writer commits it as usual) and the failure is logged."""
        line = encode(entry)
        with self._lock:
            self._pending += 1
            try:
                mapped = self._map if self._map is not None else self._open()
                end = self._end + len(line)
                if end > len(mapped):
                    mapped.resize(max(2 * len(mapped), end))  # the file grows with it
                mapped[self._end:end] = line
                self._end = end
                if self.fsync:
                    mapped.flush()
            except (OSError, ValueError) as exc:
                log.warning("ledger journal write failed (%s); this settlement is not "
                            "crash-safe until committed", type(exc).__name__)

    def committed(self, n: int) -> None:
        """``n`` entries were written to the ledger (or given up on): once none is left,
        zero them (the file is back to its header)."""
        with self._lock:
            self._pending = max(self._pending - n, 0)
            if self._pending == 0 and self._map is not None and self._end > self._header:
                self._map[self._header:self._end] = bytes(self._end - self._header)
                self._end = self._header

    def close(self) -> None:
        """Remove the file if nothing in it is left to commit (else a later opener replays)."""
        with self._lock:
            fd, self._fd = self._fd, None
            mapped, self._map = self._map, None
            if fd is None:
                return
            if self._pending == 0 and self.path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            if mapped is not None:
                mapped.close()
            os.close(fd)  # releases the lock

    def _forget(self) -> None:
        """In a forked child: the parent's file stays the parent's."""
        if self._map is not None:
            self._map.close()  # unmaps our copy only
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closes our copy only; the parent keeps its lock
        self._lock = threading.Lock()
        self._fd, self._map, self._pending, self.path = None, None, 0, None


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
                # The zeros after the last entry (and a line cut short) decode to None.
                entries = [e for e in map(decode, lines[1:]) if e is not None]
                yield path, entries
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            finally:
                os.close(fd)
