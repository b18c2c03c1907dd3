"""Redis ledger: one budget ledger for many machines.

Every operation that must be atomic (reserve across scopes, settle) is one Lua script,
so Redis runs it without interleaving. Time comes from the Redis server (``TIME``), so
leases mean the same on every machine. Keys (prefix ``iron:`` by default):

- ``{p}scope:{scope}``  hash ``limit``, ``spent``, ``reserved``
- ``{p}res:{scope}``    sorted set of reservation ids scored by expiry (µs)
- ``{p}amt:{scope}``    hash reservation id → amount
- ``{p}rid:{id}``       the scopes a reservation holds (expires with its lease)
- ``{p}scopes``         set of every scope; ``{p}usage`` hash ``agent\\x1fmodel\\x1ffield``

A single Redis instance (or a primary) is assumed; Redis Cluster would need hash tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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

# Drop expired reservations of scope KEYS[i]; shared prologue of both scripts.
_PURGE = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function purge(p, scope, now)
  local zkey, akey = p .. 'res:' .. scope, p .. 'amt:' .. scope
  local ids = redis.call('ZRANGEBYSCORE', zkey, '-inf', now)
  for _, id in ipairs(ids) do
    local amt = tonumber(redis.call('HGET', akey, id) or '0')
    redis.call('HINCRBY', p .. 'scope:' .. scope, 'reserved', -amt)
    redis.call('HDEL', akey, id)
  end
  if #ids > 0 then redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now) end
end
local function drop(p, rid)
  local scopes = redis.call('SMEMBERS', p .. 'rid:' .. rid)
  for _, scope in ipairs(scopes) do
    local akey = p .. 'amt:' .. scope
    local amt = redis.call('HGET', akey, rid)
    if amt then
      redis.call('HINCRBY', p .. 'scope:' .. scope, 'reserved', -tonumber(amt))
      redis.call('HDEL', akey, rid)
      redis.call('ZREM', p .. 'res:' .. scope, rid)
    end
  end
  redis.call('DEL', p .. 'rid:' .. rid)
end
"""

# ARGV: prefix, rid, amount, ttl_us, scope1..n → 0 (no limit), 1 (reserved),
# or {index, limit, used} of the first scope that does not fit.
_RESERVE = _PURGE + """
local p, rid, amount, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_us()
local limited = {}
for i = 5, #ARGV do
  local scope = ARGV[i]
  local limit = redis.call('HGET', p .. 'scope:' .. scope, 'limit')
  if limit then
    purge(p, scope, now)
    local h = redis.call('HMGET', p .. 'scope:' .. scope, 'spent', 'reserved')
    local used = tonumber(h[1] or '0') + tonumber(h[2] or '0')
    if used + amount > tonumber(limit) then return {i - 4, tonumber(limit), used} end
    limited[#limited + 1] = scope
  end
end
if #limited == 0 then return 0 end
if redis.call('EXISTS', p .. 'rid:' .. rid) == 1 then return redis.error_reply('duplicate') end
for _, scope in ipairs(limited) do
  redis.call('ZADD', p .. 'res:' .. scope, now + ttl, rid)
  redis.call('HSET', p .. 'amt:' .. scope, rid, amount)
  redis.call('HINCRBY', p .. 'scope:' .. scope, 'reserved', amount)
  redis.call('SADD', p .. 'rid:' .. rid, scope)
end
redis.call('PEXPIRE', p .. 'rid:' .. rid, math.floor(ttl / 1000) + 60000)
return 1
"""

# ARGV: prefix, then per settlement: rid, cost, agent, model, in, out, nscopes, scopes...
# → flat list of limit ('' for none), spent, reserved per scope, in order.
_SETTLE = _PURGE + """
local p = ARGV[1]
local now = now_us()
local out = {}
local i = 2
while i <= #ARGV do
  local rid, cost = ARGV[i], tonumber(ARGV[i + 1])
  local agent, model = ARGV[i + 2], ARGV[i + 3]
  local tin, tout, n = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])
  drop(p, rid)
  local u = agent .. '\\31' .. model .. '\\31'
  redis.call('HINCRBY', p .. 'usage', u .. 'calls', 1)
  redis.call('HINCRBY', p .. 'usage', u .. 'input_tokens', tin)
  redis.call('HINCRBY', p .. 'usage', u .. 'output_tokens', tout)
  redis.call('HINCRBY', p .. 'usage', u .. 'cost_micro', cost)
  for j = 1, n do
    local scope = ARGV[i + 6 + j]
    local key = p .. 'scope:' .. scope
    redis.call('SADD', p .. 'scopes', scope)
    redis.call('HINCRBY', key, 'spent', cost)
    purge(p, scope, now)
    local h = redis.call('HMGET', key, 'limit', 'spent', 'reserved')
    out[#out + 1] = h[1] or ''
    out[#out + 1] = h[2] or '0'
    out[#out + 1] = h[3] or '0'
  end
  i = i + 7 + n
end
return out
"""

_STATE = _PURGE + """
local p, scope = ARGV[1], ARGV[2]
if redis.call('HGET', p .. 'scope:' .. scope, 'limit') then purge(p, scope, now_us()) end
return redis.call('HMGET', p .. 'scope:' .. scope, 'limit', 'spent', 'reserved')
"""

_RELEASE = _PURGE + "drop(ARGV[1], ARGV[2]) return 1"


class RedisLedger(Ledger):
    """Ledger in Redis (``redis://host:port/db``), shared by processes on many machines."""

    def __init__(self, url: str, *, prefix: str = "iron:") -> None:
        try:
            import redis
        except ImportError as exc:  # the optional extra
            raise LedgerError("the Redis ledger needs the 'redis' extra: "
                              "pip install 'iron-sdk[redis]'") from exc
        self._errors = (redis.RedisError,)
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._prefix = prefix
        self._where = url.split("@")[-1]  # never echo credentials
        self._reserve = self._client.register_script(_RESERVE)
        self._settle = self._client.register_script(_SETTLE)
        self._state = self._client.register_script(_STATE)
        self._release = self._client.register_script(_RELEASE)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            raise LedgerError(f"Redis ledger at {self._where} failed: "
                              f"{type(exc).__name__}: {exc}") from exc

    def reserve(self, reservation_id: str, scopes: Sequence[str], amount_micro: int,
                ttl_s: float) -> bool:
        check_amount("amount_micro", amount_micro)
        uniq = unique_scopes(scopes)
        if not uniq:
            return False
        result = self._call(self._reserve, args=[self._prefix, reservation_id, amount_micro,
                                                 int(ttl_s * 1_000_000), *uniq])
        if isinstance(result, list):
            index, limit, used = (int(x) for x in result)
            raise exceeded(uniq[index - 1], limit, used, amount_micro)
        return bool(result)

    def settle(self, reservation_id: str, scopes: Sequence[str], cost_micro: int, *,
               agent_id: str, model: str, input_tokens: int,
               output_tokens: int) -> list[ScopeState]:
        return self.settle_many([Settlement(reservation_id, tuple(scopes), cost_micro, agent_id,
                                            model, input_tokens, output_tokens)])[0]

    def settle_many(self, items: Sequence[Settlement]) -> list[list[ScopeState]]:
        args: list[Any] = [self._prefix]
        shapes = []
        for item in items:
            check_amount("cost_micro", item.cost_micro)
            uniq = unique_scopes(item.scopes)
            shapes.append(uniq)
            args += [item.reservation_id, item.cost_micro, item.agent_id, item.model,
                     item.input_tokens, item.output_tokens, len(uniq), *uniq]
        flat = self._call(self._settle, args=args)
        out, k = [], 0
        for uniq in shapes:
            states = []
            for scope in uniq:
                limit, spent, reserved = flat[k:k + 3]
                k += 3
                states.append(ScopeState(scope, int(limit) if limit else None, int(spent),
                                         int(reserved)))
            out.append(states)
        return out

    def release(self, reservation_id: str) -> None:
        self._call(self._release, args=[self._prefix, reservation_id])

    def set_limit(self, scope: str, limit_micro: int | None) -> None:
        key = f"{self._prefix}scope:{scope}"
        if limit_micro is None:
            self._call(self._client.hdel, key, "limit")
            return
        check_amount("limit_micro", limit_micro)
        pipe = self._client.pipeline()
        pipe.hset(key, "limit", limit_micro)
        pipe.sadd(f"{self._prefix}scopes", scope)
        self._call(pipe.execute)

    def state(self, scope: str) -> ScopeState:
        limit, spent, reserved = self._call(self._state, args=[self._prefix, scope])
        return ScopeState(scope, int(limit) if limit else None, int(spent or 0),
                          int(reserved or 0))

    def scopes(self) -> list[str]:
        members = self._call(self._client.smembers, f"{self._prefix}scopes")
        return sorted(m.decode() for m in members)

    def usage(self) -> list[UsageRow]:
        raw = self._call(self._client.hgetall, f"{self._prefix}usage")
        rows: dict[tuple[str, str], dict[str, int]] = {}
        for key, value in raw.items():
            agent, model, field = key.decode().split("\x1f")
            rows.setdefault((agent, model), {})[field] = int(value)
        return [UsageRow(agent, model, f.get("calls", 0), f.get("input_tokens", 0),
                         f.get("output_tokens", 0), f.get("cost_micro", 0))
                for (agent, model), f in sorted(rows.items())]

    def reset(self, scope: str) -> None:
        self._call(self._client.hset, f"{self._prefix}scope:{scope}", "spent", 0)

    def close(self) -> None:
        self._client.close()
