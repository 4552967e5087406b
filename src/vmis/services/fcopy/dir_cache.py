"""Directories below one open directory, opened without following links, a few kept open.

A tree copy touches thousands of files in a few directories: each end opens
a directory once for all the files in it (``openat`` relative to its
parent, ``O_NOFOLLOW``), instead of resolving every file's path from the
root. A directory swapped for a symbolic link after the walk makes the open
fail rather than lead elsewhere. Standard library only.
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict
from collections.abc import Sequence

from vmis.errors import ServiceError
from vmis.services.fcopy.paths import shown

__all__ = ["DIR_FLAGS", "DirCache"]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: directories kept open at once (a tree's files come directory by directory)
KEEP_OPEN = 32


class DirCache:
    """Opens directories by their names below *base_fd*; owns the descriptors it opens.

    :param base_fd: the directory the names start from (the cache takes ownership).
    :param base: its path, for messages.
    """

    def __init__(self, base_fd: int, base: str) -> None:
        self.base_fd = base_fd
        self.base = base.rstrip("/")
        self._open: OrderedDict[tuple[str, ...], int] = OrderedDict()

    def get(self, names: Sequence[str]) -> int:
        """The directory *names* below the base (``()``: the base); do not close it.

        :raise ServiceError: ``not-found`` when it is missing or not a
            directory (a symbolic link included).
        """
        key = tuple(names)
        if not key:
            return self.base_fd
        fd = self._open.get(key)
        if fd is not None:
            self._open.move_to_end(key)
            return fd
        parent = self.get(key[:-1])
        try:
            fd = os.open(key[-1], DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            where = shown(f"{self.base}/{'/'.join(key)}")
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise ServiceError("not-found", f"{where} is not a directory (any more)") \
                    from None
            raise ServiceError("failed", f"cannot open {where}: {exc.strerror}") from exc
        self._open[key] = fd
        while len(self._open) > KEEP_OPEN:
            _, old = self._open.popitem(last=False)
            os.close(old)
        return fd

    def close(self) -> None:
        """Close every descriptor, the base's included."""
        while self._open:
            os.close(self._open.popitem()[1])
        if self.base_fd >= 0:
            os.close(self.base_fd)
            self.base_fd = -1
