"""Policy store in the ledger's Redis, under its own key prefix (``iron:policy:``).

Keys: ``{p}version`` (INCR on every change), ``{p}rec:{scope}`` hash field → JSON,
``{p}scopes`` set, ``{p}rl:{scope}`` hash (the sliding minute: second →
``requests:tokens``), ``{p}tok:{jti}`` hash, ``{p}tokens`` sorted set of jtis by
issue time, ``{p}revoked`` hash jti → time, ``{p}revoked_agents`` hash agent → time.
The version is cached for ``VERSION_TTL_S`` (a change is seen within that).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from typing import Any

from iron_sdk.errors import RuntimeUnavailableError
from iron_sdk.policy.model import Policy
from iron_sdk.policy.store import WINDOW_S, PolicyStore, TokenRecord, bucket_of, revoked_at

VERSION_TTL_S = 0.25

# The sliding minute in one-second buckets, atomically (see store.window_decision).
# KEYS[1] the hash second → "requests:tokens"; ARGV now, tokens, rpm, tpm (0: none),
# window seconds, this request's second. → '' when counted, else the wait in seconds.
_TAKE = """
local key = KEYS[1]
local now, tokens = tonumber(ARGV[1]), tonumber(ARGV[2])
local rpm, tpm, window = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local oldest = now - window - 1
local raw = redis.call('HGETALL', key)
local buckets = {}
for i = 1, #raw, 2 do
  local sec = tonumber(raw[i])
  if sec <= oldest then
    redis.call('HDEL', key, raw[i])
  else
    local n, t = string.match(raw[i + 1], '^(%d+):(%d+)$')
    buckets[#buckets + 1] = {sec, tonumber(n), tonumber(t)}
  end
end
table.sort(buckets, function(a, b) return a[1] < b[1] end)
local wait = 0
local function check(limit, index, need)
  if limit <= 0 then return end
  local excess = need - limit
  for _, b in ipairs(buckets) do excess = excess + b[index] end
  for _, b in ipairs(buckets) do
    if excess <= 0 then break end
    excess = excess - b[index]
    wait = math.max(wait, b[1] + 1 + window - now)
  end
end
check(rpm, 2, 1)
check(tpm, 3, tokens)
if wait > 0 then return tostring(math.max(wait, 0.001)) end
local cur = redis.call('HGET', key, ARGV[6])
local n, t = 0, 0
if cur then
  local a, b = string.match(cur, '^(%d+):(%d+)$')
  n, t = tonumber(a), tonumber(b)
end
redis.call('HSET', key, ARGV[6], string.format('%d:%d', n + 1, t + tokens))
redis.call('PEXPIRE', key, math.ceil((window + 2) * 1000))
return ''
"""


class RedisPolicyStore(PolicyStore):
    def __init__(self, url: str, *, prefix: str = "iron:policy:") -> None:
        super().__init__()
        try:
            import redis
        except ImportError as exc:
            raise RuntimeUnavailableError("the Redis policy store needs the 'redis' extra: "
                                          "pip install 'iron-sdk[redis]'") from exc
        self._errors = (redis.RedisError,)
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._p = prefix
        self._where = url.split("@")[-1]  # never echo credentials
        self._take = self._client.register_script(_TAKE)
        self._version = 0
        self._checked = 0.0
        self._vlock = threading.Lock()

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            raise RuntimeUnavailableError(f"policy store at {self._where} failed: "
                                          f"{type(exc).__name__}: {exc}") from exc

    def version(self) -> int:
        now = time.monotonic()
        if now - self._checked < VERSION_TTL_S:
            return self._version
        with self._vlock:
            if now - self._checked >= VERSION_TTL_S:
                self._version = int(self._call(self._client.get, self._p + "version") or 0)
                self._checked = now
        return self._version

    def _invalidate(self) -> None:
        super()._invalidate()
        self._checked = 0.0

    def _write(self, scope: str, to_set: dict[str, Any], to_clear: Iterable[str]) -> None:
        pipe = self._client.pipeline(transaction=True)
        key = f"{self._p}rec:{scope}"
        if to_set:
            pipe.hset(key, mapping={k: json.dumps(v) for k, v in to_set.items()})
        clear = list(to_clear)
        if clear:
            pipe.hdel(key, *clear)
        pipe.sadd(self._p + "scopes", scope)
        pipe.incr(self._p + "version")
        self._call(pipe.execute)

    def _load_policies(self) -> dict[str, Policy]:
        scopes = sorted(s.decode() for s in self._call(self._client.smembers,
                                                       self._p + "scopes"))
        pipe = self._client.pipeline(transaction=False)
        for scope in scopes:
            pipe.hgetall(f"{self._p}rec:{scope}")
        out = {}
        for scope, raw in zip(scopes, self._call(pipe.execute), strict=True):
            if raw:
                out[scope] = Policy.model_validate(
                    {k.decode(): json.loads(v) for k, v in raw.items()})
        return out

    def take(self, scope: str, tokens: int, rpm: int | None, tpm: int | None,
             now: float) -> float | None:
        result = self._call(self._take, keys=[f"{self._p}rl:{scope}"],
                            args=[repr(float(now)), int(tokens), rpm or 0, tpm or 0,
                                  WINDOW_S, bucket_of(now)])
        return float(result) if result else None

    def record_token(self, record: TokenRecord) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(f"{self._p}tok:{record.jti}", mapping={
            "agent": record.agent, "scopes": json.dumps(list(record.scopes)),
            "issued": repr(record.issued), "admin": int(record.admin),
            "expires": "" if record.expires is None else repr(record.expires)})
        pipe.zadd(self._p + "tokens", {record.jti: record.issued})
        self._call(pipe.execute)

    def tokens(self, agent: str | None = None) -> list[TokenRecord]:
        jtis = [j.decode() for j in self._call(self._client.zrange, self._p + "tokens", 0, -1)]
        pipe = self._client.pipeline(transaction=False)
        for jti in jtis:
            pipe.hgetall(f"{self._p}tok:{jti}")
        pipe.hgetall(self._p + "revoked")
        pipe.hgetall(self._p + "revoked_agents")
        *raws, ids, agents = self._call(pipe.execute)
        revoked = {k.decode(): float(v) for k, v in ids.items()}
        by_agent = {k.decode(): float(v) for k, v in agents.items()}
        out = []
        for jti, raw in zip(jtis, raws, strict=True):
            f = {k.decode(): v.decode() for k, v in raw.items()}
            if not f or (agent is not None and f["agent"] != agent):
                continue
            record = TokenRecord(jti, f["agent"], tuple(json.loads(f["scopes"])),
                                 float(f["issued"]),
                                 float(f["expires"]) if f["expires"] else None,
                                 f["admin"] == "1", revoked.get(jti))
            out.append(TokenRecord(record.jti, record.agent, record.scopes, record.issued,
                                   record.expires, record.admin, revoked_at(record, by_agent)))
        return out

    def _load_revocations(self) -> tuple[frozenset[str], dict[str, float]]:
        pipe = self._client.pipeline(transaction=True)
        pipe.hkeys(self._p + "revoked")
        pipe.hgetall(self._p + "revoked_agents")
        ids, agents = self._call(pipe.execute)
        return (frozenset(i.decode() for i in ids),
                {k.decode(): float(v) for k, v in agents.items()})

    def _revoke_token(self, jti: str, now: float) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.hsetnx(self._p + "revoked", jti, repr(now))
        pipe.incr(self._p + "version")
        self._call(pipe.execute)

    def _revoke_agent(self, agent: str, now: float) -> None:
        key = self._p + "revoked_agents"
        current = self._call(self._client.hget, key, agent)
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(key, agent, repr(max(now, float(current or now))))
        pipe.incr(self._p + "version")
        self._call(pipe.execute)

    def close(self) -> None:
        self._client.close()
