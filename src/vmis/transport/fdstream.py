"""A duplex asyncio transport over one file descriptor (a virtio-serial port).

asyncio's pipe transports are one-directional, and a virtio-serial port is a
character device read and written through the same descriptor. This
transport does both with ``add_reader``/``add_writer``, with the usual flow
control: ``pause_writing`` above the high-water mark.

End of stream: on a virtio-serial port a read returns 0 while no host is
connected, and a pty returns EIO once its other end is gone. Both end the
transport (``eof_received`` then ``connection_lost``); the caller reads
again with a fresh channel (docs/protocol.md §1).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import os
from typing import Any

__all__ = ["FdStreamTransport", "open_fd_stream"]

_READ_SIZE = 256 * 1024
_HIGH_WATER = 1024 * 1024
_LOW_WATER = 256 * 1024


class FdStreamTransport(asyncio.Transport):
    """Read and write one non-blocking descriptor; closes it when done."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fd: int,
        protocol: asyncio.Protocol | asyncio.BufferedProtocol, *, close_fd: bool = True,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._fd = fd
        self._protocol = protocol
        self._close_fd = close_fd
        #: the error that ended the transport (None: end of stream or close())
        self.error: BaseException | None = None
        self._buffer: collections.deque[bytes | memoryview] = collections.deque()
        self._buffered = 0
        self._closing = False
        self._reading = True
        self._writing_paused = False
        self._unhooked = False
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._read_ready)
        loop.call_soon(protocol.connection_made, self)

    # Section: reading

    def _read_ready(self) -> None:
        protocol = self._protocol
        data = b""
        n = 0
        try:
            if isinstance(protocol, asyncio.BufferedProtocol):
                # Read where the protocol wants the bytes (a large payload's
                # own buffer): no bytes object, no copy out of it.
                n = os.readv(self._fd, [protocol.get_buffer(_READ_SIZE)])
            else:
                data = os.read(self._fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                self._fatal(exc)
                return
        if n and isinstance(protocol, asyncio.BufferedProtocol):
            protocol.buffer_updated(n)
            return
        if data and isinstance(protocol, asyncio.Protocol):
            protocol.data_received(data)
            return
        self._loop.remove_reader(self._fd)
        self._protocol.eof_received()
        self.close()

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # Section: writing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        view = memoryview(data).cast("B")
        if not self._buffer:
            try:
                n = os.write(self._fd, view)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._fatal(exc)
                return
            view = view[n:]
            if not view:
                return
            self._loop.add_writer(self._fd, self._write_ready)
        self._buffer.append(bytes(view) if isinstance(data, bytearray) else view)
        self._buffered += len(view)
        self._maybe_pause()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _write_ready(self) -> None:
        while self._buffer:
            view = memoryview(self._buffer[0])
            try:
                n = os.write(self._fd, view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fatal(exc)
                return
            self._buffered -= n
            if n < len(view):
                self._buffer[0] = view[n:]
                return
            self._buffer.popleft()
        self._loop.remove_writer(self._fd)
        if self._writing_paused and self._buffered <= _LOW_WATER:
            self._writing_paused = False
            self._protocol.resume_writing()
        if self._closing:
            self._finish(None)

    def _maybe_pause(self) -> None:
        if not self._writing_paused and self._buffered > _HIGH_WATER:
            self._writing_paused = True
            self._protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def can_write_eof(self) -> bool:
        return False

    # Section: closing

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._reading:
            self._loop.remove_reader(self._fd)
        if not self._buffer:
            self._loop.call_soon(self._finish, None)

    def abort(self) -> None:
        self._buffer.clear()
        self._buffered = 0
        self._closing = True
        self._unhook()
        self._loop.call_soon(self._finish, None)

    def _fatal(self, exc: BaseException) -> None:
        self._buffer.clear()
        self._buffered = 0
        self._closing = True
        self._unhook()
        self._loop.call_soon(self._finish, exc)

    def _unhook(self) -> None:
        # Now, not in _finish: a caller that keeps the descriptor (close_fd
        # False) may close it at once, and its number may be reused by then.
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._unhooked = True

    def _finish(self, exc: BaseException | None) -> None:
        if self._fd < 0:
            return
        if not self._unhooked:
            self._loop.remove_writer(self._fd)
        if self._close_fd:
            os.close(self._fd)
        self._fd = -1
        self.error = exc
        self._protocol.connection_lost(exc if isinstance(exc, Exception) else None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "fd":
            return self._fd
        return default


def open_fd_stream(
    loop: asyncio.AbstractEventLoop, fd: int, protocol: asyncio.Protocol | asyncio.BufferedProtocol,
    *, close_fd: bool = True,
) -> FdStreamTransport:
    """Wrap an open descriptor; unless *close_fd* is false the transport closes it."""
    return FdStreamTransport(loop, fd, protocol, close_fd=close_fd)
