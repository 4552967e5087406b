"""What the hashing file workers share: :class:`~.receiver.Receiver`, :class:`~.reader.Reader`.

Standard library only.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from vmis.errors import ServiceError

__all__ = ["HASH_BLOCK", "nothing", "os_error", "place_file", "sync_filesystem"]

#: bytes hashed again from the disk at a time (resume and seek)
HASH_BLOCK = 1024 * 1024


def os_error(exc: OSError, what: str) -> ServiceError:
    """The service's error (docs/services/fcopy.md §2) for an OSError while doing *what*."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return ServiceError("too-large", f"{what}: {os.strerror(exc.errno or 0)}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ServiceError("denied", f"{what}: {os.strerror(exc.errno or 0)}")
    if exc.errno == errno.ENOENT:
        return ServiceError("not-found", f"{what}: {os.strerror(exc.errno)}")
    return ServiceError("failed", f"{what}: {exc.strerror or exc}")


def nothing() -> None:
    """A no-op queued behind a worker's tasks, to wait for them."""


def _libc_syncfs() -> Any:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs if hasattr(libc, "syncfs") else None
    except (OSError, ImportError):
        return None


_SYNCFS = _libc_syncfs()


def sync_filesystem(fd: int) -> None:
    """Write everything of the filesystem holding *fd* to its disk, and wait (syncfs(2)).

    What ``sync -f`` does: one call makes a whole tree of new files durable,
    where an fsync per file would wait for the disk once per file. Where
    syncfs is missing, every filesystem is synced (``sync``).

    :raise OSError: When the filesystem reports a write error.
    """
    if _SYNCFS is None:
        os.sync()
        return
    if _SYNCFS(fd) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def place_file(dir_fd: int, part: str, name: str, force: bool, shown: str) -> None:
    """Move a complete partial file to its destination name, by Copy-VMFile's rules.

    With *force* the file replaces what is there (``rename``); without, a
    file that appeared meanwhile is kept (``link`` never replaces) and the
    copy fails with ``exists``. A directory in the way is never replaced.

    :param shown: the destination, for messages.
    :raise ServiceError: ``exists``.
    :raise OSError: From the filesystem.
    """
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise ServiceError("exists", f"{shown} is a directory")
    if force:
        os.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    if st is not None:
        raise ServiceError("exists", f"{shown} exists (-Force overwrites it)")
    try:
        os.link(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise ServiceError("exists", f"{shown} exists (-Force overwrites it)") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # a filesystem without hard links: a rename, checked just before
        os.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    os.unlink(part, dir_fd=dir_fd)
