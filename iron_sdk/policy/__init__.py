"""Operator policy: per-scope records (models, PII floor, rate limits, tools, kill switch),
token revocation, stored beside the budget ledger so every process sharing it agrees."""

from __future__ import annotations

import os

from iron_sdk.config import PII_ORDER
from iron_sdk.policy.effective import EffectivePolicy, Sourced, effective
from iron_sdk.policy.memory import MemoryPolicyStore
from iron_sdk.policy.model import FIELDS, Policy, make_policy, scope_of
from iron_sdk.policy.store import PolicyStore, Snapshot, TokenRecord

__all__ = ["FIELDS", "PII_ORDER", "EffectivePolicy", "MemoryPolicyStore", "Policy",
           "PolicyStore", "Snapshot", "Sourced", "TokenRecord", "effective", "make_policy",
           "open_policy_store", "scope_of"]


def open_policy_store(url: str) -> PolicyStore:
    """The policy store beside the ledger ``url`` names (same forms as
    :func:`iron_sdk.ledger.open_ledger`: ``memory``, a path, ``sqlite:///abs/path``,
    ``redis://...``). A ``memory`` store is this process's own."""
    if url == "memory":
        return MemoryPolicyStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from iron_sdk.policy.redis import RedisPolicyStore

        return RedisPolicyStore(url)
    if url.startswith("sqlite://"):
        url = url[len("sqlite://"):]
    if "://" in url or not url or url == ":memory:":
        raise ValueError("unsupported ledger URL for the policy store; expected 'memory', "
                         "a path, 'sqlite:///abs/path.db' or 'redis://host:port/db'")
    from iron_sdk.policy.sqlite import SQLitePolicyStore

    return SQLitePolicyStore(os.path.expanduser(url))
