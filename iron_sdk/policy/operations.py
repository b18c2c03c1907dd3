"""Operator actions shared by the CLI (``iron-runtime policy/agent/token ...``) and the
router's admin API: each validates its input (InvalidRequestError) and returns JSON-able
data."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from iron_sdk.errors import MICRO, InvalidRequestError
from iron_sdk.policy.effective import effective
from iron_sdk.policy.model import Policy, scope_of
from iron_sdk.policy.store import PolicyStore, TokenRecord

if TYPE_CHECKING:
    from iron_sdk.ledger.base import Ledger, ScopeState


def layers_for(store: PolicyStore, scope: str) -> dict[str, Policy]:
    """The stored records that apply to ``scope``: ``global``, and for an agent its own
    and those of the teams its recorded tokens name."""
    records = store.all()
    names = ["global", scope]
    if scope.startswith("agent:"):
        agent = scope.split(":", 1)[1]
        names += [s for r in store.tokens(agent) if r.revoked is None for s in r.scopes
                  if s.startswith("team:")]
    return {n: records[n] for n in dict.fromkeys(names) if n in records}


def policy_view(store: PolicyStore, name: str, defaults: Policy | None = None) -> dict[str, Any]:
    """``{"scope", "stored", "effective"}``: the scope's own record and what applies,
    each effective value with the layer it came from."""
    scope = scope_of(name)
    eff = effective(layers_for(store, scope), defaults)
    return {"scope": scope, "stored": _jsonable(store.get(scope).fields_set()),
            "effective": eff.to_json()}


def show(store: PolicyStore, names: Iterable[str], defaults: Policy | None = None,
         ) -> list[dict[str, Any]]:
    names = list(names) or list(store.all()) or ["global"]
    return [policy_view(store, n, defaults) for n in names]


def set_policy(store: PolicyStore, name: str, fields: dict[str, Any]) -> dict[str, Any]:
    if not fields:
        raise InvalidRequestError("nothing to set: name at least one policy field")
    if "disabled" in fields:
        raise InvalidRequestError("use `agent disable/enable` (or the admin agent endpoints) "
                                  "for the kill switch")
    scope = scope_of(name)
    return {"scope": scope, "stored": _jsonable(store.set(scope, **fields).fields_set())}


def clear_policy(store: PolicyStore, name: str, fields: list[str] | None) -> dict[str, Any]:
    scope = scope_of(name)
    return {"scope": scope, "stored": _jsonable(store.clear(scope, fields or None).fields_set())}


def set_disabled(store: PolicyStore, name: str, disabled: bool) -> dict[str, Any]:
    scope = scope_of(name)
    policy = store.set(scope, disabled=True) if disabled else store.clear(scope, ["disabled"])
    return {"scope": scope, "disabled": bool(policy.disabled)}


def set_budget(ledger: Ledger, name: str, amount: Any, *, period: Any = None,
               tz: Any = None) -> tuple[int | None, dict[str, str], ScopeState]:
    """Set a scope's budget to ``amount`` USD (0 or less removes it), optionally with a
    ``period`` (total, daily, weekly, monthly) and ``tz``, on ledgers that have periods.
    Returns the limit in micro-dollars, the period fields given and the scope's new state."""
    if type(amount) not in (int, float) or not math.isfinite(amount) or abs(amount) > 1e9:
        raise InvalidRequestError("'usd' must be a number (0 or less removes the limit).")
    extra = {k: v for k, v in (("period", period), ("tz", tz)) if v is not None}
    if any(not isinstance(v, str) for v in extra.values()):
        raise InvalidRequestError("'period' and 'tz' must be strings.")
    scope = scope_of(name)
    limit = round(amount * MICRO) if amount > 0 else None
    try:
        ledger.set_limit(scope, limit, **extra)
    except TypeError:  # a ledger without periodic budgets
        raise InvalidRequestError(
            "This ledger has lifetime budgets only; drop 'period' and 'tz'.") from None
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None
    return limit, extra, ledger.state(scope)


def token_id(token_or_id: str) -> str:
    """The id (``jti``) of a token given whole or by its id."""
    text = token_or_id.strip()
    if text.count(".") != 2:
        return text
    import jwt

    try:  # only the id is read: revoking needs no proof the token is ours
        claims = jwt.decode(text, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise InvalidRequestError("TOKEN is neither a token id nor an IC token") from None
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise InvalidRequestError("this token carries no id ('jti'): revoke its agent "
                                  "instead (`iron-runtime token revoke --agent NAME`)")
    return jti


def revoke(store: PolicyStore, now: float, *, token: str | None = None,
           agent: str | None = None) -> dict[str, Any]:
    if (token is None) == (agent is None):
        raise InvalidRequestError("revoke either one token (its id) or every token of an "
                                  "agent, not both")
    if token is not None:
        jti = token_id(token)
        store.revoke_token(jti, now)
        return {"revoked": "token", "id": jti, "at": now}
    assert agent is not None
    name = scope_of(agent)
    if not name.startswith("agent:"):
        raise InvalidRequestError("--agent takes an agent name")
    store.revoke_agent(name.split(":", 1)[1], now)
    return {"revoked": "agent", "agent": name.split(":", 1)[1], "before": now}


def record_issued(store: PolicyStore, token: str) -> TokenRecord:
    """Remember a just-issued token (its claims, never the token) for ``token list``."""
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    record = TokenRecord(
        jti=claims["jti"], agent=claims["sub"], scopes=tuple(claims.get("scopes", ())),
        issued=float(claims["iat"]), expires=float(claims["exp"]) if "exp" in claims else None,
        admin=bool(claims.get("adm")))
    store.record_token(record)
    return record


def list_tokens(store: PolicyStore, agent: str | None = None) -> list[dict[str, Any]]:
    if agent is not None:
        name = scope_of(agent)
        if not name.startswith("agent:"):
            raise InvalidRequestError("--agent takes an agent name")
        agent = name.split(":", 1)[1]
    return [r.to_json() for r in store.tokens(agent)]


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
