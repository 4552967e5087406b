"""Destinations being written: two copies never write one file at once.

docs/services/fcopy.md §3.1. A copy claims its destination (the directory's
device and inode, and the name in it) before it touches any partial file
there and keeps the claim until the file is in place or the copy is given
up. A second copy to the same destination is refused with ``busy`` at once,
instead of deleting the first one's partial file and failing it later.

One registry per process (the agent, the host manager): every copy of a
guest goes through its one agent, every copy of a host through its one
manager. Standard library only.
"""

from __future__ import annotations

import os
import threading

from vmis.errors import ServiceError

__all__ = ["CLAIMS", "Claim", "Claims"]

#: (device, inode) of a directory and a name in it
Claim = tuple[int, int, str]


class Claims:
    """The destinations this process is writing now."""

    def __init__(self) -> None:
        self._held: set[Claim] = set()
        self._lock = threading.Lock()

    @staticmethod
    def key(dir_fd: int, name: str) -> Claim:
        """The claim of *name* in the directory *dir_fd*."""
        st = os.fstat(dir_fd)
        return (st.st_dev, st.st_ino, name)

    def take(self, claim: Claim, shown: str) -> Claim:
        """Claim a destination.

        :raise ServiceError: ``busy`` when another copy holds it.
        """
        with self._lock:
            if claim in self._held:
                raise ServiceError("busy", f"{shown} is being written by another copy; "
                                           "try again when it is done")
            self._held.add(claim)
        return claim

    def release(self, claim: Claim | None) -> None:
        """Give a claim back (None: there was none)."""
        if claim is not None:
            with self._lock:
                self._held.discard(claim)

    def held(self, claim: Claim) -> bool:
        with self._lock:
            return claim in self._held


#: the process's one registry
CLAIMS = Claims()
