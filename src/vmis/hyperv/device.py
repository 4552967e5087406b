"""The kernel <-> daemon channel: a ``/dev/vmbus/hv_*`` device or a stand-in socket.

The ``hv_utils`` transport (facts section 2) is message-oriented: one
``read()`` returns exactly one kernel message, one ``write()`` hands exactly
one reply to the kernel, and the kernel's verdict on a reply is the write's
errno.  A Unix ``SOCK_SEQPACKET`` socket keeps the message boundaries, so when
the configured device path is such a socket we connect to it instead and
treat each datagram as one kernel message: that is how the emulator (and any
outside test) drives a daemon without Hyper-V.  A socket cannot return a
write errno; the emulator records the errno the kernel would have returned.
"""

from __future__ import annotations

import errno
import os
import socket
import stat

from vmis.errors import ChannelClosed, ConnectError

__all__ = ["Device", "open_device"]


class Device:
    """An open channel to the kernel (or its emulator).

    Use :func:`open_device` to create one.
    """

    def __init__(self, path: str, fd: int, sock: socket.socket | None) -> None:
        #: the path it was opened from
        self.path = path
        self._fd = fd
        self._sock = sock

    @property
    def is_socket(self) -> bool:
        """Whether this is an emulator socket rather than a character device."""
        return self._sock is not None

    def fileno(self) -> int:
        """The descriptor to poll for readability."""
        return self._fd

    def read(self, size: int) -> bytes:
        """Read one kernel message of at most ``size`` bytes.

        :raise ChannelClosed: When the other end went away (socket EOF).
        :raise OSError: On a device error (e.g. EINVAL: buffer too small).
        """
        if self._sock is not None:
            data, _, flags, _ = self._sock.recvmsg(size)
            if not data and not flags & socket.MSG_TRUNC:
                raise ChannelClosed(f"{self.path}: the kernel side closed the channel")
            if flags & socket.MSG_TRUNC:
                # the character device refuses a short read buffer with EINVAL
                raise OSError(errno.EINVAL, "message larger than the read buffer", self.path)
            return data
        return os.read(self._fd, size)

    def write(self, data: bytes) -> None:
        """Hand one message to the kernel.

        :raise OSError: When the kernel refuses it (its errno) or the write is short.
        """
        sent = self._sock.send(data) if self._sock is not None else os.write(self._fd, data)
        if sent != len(data):
            raise OSError(errno.EIO, f"short write ({sent} of {len(data)} bytes)", self.path)

    def close(self) -> None:
        """Close the channel (the kernel then resets the service state)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        elif self._fd >= 0:
            os.close(self._fd)
        self._fd = -1


def open_device(path: str) -> Device:
    """Open ``path``: connect when it is a Unix socket, else open the device O_RDWR.

    :raise ConnectError: When it cannot be opened or connected (the message
        says why, e.g. another daemon already holds the device: EBUSY).
    """
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISSOCK(mode):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                raise
            return Device(path, sock.fileno(), sock)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        hint = ""
        if err.errno == errno.ENOENT:
            hint = " (is the hv_utils module loaded? is this a Hyper-V guest?)"
        elif err.errno == errno.EBUSY:
            hint = " (another daemon, e.g. the C hyperv-daemons, already has it open)"
        raise ConnectError(f"cannot open {path}: {err.strerror}{hint}", err) from err
    return Device(path, fd, None)
