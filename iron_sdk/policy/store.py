"""Where operator policy lives: beside the budget ledger, in the same database or Redis.

A store holds three things every process sharing the ledger must agree on:

- one :class:`~iron_sdk.policy.model.Policy` record per scope;
- the rate-limit windows (``take``: requests and tokens per minute, atomic across
  processes);
- the tokens issued and revoked (``record_token``, ``revoke_token``, ``revoke_agent``).

Every change bumps one integer, :meth:`PolicyStore.version`, cheap enough for the hot
path to read on every call; readers reload their cached snapshot only when it moved.
"""

from __future__ import annotations

import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from iron_sdk.errors import InvalidRequestError
from iron_sdk.policy.model import FIELDS, Policy, make_policy

WINDOW_S = 60.0
_TOKEN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")  # rpm and tpm are counted over a sliding minute


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An issued IC token (never the token itself: its id and claims)."""

    jti: str
    agent: str
    scopes: tuple[str, ...] = ()
    issued: float = 0.0
    expires: float | None = None
    admin: bool = False
    revoked: float | None = None  # when it was revoked (by id or with its agent)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.jti, "agent": self.agent, "scopes": list(self.scopes),
                "issued": self.issued, "expires": self.expires, "admin": self.admin,
                "revoked": self.revoked}


@dataclass(frozen=True)
class Snapshot:
    """Everything the hot path reads, as of ``version``."""

    version: int
    policies: dict[str, Policy]
    revoked_ids: frozenset[str]
    revoked_agents: dict[str, float]  # agent → tokens issued at or before this are revoked
    cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


def bucket_of(now: float) -> int:
    """The one-second bucket a request at ``now`` is counted in."""
    return math.floor(now)


def live_after(now: float) -> float:
    """Buckets with ``second > live_after(now)`` are in the window ending at ``now``.

    A bucket counts until a full window has passed since its *end* (``second + 1``), so a
    window never holds more than the limit; a request may wait up to 1 s longer than an
    exact sliding log would make it (what keeps each scope at most 61 rows)."""
    return now - WINDOW_S - 1


def window_decision(buckets: Iterable[tuple[int, int, int]], now: float, tokens: int,
                    rpm: int | None, tpm: int | None) -> float | None:
    """None if one more request of ``tokens`` fits the window ending at ``now``, else the
    seconds until it would. ``buckets`` are (second, requests, tokens) still in the window.
    The stores run this inside their own atomic section (a lock, a transaction, Lua)."""
    items = sorted(buckets)
    wait = 0.0
    for limit, index, need in ((rpm, 1, 1), (tpm, 2, tokens)):
        if limit is None:
            continue
        excess = sum(b[index] for b in items) + need - limit
        for bucket in items:
            if excess <= 0:
                break
            excess -= bucket[index]
            wait = max(wait, bucket[0] + 1 + WINDOW_S - now)
    return max(wait, 0.001) if wait > 0 else None


def check_fields(fields: Iterable[str]) -> list[str]:
    names = list(fields)
    unknown = [f for f in names if f not in FIELDS]
    if unknown:
        raise InvalidRequestError(f"unknown policy field(s) {', '.join(unknown)}; "
                                  f"known: {', '.join(FIELDS)}")
    return names


class PolicyStore(ABC):
    """Operator policy storage. Thread-safe; every write is atomic and bumps the version."""

    def __init__(self) -> None:
        self._snap: Snapshot | None = None
        self._snap_lock = threading.Lock()

    # -- policy records ------------------------------------------------------------------
    def get(self, scope: str) -> Policy:
        """The record stored for ``scope`` (an empty Policy if none)."""
        return self._load_policies().get(scope) or Policy()

    def set(self, scope: str, **fields: Any) -> Policy:
        """Set the given fields of ``scope``'s record (others are kept); returns the record.

        ``None`` as a value clears that field. Raises InvalidRequestError for bad values."""
        check_fields(fields)
        to_set = {k: v for k, v in fields.items() if v is not None}
        valid = make_policy(to_set).fields_set()
        self._write(scope, valid, [k for k, v in fields.items() if v is None])
        self._invalidate()
        return self.get(scope)

    def clear(self, scope: str, fields: Iterable[str] | None = None) -> Policy:
        """Remove the given fields (every field when None) from ``scope``'s record."""
        self._write(scope, {}, FIELDS if fields is None else check_fields(fields))
        self._invalidate()
        return self.get(scope)

    def all(self) -> dict[str, Policy]:
        """Every stored record, by scope."""
        return dict(sorted(self._load_policies().items()))

    # -- the hot path ----------------------------------------------------------------------
    @abstractmethod
    def version(self) -> int:
        """An integer that changes whenever a policy or revocation changes anywhere
        (cheap: cached, re-read at most every few milliseconds; at most 1 s stale)."""

    def snapshot(self) -> Snapshot:
        """Policies and revocations as of the current version (reloaded when it moved)."""
        version = self.version()
        snap = self._snap
        if snap is not None and snap.version == version:
            return snap
        with self._snap_lock:
            snap = self._snap
            if snap is None or snap.version != version:
                ids, agents = self._load_revocations()
                snap = self._snap = Snapshot(version, self._load_policies(), ids, agents)
        return snap

    def is_revoked(self, claims: dict[str, Any]) -> str | None:
        """Why the token with these (verified) claims is revoked, or None."""
        snap = self.snapshot()
        if not snap.revoked_ids and not snap.revoked_agents:
            return None
        jti = claims.get("jti")
        if isinstance(jti, str) and jti in snap.revoked_ids:
            return "The IC token was revoked by the operator."
        before = snap.revoked_agents.get(claims.get("sub", ""))
        iat = claims.get("iat")
        if before is not None and (not isinstance(iat, int | float) or iat <= before):
            return (f"Every IC token of agent '{claims.get('sub')}' issued until "
                    "its revocation was revoked by the operator; issue a new one.")
        return None

    @abstractmethod
    def take(self, scope: str, tokens: int, rpm: int | None, tpm: int | None,
             now: float) -> float | None:
        """Count one request of ``tokens`` against ``scope``'s sliding minute if it fits
        ``rpm`` and ``tpm`` (atomic across every process sharing the store): None, else
        the seconds to wait (nothing is counted then)."""

    # -- tokens ----------------------------------------------------------------------------
    @abstractmethod
    def record_token(self, record: TokenRecord) -> None:
        """Remember an issued token (for ``token list``)."""

    @abstractmethod
    def tokens(self, agent: str | None = None) -> list[TokenRecord]:
        """Issued tokens (of ``agent``), oldest first, with when they were revoked."""

    def revoke_token(self, jti: str, now: float) -> None:
        """Revoke one token by its id (known to this store or not)."""
        if not _TOKEN_ID.match(jti):
            raise InvalidRequestError("a token id is 1 to 200 letters, digits, '-', '_' or '.'")
        self._revoke_token(jti, now)
        self._invalidate()

    def revoke_agent(self, agent: str, now: float) -> None:
        """Revoke every token of ``agent`` issued until ``now``."""
        if not agent or len(agent) > 200:
            raise InvalidRequestError("an agent name is 1 to 200 characters")
        self._revoke_agent(agent, now)
        self._invalidate()

    # -- backends ----------------------------------------------------------------------
    @abstractmethod
    def _write(self, scope: str, to_set: dict[str, Any], to_clear: Iterable[str]) -> None:
        """Atomically set and clear fields of one record and bump the version."""

    @abstractmethod
    def _load_policies(self) -> dict[str, Policy]: ...

    @abstractmethod
    def _load_revocations(self) -> tuple[frozenset[str], dict[str, float]]: ...

    @abstractmethod
    def _revoke_token(self, jti: str, now: float) -> None: ...

    @abstractmethod
    def _revoke_agent(self, agent: str, now: float) -> None: ...

    def _invalidate(self) -> None:
        """This process changed something: the next snapshot re-reads."""
        self._snap = None

    def close(self) -> None:  # noqa: B027 - optional for backends holding nothing
        """Release connections."""

    def __enter__(self) -> PolicyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def revoked_at(record: TokenRecord, revoked_agents: dict[str, float]) -> float | None:
    """When ``record`` was revoked, by its id or with its agent (None if it is valid)."""
    if record.revoked is not None:
        return record.revoked
    before = revoked_agents.get(record.agent)
    return before if before is not None and record.issued <= before else None
