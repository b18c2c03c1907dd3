"""The tamper-evident audit log: JSON lines chained by HMAC-SHA256.

Every line is the event's JSON with a sequence number ``seq`` (counted across rotated
files) and, last, ``"mac"``: HMAC-SHA256, under a key derived from the home secret, of
the previous line's MAC (raw bytes) followed by this line's bytes up to the MAC (the JSON
object without its ``mac`` member)::

    {"event_id":"...","type":"call_completed",...,"seq":42,"mac":"9f0c..."}

The first line of each file also carries ``prev`` (the MAC it chains from: the last
line of the previous file, or 32 zero bytes for ``seq`` 1), so one file can be checked
alone. Editing, inserting, deleting or reordering lines breaks the chain at the first
line affected; cutting lines off the end is caught by the head file (``audit.head``:
the last ``seq`` and MAC written, signed with the same key). Without the key nobody can
write a line that verifies.

Rotation by size: ``audit.jsonl`` is renamed ``audit.1.jsonl``, then ``audit.2.jsonl``...
(numbered in the order written, so a rotated file keeps its name and a reported line its
place), and the new file chains on from the last MAC of the previous one.

Several processes append to one chain: each append holds an advisory lock
(``fcntl.flock`` on ``audit.lock``) around reading the last MAC and writing. A process
caches the last ``seq``/MAC with the file's inode and size, and reads the tail again only
when another process appended or rotated in between.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger("iron_sdk")

LABEL = b"iron-sdk audit log chain v1"
GENESIS = bytes(32)
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
_MAC_SUFFIX = re.compile(rb',"mac":"([0-9a-f]{64})"\}$')
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TAIL_CHUNK = 64 * 1024
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
_HEAD_SIZE = 256  # the head is a fixed-size record, rewritten in place

Event = dict[str, Any]


def audit_key(secret: bytes) -> bytes:
    """The chain's key: HMAC-SHA256 of a fixed label under the home secret, so the MAC
    key is never the token-signing key itself."""
    return hmac.new(secret, LABEL, hashlib.sha256).digest()


# -- the files of one log ------------------------------------------------------------
def rotated_path(path: Path, n: int) -> Path:
    return path.with_name(f"{path.stem}.{n}{path.suffix}")


def head_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.head")


def lock_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.lock")


def rotated_numbers(path: Path) -> list[int]:
    """Numbers of the rotated files of ``path``, oldest first."""
    pattern = re.compile(rf"^{re.escape(path.stem)}\.(\d+){re.escape(path.suffix)}$")
    if not path.parent.is_dir():
        return []
    return sorted(int(m[1]) for p in path.parent.iterdir() if (m := pattern.match(p.name)))


def log_files(path: Path) -> list[Path]:
    """The whole log in the order written: ``audit.1.jsonl``, ..., ``audit.jsonl``."""
    files = [rotated_path(path, n) for n in rotated_numbers(path)]
    return files + [path] if path.exists() else files


# -- one line --------------------------------------------------------------------------
def _mac(base: Any, prev: bytes, body: bytes) -> bytes:
    h = base.copy()
    h.update(prev)
    h.update(body)
    return h.digest()


def encode_line(base: Any, event: Event, seq: int, prev: bytes,
                first_in_file: bool) -> tuple[bytes, bytes]:
    """(line with its trailing newline, its MAC) for ``event`` chained from ``prev``."""
    if "seq" in event or "prev" in event or "mac" in event:  # ours to set
        event = {k: v for k, v in event.items() if k not in ("seq", "prev", "mac")}
    record = {**event, "seq": seq, "prev": prev.hex()} if first_in_file else {**event, "seq": seq}
    body = _ENCODER.encode(record).encode()
    mac = _mac(base, prev, body)
    return body[:-1] + b',"mac":"' + mac.hex().encode() + b'"}\n', mac


def split_line(raw: bytes) -> tuple[bytes, str] | None:
    """(the MAC'd body, the MAC in hex) of a line without its newline; None if no MAC."""
    match = _MAC_SUFFIX.search(raw)
    if match is None:
        return None
    return raw[:match.start()] + b"}", match[1].decode()


def _head_sig(key: bytes, seq: int, mac_hex: str) -> str:
    return hmac.new(key, f"head:{seq}:{mac_hex}".encode(), hashlib.sha256).hexdigest()


def read_head(path: Path, key: bytes) -> tuple[int, str] | None:
    """(seq, MAC) the head records; None if there is none. Raises ValueError if altered."""
    try:
        head = json.loads(head_path(path).read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        raise ValueError("the head file is not JSON") from None
    seq, mac_hex = head.get("seq"), head.get("mac")
    if (not isinstance(seq, int) or not isinstance(mac_hex, str)
            or not hmac.compare_digest(str(head.get("sig")), _head_sig(key, seq, mac_hex))):
        raise ValueError("the head file was altered (bad signature)")
    return seq, mac_hex


def _last_line(path: Path) -> bytes | None:
    """The last complete line of ``path`` (without newline), None if it has none."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            chunk = _TAIL_CHUNK
            while True:
                start = max(0, size - chunk)
                f.seek(start)
                data = f.read(size - start)
                end = data.rfind(b"\n")
                if end >= 0:
                    begin = data.rfind(b"\n", 0, end) + 1
                    if begin > 0 or start == 0:
                        return data[begin:end]
                elif start == 0:
                    return None
                chunk *= 4
    except FileNotFoundError:
        return None


def _line_state(raw: bytes | None) -> tuple[int, bytes] | None:
    """(seq, MAC) of a chained line; None when the line is not one."""
    if raw is None:
        return None
    parts = split_line(raw)
    if parts is None:
        return None
    try:
        seq = json.loads(parts[0]).get("seq")
    except ValueError:
        return None
    return (seq, bytes.fromhex(parts[1])) if isinstance(seq, int) else None


# -- appending -------------------------------------------------------------------------
class ChainWriter:
    """Appends events to the chained log; safe across threads (one caller at a time:
    the audit batcher) and across processes (the file lock)."""

    def __init__(self, path: Path, key: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.key = key
        self.max_bytes = max_bytes
        self._base = hmac.new(key, digestmod=hashlib.sha256)
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._head_fd: int | None = None
        self._ino = -1
        self._size = 0  # size of the file as this process last left it
        self._state: tuple[int, bytes] | None = None  # (seq, MAC) of the last line

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(lock_path(self.path), os.O_RDWR | os.O_CREAT, 0o600)

    def close(self) -> None:
        for fd in (self._fd, self._lock_fd, self._head_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock_fd = self._head_fd = None
        self._state = None

    def append(self, events: Sequence[Event]) -> None:
        if self._lock_fd is None:
            self.open()
        assert self._lock_fd is not None
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self._sync()
            self._append(events)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _append(self, events: Sequence[Event]) -> None:
        assert self._state is not None
        seq, prev = self._state
        pending: list[bytes] = []
        size = self._size
        for event in events:
            seq += 1
            line, mac = encode_line(self._base, event, seq, prev, size == 0)
            if size and size + len(line) > self.max_bytes:
                self._write(pending)
                pending = []
                self._rotate()
                size = 0
                line, mac = encode_line(self._base, event, seq, prev, True)
            pending.append(line)
            size += len(line)
            prev = mac
        self._write(pending)
        self._state = (seq, prev)
        self._write_head(seq, prev)

    def _write(self, lines: list[bytes]) -> None:
        if lines:
            assert self._fd is not None
            data = memoryview(b"".join(lines))
            while data:  # a short write (disk nearly full) goes on where it stopped
                written = os.write(self._fd, data)
                self._size += written
                data = data[written:]

    def _sync(self) -> None:
        """Under the lock: follow a rotation by another process, and re-read the last
        MAC only if the file is not as this process left it."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if self._fd is None or st is None or st.st_ino != self._ino:
            if self._fd is not None:
                os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            st = os.fstat(self._fd)
            self._ino, self._size, self._state = st.st_ino, st.st_size, None
        elif st.st_size != self._size:
            self._size, self._state = st.st_size, None
        if self._state is None:
            self._state = self._recover()

    def _recover(self) -> tuple[int, bytes]:
        """(seq, MAC) to chain from: the log's last line, or the head when it is ahead
        (lines were cut off the end: the next line then shows the break)."""
        raw = _last_line(self.path)
        state = _line_state(raw)
        if raw is not None and state is None:
            self._set_aside_unchained(raw)
        if state is None and self._size == 0:
            numbers = rotated_numbers(self.path)
            if numbers:
                state = _line_state(_last_line(rotated_path(self.path, numbers[-1])))
        try:
            head = read_head(self.path, self.key)
        except ValueError as exc:
            log.warning("audit log %s: %s; chaining from the log itself", self.path, exc)
            head = None
        if head is not None and (state is None or head[0] > state[0]):
            return head[0], bytes.fromhex(head[1])
        return state or (0, GENESIS)

    def _set_aside_unchained(self, raw: bytes) -> None:
        """A log written before lines were chained: move it aside, start the chain.
        (A damaged chained line stays where it is, for ``audit verify`` to report.)"""
        event = parse_line(raw)
        if event is None or "mac" in event:
            return
        aside = self.path.with_name(f"{self.path.stem}.unchained-{int(time.time())}"
                                    f"{self.path.suffix}")
        os.rename(self.path, aside)
        log.warning("audit log %s had unchained lines; moved to %s", self.path, aside.name)
        self._reopen_new()

    def _rotate(self) -> None:
        numbers = rotated_numbers(self.path)
        os.rename(self.path, rotated_path(self.path, (numbers[-1] if numbers else 0) + 1))
        self._reopen_new()

    def _reopen_new(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        st = os.fstat(self._fd)
        self._ino, self._size = st.st_ino, st.st_size

    def _write_head(self, seq: int, mac: bytes) -> None:
        """Overwrite the head in place (a rename per batch costs a journal commit);
        readers take the shared lock, so they never see it half written."""
        if self._head_fd is None:
            self._head_fd = os.open(head_path(self.path), os.O_RDWR | os.O_CREAT, 0o600)
        mac_hex = mac.hex()
        record = json.dumps({"seq": seq, "mac": mac_hex,
                             "sig": _head_sig(self.key, seq, mac_hex)}).encode()
        os.pwrite(self._head_fd, record.ljust(_HEAD_SIZE - 1) + b"\n", 0)


# -- verifying -------------------------------------------------------------------------
@dataclass
class Verdict:
    """What ``verify`` found: ``ok``, or the first bad ``file``:``line`` and why."""

    ok: bool
    lines: int = 0
    first_seq: int = 0
    last_seq: int = 0
    file: Path | None = None
    line: int = 0
    reason: str = ""

    def __str__(self) -> str:
        if self.ok:
            return (f"ok: {self.lines} lines intact (seq {self.first_seq}..{self.last_seq})"
                    if self.lines else "ok: the log is empty")
        return f"{self.file}:{self.line}: {self.reason}"


class _Bad(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line, self.reason = line, reason


@contextlib.contextmanager
def _shared_lock(path: Path) -> Iterator[None]:
    """Readers wait for an append in progress, so they never see half a batch."""
    try:
        fd = os.open(lock_path(path), os.O_RDONLY)
    except FileNotFoundError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def verify(files: Sequence[Path], key: bytes, *, head_of: Path | None = None,
           from_start: bool = True) -> Verdict:
    """Check the chain through ``files`` (in the order written).

    ``from_start``: the first file must begin the log (``seq`` 1). ``head_of``: the
    current log file whose head records how far the log was written (catches lines cut
    off the end)."""
    base = hmac.new(key, digestmod=hashlib.sha256)
    verdict = Verdict(ok=True)
    prev: bytes | None = None
    seq = 0
    macs_at: dict[int, str] = {}
    with _shared_lock(head_of) if head_of is not None else contextlib.nullcontext():
        head = None
        if head_of is not None:
            try:
                head = read_head(head_of, key)
            except ValueError as exc:
                return Verdict(ok=False, file=head_path(head_of), line=1, reason=str(exc))
        last_file, last_line = (files[-1] if files else head_of), 0
        for file in files:
            try:
                prev, seq, last_line = _verify_file(file, base, prev, seq, verdict,
                                                    from_start, macs_at, head)
            except _Bad as bad:
                return Verdict(ok=False, lines=verdict.lines, file=file, line=bad.line,
                               reason=bad.reason)
            except FileNotFoundError:
                return Verdict(ok=False, file=file, line=0, reason="no such file")
        if head is not None:
            head_seq, head_mac = head
            if head_seq > seq:
                return Verdict(
                    ok=False, lines=verdict.lines, file=last_file, line=last_line + 1,
                    reason=f"the log ends at seq {seq} but was written up to seq {head_seq}:"
                           " lines were cut off the end (truncated)")
            if head_seq in macs_at and macs_at[head_seq] != head_mac:
                return Verdict(ok=False, lines=verdict.lines, file=last_file, line=last_line,
                               reason=f"the line with seq {head_seq} is not the one the head "
                                      "records")
    verdict.last_seq = seq
    return verdict


def _verify_file(file: Path, base: Any, prev: bytes | None, seq: int, verdict: Verdict,
                 from_start: bool, macs_at: dict[int, str],
                 head: tuple[int, str] | None) -> tuple[bytes | None, int, int]:
    lineno = 0
    with file.open("rb") as f:
        for lineno, raw in enumerate(f, 1):  # noqa: B007 (lineno is returned)
            if not raw.endswith(b"\n"):
                raise _Bad(lineno, "incomplete last line (the file was cut)")
            parts = split_line(raw[:-1])
            if parts is None:
                raise _Bad(lineno, "the line carries no MAC")
            body, mac_hex = parts
            try:
                record = json.loads(body)
                line_seq = record["seq"]
            except (ValueError, KeyError, TypeError):
                raise _Bad(lineno, "the line is not a chained JSON record") from None
            if lineno == 1:
                claimed = record.get("prev")
                if not isinstance(claimed, str) or not _HEX64.match(claimed):
                    raise _Bad(lineno, "the file's first line says nothing of the line "
                                       "before it: lines were removed from its start")
                if prev is None:
                    if from_start and (line_seq != 1 or claimed != GENESIS.hex()):
                        raise _Bad(lineno, f"the log starts at seq {line_seq}, not 1: "
                                           "earlier lines or files are missing")
                    prev, seq = bytes.fromhex(claimed), line_seq - 1
                    verdict.first_seq = line_seq
                elif claimed != prev.hex():
                    raise _Bad(lineno, "the file does not continue the previous one: lines "
                                       "or files between them are missing or reordered")
            assert prev is not None
            expected = _mac(base, prev, body)
            if not hmac.compare_digest(expected.hex(), mac_hex):
                if line_seq != seq + 1:
                    raise _Bad(lineno, f"expected seq {seq + 1}, found {line_seq}: lines "
                                       "were deleted, inserted or reordered here")
                raise _Bad(lineno, "MAC mismatch: the line was altered or not written by "
                                   "this runtime")
            if line_seq != seq + 1:  # only a writer holding the key can get here
                raise _Bad(lineno, f"expected seq {seq + 1}, found {line_seq}")
            prev, seq = expected, line_seq
            verdict.lines += 1
            if head is not None and line_seq == head[0]:
                macs_at[line_seq] = mac_hex
    return prev, seq, lineno


# -- reading ---------------------------------------------------------------------------
def parse_line(raw: bytes | str) -> Event | None:
    """The event of one log line (with its ``seq``/``mac``), None if not JSON."""
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def read_file(f: BinaryIO) -> Iterator[Event]:
    """The events of an open log file, from where it stands to its end."""
    for raw in f:
        event = parse_line(raw)
        if event is not None:
            yield event


def read_files(files: Iterable[Path]) -> Iterator[Event]:
    """Every event of these files, in order."""
    for file in files:
        with file.open("rb") as f:
            yield from read_file(f)


def read_log(path: Path) -> Iterator[Event]:
    """Every event of the log, rotated files first."""
    return read_files(log_files(path))


def _rotated_after(path: Path, ino: int) -> bytes:
    """The whole of the files rotated after the one with inode ``ino`` (several rotations
    can happen between two polls)."""
    files = [rotated_path(path, n) for n in rotated_numbers(path)]
    for i, file in enumerate(files):
        with contextlib.suppress(FileNotFoundError):
            if file.stat().st_ino == ino:
                return b"".join(f.read_bytes() for f in files[i + 1:])
    return b""


def follow(path: Path, f: BinaryIO | None = None, *, poll_s: float = 0.2,
           stop: Callable[[], bool] | None = None) -> Iterator[Event]:
    """Events appended to the log, across rotations (``tail -f``): from where ``f`` (the
    open current file) stands, else from the end of the current file.

    ``stop``: checked between polls; following ends when it returns True."""
    ino = os.fstat(f.fileno()).st_ino if f is not None else -1
    pending = b""
    at_start = f is None  # a file present now is read from its end, a later one from its start
    try:
        while stop is None or not stop():
            if f is None:
                try:
                    f = path.open("rb")
                except FileNotFoundError:
                    at_start = False
                    time.sleep(poll_s)
                    continue
                ino = os.fstat(f.fileno()).st_ino
                if at_start:
                    f.seek(0, os.SEEK_END)
                at_start = False
            data = f.read()
            if not data:
                try:
                    rotated = os.stat(path).st_ino != ino
                except FileNotFoundError:
                    rotated = True
                if not rotated:
                    time.sleep(poll_s)
                    continue
                data = f.read() + _rotated_after(path, ino)  # then the new current file
                f.close()
                f = None
            pending += data
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                event = parse_line(raw)
                if event is not None:
                    yield event
    finally:
        if f is not None:
            f.close()
