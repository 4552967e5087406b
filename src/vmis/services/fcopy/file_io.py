"""What the hashing file workers share: :class:`~.receiver.Receiver`, :class:`~.reader.Reader`.

Standard library only.
"""

from __future__ import annotations

import errno
import os

from vmis.errors import ServiceError

__all__ = ["HASH_BLOCK", "nothing", "os_error"]

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
