"""Keeps glibc's megabyte buffers in the process while copies run (docs/services/fcopy.md §3.3).

Used by both ends of a copy, the guest service and the host's engine.
Standard library only.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BULK_MEMORY", "BulkMemory"]


class BulkMemory:
    """Keeps glibc from handing megabyte buffers back to the kernel while copies run.

    Every data frame is a fresh buffer of about a megabyte. glibc serves
    such sizes with mmap, or trims them off the heap as soon as they are
    freed, so each new frame's pages fault in again and are zeroed by the
    kernel: that cost as much CPU as a memcpy of the data (measured with
    ``perf stat -e page-faults``: 40,000 faults for 400 MiB copied, 1,000
    with this). While a copy is open the thresholds are raised so the heap
    keeps and reuses those buffers; when the last copy ends the memory is
    given back with ``malloc_trim``. Without glibc this does nothing.
    """

    #: glibc's mallopt parameters (malloc.h) and their default values
    _M_TRIM_THRESHOLD = -1
    _M_MMAP_THRESHOLD = -3
    _DEFAULT = 128 * 1024

    def __init__(self) -> None:
        self._users = 0
        self._libc: Any = None
        try:
            import ctypes
            import platform

            if platform.libc_ver()[0] == "glibc":
                libc = ctypes.CDLL(None)
                if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
                    self._libc = libc
        except (OSError, ImportError):
            self._libc = None

    def acquire(self) -> None:
        """A copy starts."""
        if self._users == 0 and self._libc is not None:
            self._libc.mallopt(self._M_MMAP_THRESHOLD, 32 * 1024 * 1024)
            self._libc.mallopt(self._M_TRIM_THRESHOLD, 128 * 1024 * 1024)
        self._users += 1

    def release(self) -> None:
        """A copy ended; the last one gives the memory back."""
        self._users = max(0, self._users - 1)
        if self._users == 0 and self._libc is not None:
            self._libc.mallopt(self._M_MMAP_THRESHOLD, self._DEFAULT)
            self._libc.mallopt(self._M_TRIM_THRESHOLD, self._DEFAULT)
            self._libc.malloc_trim(0)


#: one per process: the thresholds are process-wide
BULK_MEMORY = BulkMemory()
