"""Redis ledger: one budget ledger for many machines.

Every operation that must be atomic (reserve across scopes, settle, release, lease
expiry) is one Lua script, so Redis runs it without interleaving; a settle batch checks
every number and period before it writes anything, so a bad item can never leave half a
batch applied. Time is the caller's wall clock (``time.time()``, passed in): leases and
periods mean the same on every machine as long as their clocks agree (NTP).

Periods are computed by the client (Lua has no time-zone data) from the scope's period
and zone, which the client caches; every script checks the cached config against the
stored one and answers ``cfg`` when it changed, and the client retries with the new one.

Keys (prefix ``iron:`` by default):

- ``{p}scope:{scope}``  hash ``limit``, ``period``, ``tz``, and per period key ``K``
  (see :mod:`iron_sdk.ledger.periods`) ``spent:K`` / ``reserved:K`` (plain ``spent`` /
  ``reserved`` for ``total``, as in version 1)
- ``{p}r:{id}``         hash of one call: ``st`` (``h`` held, ``u`` charged unsettled,
  ``d`` done), ``amt``, ``agent``, ``model``, ``ch`` (JSON ``[[scope, K], ...]`` of every
  scope), ``lim`` (the limited ones, which hold the amount); expires 25 h after it ends
- ``{p}leases``         sorted set of held ids scored by lease expiry (epoch seconds)
- ``{p}scopes``         set of every scope; ``{p}usage`` hash ``agent\\x1fmodel\\x1ffield``

A single Redis instance (or a primary) is assumed; Redis Cluster would need hash tags.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

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

_LIB = f"local RETAIN = {int(SETTLED_RETENTION_S)}" + """
local function f(base, pkey) if pkey == '' then return base end return base .. ':' .. pkey end
local function neg(s) if s == '0' then return s end return '-' .. s end
local function use(p, agent, model, field, by)
  redis.call('HINCRBY', p .. 'usage', agent .. '\\31' .. model .. '\\31' .. field, by)
end
local function charge(p, pairs, amount)
  for _, sk in ipairs(pairs) do
    redis.call('HINCRBY', p .. 'scope:' .. sk[1], f('spent', sk[2]), amount)
  end
end
local function unhold(p, lim, amount)
  for _, sk in ipairs(cjson.decode(lim)) do
    redis.call('HINCRBY', p .. 'scope:' .. sk[1], f('reserved', sk[2]), neg(amount))
  end
end
local function finish(p, rid)
  redis.call('HSET', p .. 'r:' .. rid, 'st', 'd')
  redis.call('EXPIRE', p .. 'r:' .. rid, RETAIN)
end
local function cfg_of(p, scope)
  local h = redis.call('HMGET', p .. 'scope:' .. scope, 'limit', 'period', 'tz')
  if not h[1] then return nil, 'total', 'UTC' end
  return h[1], h[2] or 'total', h[3] or 'UTC'
end
-- Charge every reservation whose lease ran out at its reserved amount.
local function expire(p, now)
  local ids = redis.call('ZRANGEBYSCORE', p .. 'leases', '-inf', '(' .. now, 'LIMIT', 0, 512)
  for _, rid in ipairs(ids) do
    local key = p .. 'r:' .. rid
    local r = redis.call('HMGET', key, 'st', 'amt', 'agent', 'model', 'ch', 'lim')
    if r[1] == 'h' then
      unhold(p, r[6], r[2])
      charge(p, cjson.decode(r[5]), r[2])
      use(p, r[3], r[4], 'cost_micro', r[2])
      use(p, r[3], r[4], 'unsettled_calls', 1)
      redis.call('HSET', key, 'st', 'u')
      redis.call('EXPIRE', key, RETAIN)
    end
    redis.call('ZREM', p .. 'leases', rid)
  end
  return #ids
end
"""

# ARGV: prefix, rid, amount, now, expires, agent, model, then (scope, period, tz, key)*
# → 0 (no limit), 1 (reserved), {'cfg', scope, period, tz} or {'over', scope, limit, used}.
_RESERVE = _LIB + """
local p, rid, amount, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
expire(p, now)
local ch, lim = {}, {}
for i = 8, #ARGV, 4 do
  local scope, pkey = ARGV[i], ARGV[i + 3]
  local limit, period, tz = cfg_of(p, scope)
  if period ~= ARGV[i + 1] or tz ~= ARGV[i + 2] then return {'cfg', scope, period, tz} end
  ch[#ch + 1] = {scope, pkey}
  if limit then
    local v = redis.call('HMGET', p .. 'scope:' .. scope, f('spent', pkey), f('reserved', pkey))
    local used = tonumber(v[1] or '0') + tonumber(v[2] or '0')
    if used + tonumber(amount) > tonumber(limit) then
      return {'over', scope, limit, string.format('%.0f', used)}
    end
    lim[#lim + 1] = {scope, pkey}
  end
end
if #lim == 0 then return 0 end
if redis.call('EXISTS', p .. 'r:' .. rid) == 1 then return redis.error_reply('duplicate id') end
for _, sk in ipairs(lim) do
  redis.call('HINCRBY', p .. 'scope:' .. sk[1], f('reserved', sk[2]), amount)
end
redis.call('HSET', p .. 'r:' .. rid, 'st', 'h', 'amt', amount, 'agent', ARGV[6],
           'model', ARGV[7], 'ch', cjson.encode(ch), 'lim', cjson.encode(lim))
redis.call('ZADD', p .. 'leases', ARGV[5], rid)
return 1
"""

# ARGV: prefix, now, then per settlement: rid, cost, agent, model, in, out, n,
# (scope, period, tz, key)*n → flat (limit or '', spent, reserved, key) per scope, or
# {'cfg', scope, period, tz}. Nothing is written unless every item is well-formed.
_SETTLE = _LIB + """
local p, now = ARGV[1], ARGV[2]
local function int(s)  -- a decimal integer below 2^62 (same-length strings compare as numbers)
  return string.match(s, '^%d+$') and (#s < 19 or (#s == 19 and s < '4611686018427387904'))
end
local i = 3
while i <= #ARGV do
  if not (int(ARGV[i + 1]) and int(ARGV[i + 4]) and int(ARGV[i + 5])) then
    return redis.error_reply('invalid amount for ' .. ARGV[i])
  end
  local n = tonumber(ARGV[i + 6])
  for b = i + 7, i + 6 + 4 * n, 4 do
    local _, period, tz = cfg_of(p, ARGV[b])
    if period ~= ARGV[b + 1] or tz ~= ARGV[b + 2] then return {'cfg', ARGV[b], period, tz} end
  end
  i = i + 7 + 4 * n
end
expire(p, now)
local out = {}
i = 3
while i <= #ARGV do
  local rid, cost, agent, model = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local n = tonumber(ARGV[i + 6])
  local r = redis.call('HMGET', p .. 'r:' .. rid, 'st', 'amt', 'agent', 'model', 'ch', 'lim')
  local keys = {}
  if r[5] then for _, sk in ipairs(cjson.decode(r[5])) do keys[sk[1]] = sk[2] end end
  if r[1] ~= 'd' then
    if r[1] == 'u' then  -- its lease ran out: replace the reserved charge by the cost
      for scope, pkey in pairs(keys) do
        redis.call('HINCRBY', p .. 'scope:' .. scope, f('spent', pkey), cost)
        redis.call('HINCRBY', p .. 'scope:' .. scope, f('spent', pkey), neg(r[2]))
      end
      use(p, r[3], r[4], 'cost_micro', neg(r[2]))
      use(p, r[3], r[4], 'unsettled_calls', -1)
    else
      if r[1] == 'h' then
        unhold(p, r[6], r[2])
        redis.call('ZREM', p .. 'leases', rid)
      end
      for b = i + 7, i + 6 + 4 * n, 4 do
        local scope = ARGV[b]
        keys[scope] = keys[scope] or ARGV[b + 3]
        redis.call('HINCRBY', p .. 'scope:' .. scope, f('spent', keys[scope]), cost)
        redis.call('SADD', p .. 'scopes', scope)
      end
    end
    use(p, agent, model, 'calls', 1)
    use(p, agent, model, 'input_tokens', ARGV[i + 4])
    use(p, agent, model, 'output_tokens', ARGV[i + 5])
    use(p, agent, model, 'cost_micro', cost)
    finish(p, rid)
  end
  for b = i + 7, i + 6 + 4 * n, 4 do
    local scope = ARGV[b]
    local pkey = keys[scope] or ARGV[b + 3]
    local h = redis.call('HMGET', p .. 'scope:' .. scope, 'limit', f('spent', pkey),
                         f('reserved', pkey))
    out[#out + 1] = h[1] or ''
    out[#out + 1] = h[2] or '0'
    out[#out + 1] = h[3] or '0'
    out[#out + 1] = pkey
  end
  i = i + 7 + 4 * n
end
return out
"""

_RELEASE = _LIB + """
local p, rid = ARGV[1], ARGV[2]
local r = redis.call('HMGET', p .. 'r:' .. rid, 'st', 'amt', 'agent', 'model', 'ch', 'lim')
if r[1] == 'd' then return 0 end
if r[1] == 'u' then  -- charged when its lease ran out; the call cost nothing
  charge(p, cjson.decode(r[5]), neg(r[2]))
  use(p, r[3], r[4], 'cost_micro', neg(r[2]))
  use(p, r[3], r[4], 'unsettled_calls', -1)
elseif r[1] == 'h' then
  unhold(p, r[6], r[2])
  redis.call('ZREM', p .. 'leases', rid)
end
finish(p, rid)
return 1
"""

# ARGV: prefix, expires, ids... → how many held leases were renewed
_RENEW = """
local n = 0
for i = 3, #ARGV do
  if redis.call('ZSCORE', ARGV[1] .. 'leases', ARGV[i]) then
    redis.call('ZADD', ARGV[1] .. 'leases', ARGV[2], ARGV[i])
    n = n + 1
  end
end
return n
"""

_EXPIRE = _LIB + "return expire(ARGV[1], ARGV[2])"

# ARGV: prefix, now, scope, period, tz, key → {limit or '', spent, reserved} or cfg.
_STATE = _LIB + """
local p, scope, pkey = ARGV[1], ARGV[3], ARGV[6]
expire(p, ARGV[2])
local limit, period, tz = cfg_of(p, scope)
if period ~= ARGV[4] or tz ~= ARGV[5] then return {'cfg', scope, period, tz} end
local h = redis.call('HMGET', p .. 'scope:' .. scope, f('spent', pkey), f('reserved', pkey))
return {limit or '', h[1] or '0', h[2] or '0'}
"""

_RESET = _LIB + """
local p, scope, pkey = ARGV[1], ARGV[3], ARGV[6]
local limit, period, tz = cfg_of(p, scope)
if period ~= ARGV[4] or tz ~= ARGV[5] then return {'cfg', scope, period, tz} end
if redis.call('EXISTS', p .. 'scope:' .. scope) == 1 then
  redis.call('HSET', p .. 'scope:' .. scope, f('spent', pkey), 0)
end
return 1
"""

# Version 1 kept reservations in other keys; their 'reserved' counters would never drain.
_MIGRATE = """
local p = ARGV[1]
if redis.call('GET', p .. 'version') then return 0 end
for _, scope in ipairs(redis.call('SMEMBERS', p .. 'scopes')) do
  redis.call('HDEL', p .. 'scope:' .. scope, 'reserved')
end
redis.call('SET', p .. 'version', '2')
return 1
"""


class _ConfigChanged(Exception):
    pass


class RedisLedger(Ledger):
    """Ledger in Redis (``redis://host:port/db``), shared by processes on many machines."""

    def __init__(self, url: str, *, prefix: str = "iron:") -> None:
        try:
            import redis
        except ImportError as exc:  # the optional extra
            raise LedgerError("the Redis ledger needs the 'redis' extra: "
                              "pip install 'iron-sdk[redis]'") from exc
        from iron_sdk.config import default_home

        self.home = default_home()
        self._errors = (redis.RedisError,)
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._prefix = prefix
        self._where = url.split("@")[-1]  # never echo credentials
        self._configs: dict[str, tuple[str, str]] = {}  # scope -> (period, tz) last seen
        self._reserve = self._client.register_script(_RESERVE)
        self._settle = self._client.register_script(_SETTLE)
        self._state = self._client.register_script(_STATE)
        self._release = self._client.register_script(_RELEASE)
        self._renew = self._client.register_script(_RENEW)
        self._expire = self._client.register_script(_EXPIRE)
        self._reset = self._client.register_script(_RESET)
        self._migrated = False

    @property
    def identity(self) -> str:
        return f"redis://{self._where}#{self._prefix}"

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            if not self._migrated:
                self._client.eval(_MIGRATE, 0, self._prefix)
                self._migrated = True
            return fn(*args, **kwargs)
        except self._errors as exc:
            raise LedgerError(f"Redis ledger at {self._where} failed: "
                              f"{type(exc).__name__}: {exc}") from exc

    # -- periods ---------------------------------------------------------------------
    def _scope_args(self, scope: str, now: float) -> list[str]:
        period, tz = self._configs.get(scope, periods.TOTAL)
        return [scope, period, tz, periods.current(period, tz, now).key]

    def _run(self, script: Any, make_args: Any) -> Any:
        """Run ``script`` with ``make_args(now)``; on a ``cfg`` answer learn it and retry."""
        for _ in range(16):
            result = self._call(script, args=make_args(time.time()))
            if isinstance(result, list) and result and result[0] == b"cfg":
                scope, period, tz = (x.decode() for x in result[1:4])
                if (period, tz) == periods.TOTAL:
                    self._configs.pop(scope, None)
                else:
                    self._configs[scope] = (period, tz)
                continue
            return result
        raise LedgerError("Redis ledger: scope periods kept changing; try again")

    # -- operations ------------------------------------------------------------------
    def reserve(self, reservation_id: str, scopes: Sequence[str], amount_micro: int,
                ttl_s: float, *, agent_id: str = "", model: str = "") -> bool:
        check_amount("amount_micro", amount_micro)
        check_ttl(ttl_s)
        uniq = unique_scopes(scopes)
        if not uniq:
            return False

        def args(now: float) -> list[Any]:
            out: list[Any] = [self._prefix, reservation_id, amount_micro, repr(now),
                              repr(now + ttl_s), agent_id, model]
            for scope in uniq:
                out += self._scope_args(scope, now)
            return out

        try:
            result = self._run(self._reserve, args)
        except LedgerError as exc:
            if "duplicate id" in str(exc):
                raise LedgerError(f"reservation id {reservation_id!r} is already in use") from exc
            raise
        if isinstance(result, list):  # over: scope, limit, used
            raise exceeded(result[1].decode(), int(result[2]), int(result[3]), amount_micro)
        return bool(result)

    def settle(self, reservation_id: str, scopes: Sequence[str], cost_micro: int, *,
               agent_id: str, model: str, input_tokens: int,
               output_tokens: int) -> list[ScopeState]:
        return self.settle_many([Settlement(reservation_id, tuple(scopes), cost_micro, agent_id,
                                            model, input_tokens, output_tokens)])[0]

    def settle_many(self, items: Sequence[Settlement]) -> list[list[ScopeState]]:
        shapes = []
        for item in items:
            item.check()
            shapes.append(unique_scopes(item.scopes))

        def args(now: float) -> list[Any]:
            out: list[Any] = [self._prefix, repr(now)]
            for item, uniq in zip(items, shapes, strict=True):
                out += [item.reservation_id, item.cost_micro, item.agent_id, item.model,
                        item.input_tokens, item.output_tokens, len(uniq)]
                for scope in uniq:
                    out += self._scope_args(scope, now)
            return out

        flat = self._run(self._settle, args)
        out, k = [], 0
        for uniq in shapes:
            states = []
            for scope in uniq:
                limit, spent, reserved, pkey = flat[k:k + 4]
                k += 4
                states.append(self._scope_state(scope, limit, spent, reserved, pkey.decode()))
            out.append(states)
        return out

    @staticmethod
    def _scope_state(scope: str, limit: bytes, spent: bytes, reserved: bytes,
                     pkey: str) -> ScopeState:
        period = periods.of_key(pkey)
        return ScopeState(scope, int(limit) if limit else None, int(spent), int(reserved),
                          period.name, period.start, period.end)

    def release(self, reservation_id: str) -> None:
        self._call(self._release, args=[self._prefix, reservation_id])

    def renew(self, reservation_ids: Sequence[str], ttl_s: float) -> int:
        check_ttl(ttl_s)
        ids = list(reservation_ids)
        if not ids:
            return 0
        return int(self._call(self._renew, args=[self._prefix, repr(time.time() + ttl_s), *ids]))

    def expire_leases(self) -> int:
        total = 0
        while True:
            n = int(self._call(self._expire, args=[self._prefix, repr(time.time())]))
            total += n
            if n < 512:
                return total

    def set_limit(self, scope: str, limit_micro: int | None, *, period: str = "total",
                  tz: str = "UTC") -> None:
        key = f"{self._prefix}scope:{scope}"
        if limit_micro is None:
            self._call(self._client.hdel, key, "limit", "period", "tz")
            return
        check_amount("limit_micro", limit_micro)
        periods.check_period(period, tz)
        pipe = self._client.pipeline()
        pipe.hset(key, mapping={"limit": limit_micro, "period": period, "tz": tz})
        pipe.sadd(f"{self._prefix}scopes", scope)
        self._call(pipe.execute)

    def state(self, scope: str) -> ScopeState:
        asked: list[str] = []

        def args(now: float) -> list[Any]:
            asked[:] = self._scope_args(scope, now)
            return [self._prefix, repr(now), *asked]

        limit, spent, reserved = self._run(self._state, args)
        return self._scope_state(scope, limit, spent, reserved, asked[3])

    def scopes(self) -> list[str]:
        members = self._call(self._client.smembers, f"{self._prefix}scopes")
        return sorted(m.decode() for m in members)

    def usage(self) -> list[UsageRow]:
        self.expire_leases()
        raw = self._call(self._client.hgetall, f"{self._prefix}usage")
        rows: dict[tuple[str, str], dict[str, int]] = {}
        for key, value in raw.items():
            agent, model, field = key.decode().split("\x1f")
            rows.setdefault((agent, model), {})[field] = int(value)
        return [UsageRow(agent, model, f.get("calls", 0), f.get("input_tokens", 0),
                         f.get("output_tokens", 0), f.get("cost_micro", 0),
                         f.get("unsettled_calls", 0))
                for (agent, model), f in sorted(rows.items())]

    def reset(self, scope: str) -> None:
        def args(now: float) -> list[Any]:
            return [self._prefix, repr(now), *self._scope_args(scope, now)]

        self._run(self._reset, args)

    def close(self) -> None:
        self._client.close()
