"""A streamed file's data written past the page cache (O_DIRECT), where the filesystem allows it.

docs/services/fcopy.md §3.3. A buffered write copies every byte into a
fresh page-cache page and leaves the disk writing to a later flush. On the
2-CPU development machine, 128 MiB written buffered and fsynced cost 0.05
CPU-seconds at best and up to 0.29 when the kernel had to find new pages
(a virtual machine whose free memory the hypervisor had taken back), and
a copy's receiver then competed with its own hashing for that memory;
the same 128 MiB written with O_DIRECT from one reused staging buffer cost
0.035 CPU-seconds every time, in the same 0.12-0.13 s. A copy also no
longer evicts the page cache of everything else on the machine.

O_DIRECT wants the buffer, the offset and the length aligned. A chunk the
copy received into one of its :class:`PageBuffers` is page-aligned and
written as it is; any other chunk (a frame's data sits at any address in
its payload) is first copied into a page-aligned staging buffer. Offsets
are aligned whenever chunks are whole pages, which they are but for a
file's last one. What cannot go direct (a filesystem
without it, an unaligned offset, a file's tail) is left to the caller to
write buffered, and from then on the file is written buffered.

Only filesystems on a local disk are written direct (:data:`LOCAL_DISK`):
on NFS, SMB or FUSE every direct write is a synchronous round trip to the
server, where a buffered one is pipelined.

Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["ALIGN", "LOCAL_DISK", "SPARES", "DirectWriter", "PageBuffers", "SpareBuffers",
           "filesystem_type"]

#: the alignment asked of buffers, offsets and lengths: a page covers every
#: logical block size but the rarest, and those refuse (EINVAL) and fall back
ALIGN = mmap.PAGESIZE
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
#: filesystems written direct: local block devices whose direct I/O is plain
LOCAL_DISK = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs"})
_MOUNTINFO = "/proc/self/mountinfo"


def filesystem_type(fd: int) -> str | None:
    """The type of the filesystem holding *fd* (``ext4``...), or None if unknown.

    Found by the device number in /proc/self/mountinfo (proc(5)): the
    standard library has no statfs.
    """
    st = os.fstat(fd)
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    try:
        with open(_MOUNTINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == device and " - " in line:
                    return line.split(" - ", 1)[1].split(None, 1)[0]
    except OSError:
        pass
    return None


class DirectWriter:
    """Writes the aligned part of each chunk of one file with O_DIRECT, until it cannot.

    Used from one thread at a time (a receiver's writing thread). From its
    first :meth:`write` on it owns that descriptor's status flags, and it
    writes to no other descriptor.
    """

    def __init__(self) -> None:
        #: O_DIRECT is set on the descriptor and the next write may use it
        self.on = False
        self.fd = -1
        self._stage: mmap.mmap | None = None

    def write(self, fd: int, data: memoryview, offset: int, aligned: bool = False) -> int:
        """Write a prefix of *data* to *fd* at *offset* directly; return its length (maybe 0).

        The caller writes the rest (``data[n:]``) as usual.

        :param aligned: *data* starts at a page boundary (a :class:`PageBuffers`
            buffer's start): written from where it is, not staged.

        :raise OSError: When the disk refuses the data (ENOSPC, EIO...).
        """
        if self.fd < 0:
            self.fd = fd
            self.on = filesystem_type(fd) in LOCAL_DISK and self._set(True)
        if not self.on or fd != self.fd:
            return 0
        n = len(data) - len(data) % ALIGN
        if offset % ALIGN or n == 0:
            self.stop()
            return 0
        try:
            if aligned:
                done = os.pwrite(fd, data[:n], offset)
            else:
                stage = self._staging(n)
                stage[:n] = data[:n]
                with memoryview(stage) as view:
                    done = os.pwrite(fd, view[:n], offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # an alignment this filesystem or device does not take
            self.stop()
            return 0
        if done != len(data):
            # the chunk's tail, or what a short write (a full disk) left: the
            # caller writes it buffered, and says why if it cannot
            self.stop()
        return done

    def stop(self) -> None:
        """Write buffered from now on."""
        if self.on:
            self.on = False
            with contextlib.suppress(OSError):
                self._set(False)
        self.release()

    def release(self) -> None:
        """Give the staging buffer back (the file is done with, or going buffered)."""
        if self._stage is not None:
            with contextlib.suppress(BufferError):
                self._stage.close()
            self._stage = None

    def _set(self, direct: bool) -> bool:
        if not _O_DIRECT:
            return False
        try:
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL,
                        flags | _O_DIRECT if direct else flags & ~_O_DIRECT)
        except OSError:
            return False  # EINVAL: this filesystem has no direct I/O
        return True

    def _staging(self, n: int) -> mmap.mmap:
        if self._stage is None or len(self._stage) < n:
            if self._stage is not None:
                self._stage.close()
            self._stage = mmap.mmap(-1, n)  # anonymous mappings are page-aligned
        return self._stage


class PageBuffers:
    """Page-aligned buffers of one size, reused: where a streamed file's chunks arrive.

    The host takes one for each READ of a file it copies out of a guest and
    gives it back once the chunk is written and hashed
    (``Connection.send_request``'s *into*). A chunk is then neither zeroed
    in a new ``bytearray`` nor copied to a staging buffer to be written
    direct: those were 15 % of the host's CPU for a copy out of a guest.
    :meth:`give` may be called from any thread.

    Closed, a file's buffers become the process's spares (:data:`SPARES`),
    and the next file takes those before it maps new
    ones: mapping and faulting in the four buffers a copy starts with took
    7 ms, and the copy waited for them. The spares are unmapped once idle
    (``MADV_FREE`` instead would have cost a page fault per page again, 60 %
    of making them anew). A buffer never given back
    (a cancelled READ may still be receiving into it) never becomes a spare.

    :param size: each buffer's length.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: deque[mmap.mmap] = deque()
        #: buffers taken from outside (new or spare): the most a copy had in flight at once
        self.made = 0

    def take(self) -> mmap.mmap:
        """A free buffer, else a spare, else a new one."""
        try:
            return self._free.pop()
        except IndexError:
            pass
        self.made += 1
        spare = SPARES.take(self.size)
        if spare is not None:
            return spare
        # faulted in at once: cheaper than a page fault per page while receiving
        return mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                         | getattr(mmap, "MAP_POPULATE", 0))

    def give(self, buffer: mmap.mmap) -> None:
        """Take *buffer* back: nothing reads or writes it any more."""
        self._free.append(buffer)

    def close(self) -> None:
        """Make the free buffers spares (:class:`SpareBuffers`); unmap the rest."""
        while self._free:
            buffer = self._free.pop()
            if not SPARES.keep(buffer):
                _unmap(buffer)


class SpareBuffers:
    """The buffers closed files left, for the next files, unmapped once idle.

    :param limit: the most bytes kept.
    :param idle: seconds without a file taking or leaving one, after which all go.
    :param clock: the monotonic clock those seconds are measured on.
    """

    def __init__(self, limit: int, idle: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.idle = idle
        self._clock = clock
        self._buffers: list[mmap.mmap] = []
        self._lock = threading.Lock()
        self._used = 0.0
        self._timer: threading.Timer | None = None

    def take(self, size: int) -> mmap.mmap | None:
        """A spare of *size* bytes, or None."""
        with self._lock:
            for i in range(len(self._buffers) - 1, -1, -1):
                if len(self._buffers[i]) == size:
                    self._used = self._clock()
                    return self._buffers.pop(i)
        return None

    def keep(self, buffer: mmap.mmap) -> bool:
        """Keep *buffer* as a spare, unless that would pass the limit."""
        with self._lock:
            self._used = self._clock()
            if sum(map(len, self._buffers)) + len(buffer) > self.limit:
                return False
            self._buffers.append(buffer)
            self._arm()
        return True

    def drop(self) -> None:
        """Unmap every spare now."""
        with self._lock:
            buffers, self._buffers = self._buffers, []
        for buffer in buffers:
            _unmap(buffer)

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.idle, self._drop_if_idle)
            self._timer.daemon = True
            self._timer.start()

    def _drop_if_idle(self) -> None:
        with self._lock:
            self._timer = None
            if self._clock() - self._used < self.idle:
                self._arm()
                return
        self.drop()


def _unmap(buffer: mmap.mmap) -> None:
    with contextlib.suppress(BufferError):  # still exported: left to the garbage collector
        buffer.close()


#: the process's spares: a copy's whole window (2 x WINDOW + 1 chunks of
#: 4 MiB) and a little more, kept 30 s
SPARES = SpareBuffers(48 * 1024 * 1024, idle=30.0)
