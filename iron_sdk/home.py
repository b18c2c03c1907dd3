"""``$IRON_HOME`` on disk: a private directory (0700) whose files are private (0600).

The home holds the signing keys, the ledger and the audit log: nothing in it is for
other users of the machine. Whoever creates the home calls :func:`ensure_home`;
whoever creates a file in it (the SQLite ledger with its ``-wal``/``-shm`` files, the
audit log, the keyring) calls :func:`secure_file` on it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
# SQLite's companions of a database file in WAL mode.
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def ensure_home(home: Path) -> Path:
    """Create ``home`` (and missing parents) as 0700; return it.

    A directory we create ends up 0700 whatever the umask. A directory that already
    existed is left as the user made it (``~/.iron`` may be deliberately shared): only
    its own mode is never loosened by us.
    """
    try:
        home.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        return home
    os.chmod(home, DIR_MODE)  # mkdir's mode is filtered by the umask
    return home


def secure_file(path: str | os.PathLike[str]) -> None:
    """Make an existing file 0600 (owner only); a missing file is fine (nothing to do).

    For a SQLite database pass the database path: its ``-wal``, ``-shm`` and
    ``-journal`` companions are tightened too.
    """
    base = os.fspath(path)
    for suffix in SQLITE_SUFFIXES if base.endswith(".db") else ("",):
        _chmod_private(base + suffix)


def _chmod_private(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077 & 0o777)


def create_private(path: Path, data: bytes) -> None:
    """Write a new file that is 0600 from its first byte (never readable by others,
    even for an instant); replaces ``path`` atomically if it exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # O_CREAT's mode is filtered by the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_private(path: Path) -> None:
    """Refuse a key file that other users can read: a ``PermissionError`` naming the fix."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(
            f"{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`.")


HOME_FILES = ("secret", "keys.json", "ledger.db", "audit.jsonl")


def secure_home_files(home: Path) -> None:
    """Tighten the files iron-sdk keeps in ``home`` (keys, ledger with its WAL, audit
    log) to 0600: for a home made by an older version, or files made under a loose
    umask. Files elsewhere (a ledger path the operator chose) are left alone."""
    for name in HOME_FILES:
        secure_file(home / name)
