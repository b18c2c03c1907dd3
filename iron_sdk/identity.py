"""IC tokens: HS256 JWTs naming the agent, signed with a secret kept on this machine.

The secret comes from ``IRON_SECRET`` or ``$IRON_HOME/secret`` (created 0600 on first
use). The budget is not in the token: it lives in the ledger, so it can change live.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any

from iron_sdk.errors import InvalidTokenError

ISSUER = "iron-sdk"
_CACHE_MAX = 4096


def load_secret(home: Path, *, create: bool) -> bytes:
    env = os.environ.get("IRON_SECRET")
    if env:
        return env.encode()
    path = home / "secret"
    if not path.exists():
        if not create:
            raise InvalidTokenError(
                f"No signing secret at {path}: issue a token first with "
                "`iron-runtime token issue --agent NAME`, or set IRON_SECRET.")
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise InvalidTokenError(
            f"{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`.")
    return path.read_bytes().strip()


def issue_token(home: Path, agent_id: str, *, expires_in_s: float | None = None,
                scopes: tuple[str, ...] = (), admin: bool = False) -> str:
    """A signed IC token for ``agent_id``; ``admin`` adds the ``adm`` claim the router's
    admin API requires (an agent token never carries it)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": agent_id, "iss": ISSUER, "iat": now,
                              "jti": secrets.token_hex(8)}
    if expires_in_s:
        claims["exp"] = now + int(expires_in_s)
    if scopes:
        claims["scopes"] = list(scopes)
    if admin:
        claims["adm"] = True
    import jwt  # imported on use: PyJWT pulls in cryptography

    return jwt.encode(claims, load_secret(home, create=True), algorithm="HS256")


class TokenVerifier:
    """Verifies IC tokens, caching good ones until they expire (verification is ~20 µs,
    and the router sees the same token on every request)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._secret: bytes | None = None
        self._cache: dict[str, dict[str, Any]] = {}

    def verify(self, token: str) -> dict[str, Any]:
        claims = self._cache.get(token)
        if claims is not None and claims.get("exp", float("inf")) > time.time():
            return claims
        import jwt

        if self._secret is None:
            self._secret = load_secret(self.home, create=False)
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], issuer=ISSUER,
                                options={"require": ["sub", "iss"]})
        except jwt.ExpiredSignatureError:
            raise InvalidTokenError(
                "The IC token has expired; issue a new one with "
                "`iron-runtime token issue --agent NAME`.") from None
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(
                f"The IC token is not valid here ({type(exc).__name__}): it was not issued "
                "by this runtime's secret or was altered.") from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise InvalidTokenError("The IC token names no agent ('sub' claim).")
        claims["scopes"] = tuple(s for s in claims.get("scopes", ()) if isinstance(s, str))
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[token] = claims
        return claims
