"""Per-deployment circuit breakers shared by every router on one Redis ledger.

:class:`SharedBreakers` is :class:`~iron_sdk.policies.reliability.DeploymentBreakers`
(the per-process breakers, which keep deciding every request) plus a background thread
that keeps them in step with the other routers through Redis. A request never waits on
Redis: ``acquire`` and ``state`` read the local view only; what happens here (a failure,
a success that closes a breaker, a trial given back) is queued for the thread.

The thread polls every ``POLL_S`` (0.25 s, the policy stores' ``CHECK_EVERY_S``): one
script call that reads one hash holding only the deployments with recent failures. A
poll rather than pub/sub: a router that starts, reconnects after a blip or misses a
message converges within one interval with no resync protocol, there is no second
connection blocked on a subscription, and a breaker another router opened is seen here
within 0.25 s, inside the second that matters. Pub/sub would still need the poll for
correctness, so it would only be a second mechanism for a faster hint.

What is shared, per deployment (hash ``{prefix}breakers``; the field is a digest of the
model name and ``api_base``, so no URL or credential is stored), as JSON of wall-clock
milliseconds (the caller's clock, as in the Redis ledger; NTP keeps routers in step):

- ``f``/``u``: failures counted by every router (reset by a success anywhere, forgotten
  ``FAILS_WINDOW_S`` after the last one); ``allowed_fails`` of them open the breaker.
- ``o``: open (cooling down) until then; ``h``: half-open after ``o`` until a trial
  decides (or ``HALF_OPEN_HOLD_S`` passes with nobody trying).
- ``t``/``w``: the one router holding the half-open trial (``w``, a random id) until
  ``t``; it renews the claim every poll while its trial runs. A router that wants a
  trial claims it from the thread (right when the cooldown ends, if a request was
  refused during it); the other routers keep skipping the deployment meanwhile.

A trial that fails re-opens the breaker everywhere; one that succeeds (any success does,
as in the per-process breakers) deletes the field, which closes it everywhere. When Redis
cannot be reached, the breakers are the per-process ones until it answers again: a
request is never refused because the breaker store is down.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any
from urllib.parse import urlsplit

from iron_sdk.policies.reliability import Breaker, DeploymentBreakers

log = logging.getLogger("iron_router")

POLL_S = 0.25
FAILS_WINDOW_S = 60.0  # LiteLLM counts allowed_fails per minute
HALF_OPEN_HOLD_S = 300.0
CLAIM_TTL_S = 1.0  # a claimed trial not sent (or not renewed) within this is free again
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")  # as iron_sdk.ledger.open_ledger
_QUEUE_MAX = 4096  # outcomes waiting for the thread (past this the oldest are dropped)
_WATCH_MAX = 4096  # deployments whose shared state this router follows

_FRESH = "{o = 0, h = 0, t = 0, w = '', f = 0, u = 0}"
# ARGV: field, now, allowed, window, cooldown, hold (ms), force → the state as JSON.
_FAIL = f"""
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local s = raw and cjson.decode(raw) or {_FRESH}
local now = tonumber(ARGV[2])
if s.u <= now then s.f = 0 end
s.f = s.f + 1
s.u = now + tonumber(ARGV[4])
if ARGV[7] == '1' or s.f >= tonumber(ARGV[3]) then
  s.o = now + tonumber(ARGV[5])
  s.h = s.o + tonumber(ARGV[6])
  s.t, s.w, s.f = 0, '', 0
end
local out = cjson.encode(s)
redis.call('HSET', KEYS[1], ARGV[1], out)
return out
"""
# ARGV: field, now, owner, ttl (ms) → 1: the trial is the caller's (or nothing is shared).
_CLAIM = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 1 end
local s, now = cjson.decode(raw), tonumber(ARGV[2])
if s.h <= now then return 1 end
if s.o > now or (s.t > now and s.w ~= ARGV[3]) then return 0 end
s.t, s.w = now + tonumber(ARGV[4]), ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(s))
return 1
"""
# ARGV: field, owner → the caller's claim is given back.
_RELEASE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local s = cjson.decode(raw)
if s.w ~= ARGV[2] then return 0 end
s.t, s.w = 0, ''
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(s))
return 1
"""
# ARGV: now (ms) → [field, JSON, ...] of every live deployment; forgets the others.
_POLL = """
local now, out = tonumber(ARGV[1]), {}
local raw = redis.call('HGETALL', KEYS[1])
for i = 1, #raw, 2 do
  local s = cjson.decode(raw[i + 1])
  if s.h <= now and s.u <= now and s.t <= now then
    redis.call('HDEL', KEYS[1], raw[i])
  else
    out[#out + 1] = raw[i]
    out[#out + 1] = raw[i + 1]
  end
end
return out
"""


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def field_of(key: Hashable) -> str:
    """The hash field of a deployment ``(model_name, api_base)``: a digest of the name and
    where it is served, without the URL's user info, query or fragment (credentials)."""
    name, where = key if isinstance(key, tuple) else (str(key), "")
    parts = urlsplit(str(where))
    if parts.scheme and parts.hostname:
        port = f":{parts.port}" if parts.port else ""
        where = f"{parts.scheme}://{parts.hostname}{port}{parts.path}"
    return hashlib.sha256(f"{name}\x1f{where}".encode()).hexdigest()[:32]


class SharedBreakers(DeploymentBreakers):
    """Deployment breakers kept in step across routers through Redis (module docstring).

    ``sync()`` is one round of the background thread (``start()``/``close()``); tests
    call it directly with an injected ``clock`` (wall-clock seconds)."""

    def __init__(self, url: str, allowed_fails: int = 3, cooldown_s: float = 5.0, *,
                 clock: Callable[[], float] = time.time, prefix: str = "iron:",
                 poll_s: float = POLL_S) -> None:
        super().__init__(allowed_fails, cooldown_s, clock)
        import redis  # the 'redis' extra; the Redis ledger needs it too

        self._client = redis.Redis.from_url(url, socket_timeout=1.0,
                                            socket_connect_timeout=1.0)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._where = url.split("@")[-1]  # never echo credentials
        self._hash = prefix + "breakers"
        self._fail = self._client.register_script(_FAIL)
        self._claim = self._client.register_script(_CLAIM)
        self._release = self._client.register_script(_RELEASE)
        self._poll = self._client.register_script(_POLL)
        self.poll_s = poll_s
        self.connected = False  # the store answered the last round (else: per process)
        self._owner = secrets.token_hex(8)
        self._keys: dict[str, Hashable] = {}  # field -> deployment, those followed
        self._fields: dict[Hashable, str] = {}  # deployment -> field
        self._synced: set[Hashable] = set()  # local open state mirrors the store's
        self._live: set[Hashable] = set()  # the store counts failures of (or trips) these
        self._wanted: set[Hashable] = set()  # a request here wanted the half-open trial
        self._claims: dict[Hashable, float] = {}  # trials claimed here, until (clock s)
        self._trials: set[Hashable] = set()  # trials running here under a claim
        self._retry: dict[Hashable, float] = {}  # no new claim before (clock s)
        self._changed: dict[Hashable, int] = {}  # key -> generation of its last outcome
        self._gen = 0
        self._ops: collections.deque[tuple[str, Hashable, int, bool]] = collections.deque(
            maxlen=_QUEUE_MAX)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the request path: local only ------------------------------------------------
    def watch(self, key: Hashable) -> None:
        """Follow ``key``'s shared state (a deployment this router may send to)."""
        if key not in self._fields and len(self._fields) < _WATCH_MAX:
            field = self._fields[key] = field_of(key)
            self._keys[field] = key

    def _field(self, key: Hashable) -> str:
        return self._fields.get(key) or field_of(key)

    def acquire(self, key: Hashable) -> bool:
        b = self._breakers.get(key)
        if b is None or b.opened_at is None:
            return True
        if not self.connected:
            return super().acquire(key)
        with self._lock:
            now = self.clock()
            if not b.trial and now >= b.opened_at + self.cooldown_s:
                until = self._claims.pop(key, None)
                if until is not None and until > now:
                    b.trial = True
                    self._trials.add(key)
                    return True
            wanted = key in self._wanted
            self._wanted.add(key)
        if not wanted:
            self._wake.set()  # claim it as soon as the cooldown ends
        return False

    def success(self, key: Hashable) -> None:
        if key in self._breakers or key in self._live:
            super().success(key)
            for known in (self._trials, self._synced, self._live, self._wanted):
                known.discard(key)
            self._queue("ok", key)

    def failure(self, key: Hashable) -> None:
        b = self._breakers.get(key)
        before = None if b is None else b.opened_at
        super().failure(key)
        b = self._breakers.get(key)
        opened = b is not None and b.opened_at is not None and b.opened_at != before
        self._trials.discard(key)
        self._queue("fail", key, opened)

    def release_trial(self, key: Hashable) -> None:
        super().release_trial(key)
        if key in self._trials:
            self._trials.discard(key)
            self._queue("release", key)

    def _queue(self, op: str, key: Hashable, force: bool = False) -> None:
        self.watch(key)
        self._gen += 1
        self._changed[key] = self._gen
        if len(self._changed) > 2 * _WATCH_MAX:
            self._changed.clear()
        self._ops.append((op, key, self._gen, force))
        self._wake.set()

    # -- the background thread ---------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="iron-breakers",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._client.close()

    def _run(self) -> None:
        next_poll = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            due = time.monotonic() >= next_poll
            if due:
                next_poll = time.monotonic() + self.poll_s
            self.sync(poll=due)
            self._wake.wait(max(0.0, min(next_poll - time.monotonic(), self._cooled_in())))

    def _cooled_in(self) -> float:
        """Seconds until the next wanted deployment's cooldown ends (its trial to claim)."""
        now = self.clock()
        waits = [b.opened_at + self.cooldown_s - now for key in list(self._wanted)
                 if (b := self._breakers.get(key)) is not None and b.opened_at is not None]
        return min((w for w in waits if w > 0), default=self.poll_s)

    def sync(self, *, poll: bool = True) -> None:
        """Send this router's outcomes, read the others' (``poll``), claim the wanted
        trials. Never raises: without Redis the breakers are the per-process ones."""
        try:
            self._send()
            if poll:
                self._read()
            self._claim_trials()
        except self._errors as exc:
            self._ops.clear()  # outcomes seen while down stay local
            if self.connected:
                log.warning("circuit breakers are per process until the breaker store at "
                            "%s answers again (%s)", self._where, type(exc).__name__)
            self.connected = False
            return
        if poll and not self.connected:
            self.connected = True
            log.info("circuit breakers shared through %s", self._where)

    def _send(self) -> None:
        while self._ops:
            op, key, gen, force = self._ops[0]
            field = self._field(key)
            if op == "fail":
                now = _ms(self.clock())
                raw = self._fail(keys=[self._hash], args=[
                    field, now, self.allowed_fails, _ms(FAILS_WINDOW_S), _ms(self.cooldown_s),
                    _ms(HALF_OPEN_HOLD_S), int(force)])
                with self._lock:
                    if self._changed.get(key) == gen:  # nothing newer happened here
                        self._adopt(key, json.loads(raw), now)
            elif op == "ok":
                self._client.hdel(self._hash, field)
            else:
                self._release(keys=[self._hash], args=[field, self._owner])
            self._ops.popleft()

    def _read(self) -> None:
        gen, now = self._gen, _ms(self.clock())
        flat = self._poll(keys=[self._hash], args=[now])
        states = {flat[i].decode(): json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}
        known = [(k, states.get(self._field(k))) for k in self._synced | self._live]
        known += [(k, s) for f, s in states.items() if (k := self._keys.get(f)) is not None]
        with self._lock:
            for key, state in known:
                if self._changed.get(key, 0) <= gen:  # else: an outcome since is on its way
                    self._adopt(key, state, now)

    def _adopt(self, key: Hashable, s: dict[str, Any] | None, now_ms: int) -> None:
        """Make the local breaker of ``key`` what the store says (under ``_lock``)."""
        (self._live.add if s is not None else self._live.discard)(key)
        b = self._breakers.get(key)
        if s is not None and s["h"] > now_ms:  # open or half-open everywhere
            opened = s["o"] / 1000 - self.cooldown_s
            if b is None:
                b = self._breakers[key] = Breaker()
            if b.opened_at is None or b.opened_at < opened:
                b.opened_at = opened
            self._synced.add(key)
        elif key in self._synced:  # closed elsewhere (a trial succeeded)
            self._synced.discard(key)
            if b is not None and b.opened_at is not None and not b.trial:
                del self._breakers[key]
                self._claims.pop(key, None)
                self._wanted.discard(key)

    def _claim_trials(self) -> None:
        """Claim the trial of each wanted deployment whose cooldown is over; renew the
        claims of the trials running here."""
        now = self.clock()
        for key in list(self._trials):
            self._claim(keys=[self._hash], args=[self._field(key), _ms(now), self._owner,
                                                 _ms(CLAIM_TTL_S)])
        for key in list(self._wanted):
            b = self._breakers.get(key)
            if b is None or b.opened_at is None:
                self._wanted.discard(key)
                continue
            if (b.trial or now < b.opened_at + self.cooldown_s
                    or self._claims.get(key, 0.0) > now or self._retry.get(key, 0.0) > now):
                continue
            if self._claim(keys=[self._hash], args=[self._field(key), _ms(now), self._owner,
                                                    _ms(CLAIM_TTL_S)]):
                self._claims[key] = now + CLAIM_TTL_S
                self._wanted.discard(key)
                self._retry.pop(key, None)
            else:  # another router's trial: ask again next poll
                self._retry[key] = now + self.poll_s


def breakers_for(ledger_url: str, allowed_fails: int, cooldown_s: float
                 ) -> DeploymentBreakers:
    """Shared breakers on a Redis ledger, per-process ones on any other."""
    if ledger_url.startswith(REDIS_SCHEMES):
        return SharedBreakers(ledger_url, allowed_fails, cooldown_s)
    return DeploymentBreakers(allowed_fails, cooldown_s)
