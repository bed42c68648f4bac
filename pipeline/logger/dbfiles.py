"""The files under the logger's SQLite database: created private, watched while the logger runs.

The logger acknowledges a message only after its commit, so the database file must still be the
one it wrote to. If someone removes or replaces it (or its -wal or -shm) under a running logger,
SQLite goes on writing to the unlinked inode and every later acknowledgement would confirm a
result that no file holds. `FileWatch.check` notices this before the next acknowledgement.

The files are never opened here while SQLite has them open: closing any descriptor of a file
drops every POSIX lock this process holds on it, SQLite's included. Only stat() and access()
are used, and access() also sees what makes a write fault later (an immutable attribute or a
read-only mount turns SQLite's next write into the -shm mapping into SIGBUS).
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = ("", "-wal", "-shm")
FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dirs(folder: Path) -> None:
    """Create the missing folders of `folder` with mode 0700 (existing ones are left alone)."""
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(path, DIR_MODE)  # mkdir's mode is masked by the umask


def create_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists: SQLite then gives its -wal and
    -shm files the database file's mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have taken bits away, never added
    finally:
        os.close(fd)


def unwritable(path: Path) -> str | None:
    """Why an existing database file cannot be written by this process, or None."""
    for suffix in SUFFIXES:
        name = Path(f"{path}{suffix}")
        if name.exists() and not os.access(name, os.W_OK):
            return (
                f"{name} is not writable by this user (check its owner, mode and attributes, "
                "e.g. lsattr/chattr -i)"
            )
    return None


@dataclass(frozen=True)
class _Identity:
    device: int
    inode: int


def _identity(path: Path) -> _Identity | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _Identity(st.st_dev, st.st_ino)


class FileWatch:
    """Remembers which files the open database is; `check` says when that is no longer true."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known = {suffix: _identity(Path(f"{path}{suffix}")) for suffix in SUFFIXES}

    def check(self) -> str | None:
        """What happened to the files ("removed"/"replaced"/"not writable" line), or None."""
        for suffix, known in self._known.items():
            name = Path(f"{self.path}{suffix}")
            now = _identity(name)
            if known is None:
                continue  # not there when opened (a -wal not yet created): nothing to compare
            if now is None:
                return f"{name} was removed while the logger ran"
            if now != known:
                return f"{name} was replaced by another file while the logger ran"
        return unwritable(self.path)

    def lost(self) -> bool:
        """Whether the open database is no longer reachable at its path (removed or replaced)."""
        return any(
            known is not None and _identity(Path(f"{self.path}{suffix}")) != known
            for suffix, known in self._known.items()
        )


def rescue(conn: sqlite3.Connection, path: Path) -> Path:
    """Copy what the open connection still sees (the unlinked file and its WAL) to a new
    private file beside `path`; returns where. Raises OSError or sqlite3.Error."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.rescued-{stamp}")
    make_private_dirs(target.parent)
    create_private_file(target)
    copy = sqlite3.connect(str(target))
    try:
        conn.backup(copy)
    finally:
        copy.close()
    return target
