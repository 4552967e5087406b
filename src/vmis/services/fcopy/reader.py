"""One outgoing file, read in order and hashed as it goes (docs/services/fcopy.md §3.2-3.4).

Everything here blocks (disk I/O, hashing); the async callers, the guest
service and the host's engine, run it in worker threads, where hashlib and
os.pread release the GIL. Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from vmis.errors import ServiceError
from vmis.services.fcopy.file_io import HASH_BLOCK, nothing, os_error
from vmis.services.fcopy.paths import shown

__all__ = ["Reader"]

#: chunks a reader may be ahead of its hashing
_HASH_LAG = 4


class Reader:
    """One file read in order from offset 0 (or a resume offset), hashed as it goes.

    :param fd: the open file; the reader takes ownership.
    :param path: its path (answers; :attr:`display` for messages).
    """

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.display = shown(path)
        self.st = os.fstat(fd)
        self.size = self.st.st_size
        self._hash = hashlib.sha256()
        #: bytes hashed so far
        self.pos = 0
        #: the offset the next read must start at (claimed ahead of the worker)
        self.expected = 0
        self._io: ThreadPoolExecutor | None = None
        self._hasher: ThreadPoolExecutor | None = None
        #: chunks read but not hashed yet, at most _HASH_LAG (bounds the memory held)
        self._lag = threading.Semaphore(_HASH_LAG)

    def seek(self, offset: int) -> str:
        """Start over, hashing the first *offset* bytes; return their SHA-256."""
        if not 0 <= offset <= self.size:
            raise ServiceError("bad-request", f"offset {offset} outside 0..{self.size}")
        self._drain()
        self._hash = hashlib.sha256()
        self.pos = 0
        while self.pos < offset:
            block = self._pread(min(HASH_BLOCK, offset - self.pos), self.pos)
            self._hash.update(block)
            self.pos += len(block)
        self.expected = offset
        return self._hash.copy().hexdigest()

    def claim(self, offset: int, length: int) -> int:
        """Check that a read continues the last one; return the length to read."""
        if offset != self.expected:
            raise ServiceError("bad-request", f"read at offset {offset}, expected {self.expected}")
        length = max(0, min(length, self.size - offset))
        self.expected = offset + length
        return length

    def read(self, offset: int, length: int) -> bytes:
        """Read claimed bytes and hash them now, in the calling thread (small files)."""
        data = self._pread(length, offset)
        self._hash.update(data)
        self.pos = offset + len(data)
        return data

    def submit(self, offset: int, length: int) -> Future[bytes]:
        """Queue a claimed read: one thread reads, another hashes, in offset order.

        The future is done as soon as the bytes are read; hashing follows
        behind (at most a few chunks) and :meth:`finish` waits for it.
        """
        if self._io is None or self._hasher is None:
            self._io = ThreadPoolExecutor(1, thread_name_prefix="fcopy-read")
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="fcopy-hash")
        got = self._io.submit(self._lagged_pread, length, offset)
        self._hasher.submit(self._digest, got)
        return got

    def _lagged_pread(self, length: int, offset: int) -> bytes:
        self._lag.acquire()
        return self._pread(length, offset)

    def _digest(self, got: Future[bytes]) -> None:
        try:
            data = got.result()
        finally:
            self._lag.release()
        self._hash.update(data)
        self.pos += len(data)

    def _drain(self) -> None:
        for pool in (self._io, self._hasher):
            if pool is not None:
                pool.submit(nothing).result()

    def _pread(self, length: int, offset: int) -> bytes:
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as exc:
            raise os_error(exc, f"reading {self.display}") from exc
        if len(data) != length:
            raise ServiceError("failed", f"{self.display} shrank while being copied")
        return data

    def finish(self) -> str:
        """The SHA-256 of the whole file, after checking it did not change meanwhile.

        :raise ServiceError: ``failed`` when not all was read or the file changed.
        """
        self._drain()
        if self.pos != self.size:
            raise ServiceError("failed", f"{self.display}: read {self.pos} of {self.size} bytes")
        st = os.fstat(self.fd)
        if (st.st_size, st.st_mtime_ns) != (self.size, self.st.st_mtime_ns):
            raise ServiceError("failed", f"{self.display} changed while being copied")
        return self._hash.hexdigest()

    def close(self) -> None:
        """Close the file once no read is queued any more."""
        with contextlib.suppress(BaseException):
            self._drain()
        for pool in (self._io, self._hasher):
            if pool is not None:
                pool.shutdown(wait=False)
        self._io = self._hasher = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
