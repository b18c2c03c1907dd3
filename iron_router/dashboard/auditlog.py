"""What the dashboard reads from the audit log: a tail that follows ``audit.jsonl``
(through rotation), keeps the recent call events, the blocked ones, each agent's last
activity and spend per minute, agent and model.

Lines are read tolerantly: a line that is not a JSON object is skipped, fields beyond
the ones named here (a MAC, new fields) are ignored, and only whitelisted fields are kept,
so no prompt text can reach a page even if an event carried one.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CALL_TYPES = frozenset({"call_completed", "call_failed", "call_blocked"})
SPEND_TYPES = frozenset({"call_completed", "call_failed"})
KEPT = ("ts", "type", "agent_id", "model", "input_tokens", "output_tokens", "cost_micro",
        "outcome", "latency_ms", "reason", "findings", "scope", "stream", "error", "status")
FIRST_READ_MAX = 64 * 1024 * 1024  # a huge log: start from its last 64 MiB
CHUNK = 4 * 1024 * 1024
KEEP_S = 31 * 86400  # spend buckets older than this are dropped
MINUTE = 60


@dataclass
class CallEvent:
    """One call event as the dashboard shows it (no text of the call, ever)."""

    seq: int
    fields: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


@dataclass
class AuditTail:
    """Follows one audit log; :meth:`refresh` reads what was appended since. Thread-safe."""

    path: Path
    recent_max: int = 500
    seq: int = 0
    recent: deque[CallEvent] = field(init=False)
    blocked: deque[CallEvent] = field(init=False)
    last_seen: dict[str, float] = field(default_factory=dict)
    spend: dict[tuple[int, str, str], int] = field(default_factory=dict)
    _offset: int = 0
    _inode: int | None = None
    _pruned: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.recent_max)
        self.blocked = deque(maxlen=self.recent_max)

    def refresh(self) -> None:
        with self._lock:
            try:
                st = self.path.stat()
            except OSError:
                return
            if self._inode is not None and st.st_ino != self._inode:
                self._finish_rotated(self._inode)
                self._offset = 0
            elif st.st_size < self._offset:  # truncated in place
                self._offset = 0
            if self._inode is None:
                self._first_read(st.st_size)
            self._inode = st.st_ino
            self._read(self.path)
            now = time.time()
            if now - self._pruned > 3600:
                self._prune(now)

    def rotated(self) -> list[Path]:
        """The rotated files of the log, oldest first (``audit.1.jsonl``, ``audit.2.jsonl``
        ..., or ``audit.jsonl.1`` ...)."""
        stem, suffix = re.escape(self.path.stem), re.escape(self.path.suffix)
        pattern = re.compile(rf"^(?:{stem}\.(\d+){suffix}|{re.escape(self.path.name)}\.(\d+))$")
        try:
            found = [(int(m[1] or m[2]), p) for p in self.path.parent.iterdir()
                     if (m := pattern.match(p.name))]
        except OSError:
            return []
        return [p for _, p in sorted(found)]

    def _first_read(self, size: int) -> None:
        """The newest ``FIRST_READ_MAX`` bytes of the log, rotated files included."""
        budget = FIRST_READ_MAX - size
        older: list[Path] = []
        for path in reversed(self.rotated()):
            try:
                budget -= path.stat().st_size
            except OSError:
                continue
            if budget < 0:
                break
            older.insert(0, path)
        for path in older:
            self._offset = 0
            self._read(path)
        self._offset = 0
        if size > FIRST_READ_MAX:
            self._offset = size - FIRST_READ_MAX
            self._read(self.path, skip_partial=True)

    def _finish_rotated(self, inode: int) -> None:
        """The log was rotated: read the rest of the old file, wherever it went."""
        for candidate in reversed(self.rotated()):
            try:
                if candidate.stat().st_ino == inode:
                    self._read(candidate)
                    return
            except OSError:
                continue

    def _read(self, path: Path, *, skip_partial: bool = False) -> None:
        try:
            with path.open("rb") as f:
                f.seek(self._offset)
                if skip_partial:
                    self._offset += len(f.readline())
                while True:
                    data = f.read(CHUNK)
                    if not data:
                        return
                    end = data.rfind(b"\n")
                    if end < 0:  # a line still being written
                        if len(data) < CHUNK:
                            return
                        self._offset += len(data)  # a giant line: skip it
                        continue
                    for line in data[:end].split(b"\n"):
                        self._take(line)
                    self._offset += end + 1
                    f.seek(self._offset)
        except OSError:
            return

    def _take(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict) or event.get("type") not in CALL_TYPES:
            return
        kept = {k: event[k] for k in KEPT if k in event}
        ts, agent, model = kept.get("ts"), kept.get("agent_id"), kept.get("model")
        if not isinstance(ts, int | float) or not isinstance(agent, str):
            return
        model = model if isinstance(model, str) else "?"
        self.seq += 1
        item = CallEvent(self.seq, kept)
        self.recent.append(item)
        if kept["type"] == "call_blocked":
            self.blocked.append(item)
        self.last_seen[agent] = max(ts, self.last_seen.get(agent, 0.0))
        cost = kept.get("cost_micro")
        if kept["type"] in SPEND_TYPES and isinstance(cost, int) and cost > 0:
            key = (int(ts) // MINUTE, agent, model)
            self.spend[key] = self.spend.get(key, 0) + cost

    def _prune(self, now: float) -> None:
        oldest = int(now - KEEP_S) // MINUTE
        self.spend = {k: v for k, v in self.spend.items() if k[0] >= oldest}
        self._pruned = now

    def after(self, seq: int) -> list[CallEvent]:
        """Call events newer than ``seq``, oldest first."""
        with self._lock:
            return [e for e in self.recent if e.seq > seq]

    def spend_series(self, by: str, start: float, step: int, buckets: int,
                     ) -> dict[str, list[int]]:
        """Spend (micro-USD) per agent (``by="agent"``) or model, in ``buckets`` buckets of
        ``step`` seconds from ``start``."""
        index = 1 if by == "agent" else 2
        out: dict[str, list[int]] = {}
        with self._lock:
            items = list(self.spend.items())
        for key, cost in items:
            slot = int((key[0] * MINUTE - start) // step)
            if 0 <= slot < buckets:
                out.setdefault(key[index], [0] * buckets)[slot] += cost
        return out
