"""Hardening: private files, key rotation, Host check, metrics labels, strict JSON bodies,
and the event-loop offload helper."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import jwt
import pytest

from iron_sdk.cli import main as cli
from iron_sdk.errors import InvalidTokenError
from iron_sdk.home import ensure_home, secure_file
from iron_sdk.identity import KEYRING, TokenVerifier, issue_token, key_id, rotate_key

DAY = 86400.0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Clock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


# -- files ---------------------------------------------------------------------------------
def test_home_is_created_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        home = ensure_home(tmp_path / "a" / "iron")
        assert mode(home) == 0o700
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o755)
        os.chmod(shared, 0o755)
        ensure_home(shared)
        assert mode(shared) == 0o755  # an existing home is the user's choice
    finally:
        os.umask(old)


def test_secure_file_tightens_the_ledger_and_its_wal(tmp_path: Path) -> None:
    import sqlite3

    old = os.umask(0o022)
    try:
        db = tmp_path / "ledger.db"
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        assert mode(db) == 0o644 and (tmp_path / "ledger.db-wal").exists()
        secure_file(db)
        for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
            assert mode(tmp_path / name) == 0o600, name
        conn.close()
        secure_file(tmp_path / "missing.db")  # nothing to do, no error
    finally:
        os.umask(old)


def test_first_token_creates_a_private_home_and_secret(iron_home: Path) -> None:
    old = os.umask(0o022)
    try:
        token = issue_token(iron_home, "bot")
    finally:
        os.umask(old)
    assert mode(iron_home) == 0o700 and mode(iron_home / "secret") == 0o600
    secret = (iron_home / "secret").read_bytes().strip()
    assert jwt.get_unverified_header(token)["kid"] == key_id(secret)
    assert TokenVerifier(iron_home).verify(token)["sub"] == "bot"


# -- key rotation --------------------------------------------------------------------------
def test_rotation_grace_and_a_running_verifier(iron_home: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    old_token = issue_token(iron_home, "bot")
    secret = (iron_home / "secret").read_bytes().strip()
    legacy = jwt.encode({"sub": "old", "iss": "iron-sdk"}, secret, algorithm="HS256")
    assert "kid" not in jwt.get_unverified_header(legacy)
    verifier = TokenVerifier(iron_home, clock=clock)  # created before the rotation
    assert verifier.verify(old_token)["sub"] == "bot"
    assert verifier.verify(legacy)["sub"] == "old"

    assert cli(["secret", "rotate", "--grace", "7d"]) == 0
    assert mode(iron_home / KEYRING) == 0o600
    new_token = issue_token(iron_home, "bot")
    new_kid = jwt.get_unverified_header(new_token)["kid"]
    assert new_kid != key_id(secret)
    # The running verifier looks at the keyring at most once a second: move that on.
    monkeypatch.setattr(time, "monotonic", lambda: clock.now + 10)
    assert verifier.verify(new_token)["sub"] == "bot"
    assert verifier.verify(old_token)["sub"] == "bot"  # within the grace period
    assert verifier.verify(legacy)["sub"] == "old"  # no kid: the original secret

    clock.now += 7 * DAY + 1  # grace over (cached results are not trusted past it)
    for token in (old_token, legacy):
        with pytest.raises(InvalidTokenError, match="grace period has ended"):
            verifier.verify(token)
    assert verifier.verify(new_token)["sub"] == "bot"
    fresh = TokenVerifier(iron_home, clock=clock)
    with pytest.raises(InvalidTokenError):
        fresh.verify(old_token)

    # A second rotation after the grace drops the expired key from the keyring.
    rotate_key(iron_home, grace_s=60, now=clock.now)
    kids = [k["kid"] for k in json.loads((iron_home / KEYRING).read_text())["keys"]]
    assert kids[0] == new_kid and key_id(secret) not in kids and len(kids) == 2


def test_zero_grace_refuses_old_tokens_at_once(iron_home: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    old_token = issue_token(iron_home, "bot")
    verifier = TokenVerifier(iron_home)
    verifier.verify(old_token)
    rotate_key(iron_home, grace_s=0)
    monkeypatch.setattr(time, "monotonic", lambda: 1e12)
    with pytest.raises(InvalidTokenError):
        verifier.verify(old_token)
    assert verifier.verify(issue_token(iron_home, "bot"))["sub"] == "bot"


def test_iron_secret_is_a_single_key(iron_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRON_SECRET", "an-operator-secret-long-enough-for-hs256-0123456789")
    token = issue_token(iron_home, "bot")
    assert TokenVerifier(iron_home).verify(token)["sub"] == "bot"
    assert not (iron_home / "secret").exists()
    assert cli(["secret", "rotate"]) == 2  # the operator rotates IRON_SECRET itself
    with pytest.raises(InvalidTokenError, match="IRON_SECRET"):
        rotate_key(iron_home, grace_s=60)


def test_keyring_readable_by_others_is_refused(iron_home: Path) -> None:
    rotate_key(iron_home, grace_s=60)
    token = issue_token(iron_home, "bot")
    os.chmod(iron_home / KEYRING, 0o644)
    with pytest.raises(InvalidTokenError, match="chmod 600"):
        TokenVerifier(iron_home).verify(token)


def test_unknown_kid_is_refused(iron_home: Path) -> None:
    issue_token(iron_home, "bot")
    other = jwt.encode({"sub": "x", "iss": "iron-sdk"}, "s" * 40, algorithm="HS256",
                       headers={"kid": "not-ours"})
    with pytest.raises(InvalidTokenError, match="does not have"):
        TokenVerifier(iron_home).verify(other)
