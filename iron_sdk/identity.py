"""IC tokens: HS256 JWTs naming the agent, signed with a key kept on this machine.

Keys, in order of precedence:

- ``IRON_SECRET``: one key, set by the operator (rotate by changing it);
- ``$IRON_HOME/keys.json`` (0600), written by ``iron-runtime secret rotate``: a keyring
  ``{"keys": [{"kid", "secret", "created_at", "retired_at", "expires_at", "legacy"}]}``.
  New tokens are signed with the newest key that is not retired; a retired key still
  verifies until its ``expires_at`` (the grace period the operator chose);
- ``$IRON_HOME/secret`` (0600, created on first use): one key.

Every token carries its key id in the ``kid`` header. A token without one (issued
before key ids existed) is verified with the original ``secret`` (the ``legacy`` key).
The budget is not in the token: it lives in the ledger, so it can change live.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from iron_sdk.errors import InvalidTokenError
from iron_sdk.home import check_private, create_private, ensure_home

ISSUER = "iron-sdk"
KEYRING = "keys.json"
SECRET = "secret"
_CACHE_MAX = 4096
_RECHECK_S = 1.0  # a verifier looks at the key files at most this often


def key_id(secret: bytes) -> str:
    """The public id of a key: a hash of it (names the key, reveals nothing of it)."""
    return hashlib.sha256(b"iron-sdk kid\0" + secret).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    secret: bytes
    created_at: float = 0.0
    retired_at: float | None = None  # no longer signs new tokens
    expires_at: float | None = None  # no longer verifies (end of the grace period)
    legacy: bool = False  # verifies tokens that carry no kid

    def usable(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "secret": self.secret.decode()}


@dataclass(frozen=True, slots=True)
class Keyring:
    """The keys a runtime signs and verifies with."""

    keys: tuple[SigningKey, ...]
    source: str  # "env", "keyring" or "secret"

    def signing_key(self) -> SigningKey:
        active = [k for k in self.keys if k.retired_at is None]
        if not active:
            raise InvalidTokenError("Every signing key is retired; run "
                                    "`iron-runtime secret rotate` to make a new one.")
        return max(active, key=lambda k: k.created_at)

    def find(self, kid: str | None) -> SigningKey | None:
        for k in self.keys:
            if (k.kid == kid) if kid is not None else k.legacy:
                return k
        return None


def _secret_key(secret: bytes, created_at: float = 0.0) -> SigningKey:
    return SigningKey(kid=key_id(secret), secret=secret, created_at=created_at, legacy=True)


def _read_keyring(path: Path) -> Keyring:
    try:
        check_private(path)
        data = json.loads(path.read_text())
        keys = tuple(SigningKey(
            kid=str(k["kid"]), secret=str(k["secret"]).encode(),
            created_at=float(k.get("created_at") or 0.0),
            retired_at=None if k.get("retired_at") is None else float(k["retired_at"]),
            expires_at=None if k.get("expires_at") is None else float(k["expires_at"]),
            legacy=bool(k.get("legacy", False))) for k in data["keys"])
    except PermissionError as exc:
        raise InvalidTokenError(str(exc)) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidTokenError(f"The keyring {path} is unreadable or damaged "
                                f"({type(exc).__name__}).") from None
    return Keyring(keys, "keyring")


def load_keyring(home: Path, *, create: bool) -> Keyring:
    """The keys in force for ``home``; ``create`` makes ``$IRON_HOME/secret`` if there is
    no key at all (issuing a first token), else that is an :class:`InvalidTokenError`."""
    env = os.environ.get("IRON_SECRET")
    if env:
        return Keyring((_secret_key(env.encode()),), "env")
    ring = home / KEYRING
    if ring.exists():
        return _read_keyring(ring)
    return Keyring((_secret_key(load_secret(home, create=create)),), "secret")


def load_secret(home: Path, *, create: bool) -> bytes:
    """The single secret of ``IRON_SECRET`` or ``$IRON_HOME/secret`` (created 0600)."""
    env = os.environ.get("IRON_SECRET")
    if env:
        return env.encode()
    path = home / SECRET
    if not path.exists():
        if not create:
            raise InvalidTokenError(
                f"No signing secret at {path}: issue a token first with "
                "`iron-runtime token issue --agent NAME`, or set IRON_SECRET.")
        ensure_home(home)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
    try:
        check_private(path)
    except PermissionError as exc:
        raise InvalidTokenError(str(exc)) from None
    return path.read_bytes().strip()


def rotate_key(home: Path, *, grace_s: float, now: float | None = None) -> SigningKey:
    """Make a new signing key in ``$IRON_HOME/keys.json``; the keys signing until now
    keep verifying for ``grace_s`` seconds. Keys whose grace has ended are dropped.
    Returns the new key."""
    if os.environ.get("IRON_SECRET"):
        raise InvalidTokenError("IRON_SECRET is set: that is the only key, so rotate it by "
                                "setting a new value (tokens signed with the old one stop "
                                "verifying), or unset it to use the keyring.")
    if grace_s < 0:
        raise ValueError("grace_s must be >= 0")
    now = time.time() if now is None else now
    ensure_home(home)
    ring = home / KEYRING
    if ring.exists():
        old = _read_keyring(ring).keys
    elif (home / SECRET).exists():
        old = (_secret_key(load_secret(home, create=False)),)
    else:
        old = ()
    kept = [k if k.retired_at is not None
            else SigningKey(k.kid, k.secret, k.created_at, now, now + grace_s, k.legacy)
            for k in old if k.usable(now)]
    secret = secrets.token_urlsafe(48).encode()
    new = SigningKey(kid=key_id(secret), secret=secret,
                     created_at=max([now, *(k.created_at + 1e-6 for k in kept)]))
    body = {"keys": [k.to_json() for k in (*kept, new)]}
    create_private(ring, json.dumps(body, indent=2).encode())
    return new


@functools.lru_cache(maxsize=256)
def is_ic_token(value: object) -> bool:
    """True when ``value`` looks like an IC token (a JWT issued by iron-sdk), read
    without verifying it: a client using one as its API key talks to an iron router,
    which governs its calls (the SDK in that process stands aside)."""
    if not isinstance(value, str) or value.count(".") != 2 or not value.startswith("eyJ"):
        return False
    try:
        payload = value.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return False
    return isinstance(claims, dict) and claims.get("iss") == ISSUER


def issue_token(home: Path, agent_id: str, *, expires_in_s: float | None = None,
                scopes: tuple[str, ...] = (), admin: bool = False) -> str:
    """A signed IC token for ``agent_id`` (``kid`` header: the newest key); ``admin``
    adds the ``adm`` claim the router's admin API requires (an agent token never
    carries it)."""
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

    key = load_keyring(home, create=True).signing_key()
    return jwt.encode(claims, key.secret, algorithm="HS256", headers={"kid": key.kid})


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class TokenVerifier:
    """Verifies IC tokens, caching good ones until they expire (verification is ~20 µs,
    and the router sees the same token on every request).

    A rotation (``keys.json`` or ``secret`` changed on disk) is picked up without a
    restart: the files are stat'ed at most once a second. ``clock`` is the wall clock
    for key grace periods (tests move it)."""

    def __init__(self, home: Path, *, clock: Callable[[], float] | None = None) -> None:
        self.home = home
        self._clock = clock
        self._ring: Keyring | None = None
        self._stamp: tuple[Any, ...] | None = None
        self._checked = float("-inf")  # monotonic time of the last stat
        # token -> (claims, valid until: min of the token's exp and its key's grace end)
        self._cache: dict[str, tuple[dict[str, Any], float]] = {}

    def _now(self) -> float:
        return self._clock() if self._clock is not None else time.time()

    def keyring(self) -> Keyring:
        """The keys in force, re-read when the key files changed (checked ≤ 1/s)."""
        mono = time.monotonic()
        if self._ring is not None and mono - self._checked < _RECHECK_S:
            return self._ring
        self._checked = mono
        stamp = (os.environ.get("IRON_SECRET"), _stat(self.home / KEYRING),
                 _stat(self.home / SECRET))
        if self._ring is None or stamp != self._stamp:
            ring = load_keyring(self.home, create=False)
            self._ring, self._stamp = ring, stamp
            self._cache.clear()
        return self._ring

    def verify(self, token: str) -> dict[str, Any]:
        ring = self.keyring()
        now = self._now()
        hit = self._cache.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        import jwt

        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            kid = None
        key = ring.find(kid if isinstance(kid, str) else None)
        if key is None:
            raise InvalidTokenError(
                "The IC token is not valid here: it was signed with a key this runtime "
                "does not have (another machine's, or one retired and dropped).")
        if not key.usable(now):
            raise InvalidTokenError(
                "The IC token was signed with a retired key whose grace period has ended; "
                "issue a new one with `iron-runtime token issue --agent NAME`.")
        try:
            claims = jwt.decode(token, key.secret, algorithms=["HS256"], issuer=ISSUER,
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
        until = min(float(claims.get("exp", float("inf"))),
                    key.expires_at if key.expires_at is not None else float("inf"))
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[token] = (claims, until)
        return claims
