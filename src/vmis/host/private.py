"""The host manager's files, readable by its user only.

The store holds KVP values waiting for delivery and every VM's channel; the
logs and pid files say what runs where. So the store, its directory, the
logs and pid files are 0600 files in 0700 directories, whatever the umask,
and files left by an earlier version with wider modes are narrowed when the
manager (or the lab) opens them again.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "PRIVATE_DIR",
    "PRIVATE_FILE",
    "open_private_log",
    "private_dir",
    "private_file",
    "private_sqlite",
    "write_private",
]

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
#: what SQLite keeps beside a database (WAL mode, or a rollback journal)
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> Path:
    """Create *path* and its missing parents 0700, and narrow *path* to 0700.

    A directory shared by design is left alone: one with the sticky bit
    (``/tmp``) or one that belongs to another user.
    """
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)
    st = path.stat()
    if st.st_uid == os.geteuid() and not st.st_mode & stat.S_ISVTX:
        path.chmod(PRIVATE_DIR)
    return path


def private_file(path: Path) -> None:
    """Make an existing file 0600; a missing one is no error."""
    with contextlib.suppress(FileNotFoundError):
        path.chmod(PRIVATE_FILE)


def write_private(path: Path, text: str) -> None:
    """Write a small file (a pid file) with mode 0600, narrowing an older one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, PRIVATE_FILE)
        out.write(text)


def open_private_log(path: Path) -> BinaryIO:
    """Open a log for appending, mode 0600, narrowing an older one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)
    return os.fdopen(fd, "ab")


def private_sqlite(database: Path) -> None:
    """Create an SQLite database file 0600 before SQLite does, and narrow its companions.

    SQLite gives the ``-wal`` and ``-shm`` files it creates the database
    file's mode, so a 0600 database keeps them 0600 too.
    """
    fd = os.open(database, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    for suffix in SQLITE_COMPANIONS:
        private_file(database.with_name(database.name + suffix))
