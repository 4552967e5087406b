"""The host of the file-copy channel on newer kernels (:mod:`vmis.hyperv.uio`)."""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import struct
import threading
import time
from pathlib import Path
from types import TracebackType

from support.hv_emulator.host_requests import FcopyRequests, HostResponse
from vmis.errors import RemoteProtocolError, RequestTimeout, StateError
from vmis.hyperv.constants import HV_UTIL_TIMEOUT, IcFlag, IcMsgType
from vmis.hyperv.messages import ICMSG_HDR, IcHeader

__all__ = ["UioHostEmulator"]

_UIO_DESC = struct.Struct("<HHHHQ")
_RING_HEADER = 4096


class UioHostEmulator(FcopyRequests):
    """Plays the *host* of the file-copy channel as ``uio_hv_generic`` exposes it.

    There is no kernel driver in between on this path: the daemon maps the
    two rings and reads the host's packets itself.  The emulator provides:

    * a file of ``2 * ring_size`` bytes to map as the rings (TX ring, guest ->
      host, then RX ring, host -> guest), at :attr:`ring_path`;
    * a SOCK_SEQPACKET socket standing in for ``/dev/uioN`` at
      :attr:`device_path`: it sends a 4-byte interrupt count when a packet is
      queued (only while the guest's RX interrupt mask is clear, as the host
      does) and receives the daemon's 4-byte signal.

    Host packets are written into the RX ring and answers read from the TX
    ring by code of its own (the host's half of ``vmbus_bufring.c``: a
    16-byte descriptor, the payload padded to 8 bytes, then the u64 start
    offset), so the daemon's ring code is checked against a separate reader
    and writer.

    :param directory: where the ring file and socket go.
    :param ring_size: bytes per ring, 4096-byte header included.
    :param timeout: seconds to wait for the daemon's answer.
    """

    def __init__(self, directory: str | os.PathLike[str], ring_size: int = 0x4000,
                 timeout: float = HV_UTIL_TIMEOUT) -> None:
        self.ring_size = ring_size
        self.timeout = timeout
        #: the rings' backing file
        self.ring_path = Path(directory) / "uio-rings"
        #: the stand-in for /dev/uioN
        self.device_path = Path(directory) / "uio.sock"
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._fd = -1
        self._xactid = 0
        self._interrupts = 0
        self._cond = threading.Condition()
        self._accepter: threading.Thread | None = None

    def start(self) -> UioHostEmulator:
        """Create the ring file, listen on the device socket."""
        self.ring_path.write_bytes(b"\0" * (2 * self.ring_size))
        self._fd = os.open(self.ring_path, os.O_RDWR | os.O_CLOEXEC)
        self._mmap = mmap.mmap(self._fd, 2 * self.ring_size, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE)
        # the daemon unmasks RX interrupts when it starts; until then, masked
        struct.pack_into("<I", self._mmap, self.ring_size + 8, 1)
        with contextlib.suppress(FileNotFoundError):
            self.device_path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        listener.bind(str(self.device_path))
        listener.listen(1)
        self._listener = listener
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        conn.settimeout(self.timeout)
        with self._cond:
            self._conn = conn
            self._cond.notify_all()

    def wait_attached(self, timeout: float) -> bool:
        """Wait until the daemon opened the device and unmasked RX interrupts."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._conn is not None, timeout):
                return False
        deadline = time.monotonic() + timeout
        while struct.unpack_from("<I", self._mmap, self.ring_size + 8)[0] != 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        """Close the socket and the mapping."""
        for s in (self._conn, self._listener):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        if self._accepter is not None:
            self._accepter.join(5)
        with contextlib.suppress(AttributeError, BufferError, ValueError):
            self._mmap.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> UioHostEmulator:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # Section: the host's half of the rings

    def _ring(self, which: str) -> tuple[int, int]:
        """(header offset, data size) of the ``"tx"`` or ``"rx"`` ring."""
        return (0 if which == "tx" else self.ring_size), self.ring_size - _RING_HEADER

    def _write_rx(self, payload: bytes, xactid: int) -> None:
        off, dsize = self._ring("rx")
        windex, rindex = struct.unpack_from("<II", self._mmap, off)
        data = off + _RING_HEADER
        total = (_UIO_DESC.size + len(payload) + 7) // 8 * 8
        # flags 1: VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED, as the host sends
        blob = (_UIO_DESC.pack(6, _UIO_DESC.size // 8, total // 8, 1, xactid) + payload)
        blob = blob.ljust(total, b"\0") + struct.pack("<Q", windex << 32)
        used = windex - rindex if windex >= rindex else dsize - rindex + windex
        if dsize - used <= len(blob):
            raise StateError("the guest is not reading its RX ring")
        for i, byte in enumerate(blob):  # byte by byte: wrap-around is explicit
            self._mmap[data + (windex + i) % dsize] = byte
        struct.pack_into("<I", self._mmap, off, (windex + len(blob)) % dsize)

    def _read_tx(self) -> tuple[int, bytes] | None:
        off, dsize = self._ring("tx")
        windex, rindex = struct.unpack_from("<II", self._mmap, off)
        if windex == rindex:
            return None
        data = off + _RING_HEADER

        def take(start: int, n: int) -> bytes:
            return bytes(self._mmap[data + (start + i) % dsize] for i in range(n))

        _, hlen, tlen, _, xactid = _UIO_DESC.unpack(take(rindex, _UIO_DESC.size))
        packet = take(rindex, tlen * 8)
        (start,) = struct.unpack("<Q", take(rindex + tlen * 8, 8))
        if start >> 32 != rindex:
            raise RemoteProtocolError("TX packet's trailing offset does not match its start")
        struct.pack_into("<I", self._mmap, off + 4, (rindex + tlen * 8 + 8) % dsize)
        return xactid, packet[hlen * 8 :]

    # Section: requests

    def packet(self, payload: bytes, msgtype: int | None = None,
               version: tuple[int, int] | None = None) -> bytes:
        """Frame ``payload`` as the host does (file-copy service by default)."""
        header = IcHeader(
            msgtype=IcMsgType.FCOPY if msgtype is None else msgtype,
            framework=(3, 0), version=version or (1, 1), msgsize=len(payload),
            flags=IcFlag.TRANSACTION | IcFlag.REQUEST, pipe_flags=1,
            pipe_msgsize=len(payload) + ICMSG_HDR.size,
        )
        return header.pack() + payload

    def host_request(self, packet: bytes) -> HostResponse:
        """Queue ``packet`` in the RX ring, interrupt, wait for the answer.

        :raise RequestTimeout: When the daemon does not answer in time.
        :raise StateError: When no daemon is attached.
        """
        conn = self._conn
        if conn is None:
            raise StateError("no daemon attached to the uio channel")
        self._xactid += 1
        self._write_rx(packet, self._xactid)
        if struct.unpack_from("<I", self._mmap, self.ring_size + 8)[0] == 0:
            self._interrupts += 1
            conn.send(struct.pack("<I", self._interrupts))
        try:
            signal = conn.recv(4)
        except TimeoutError as err:
            raise RequestTimeout(f"no answer on the uio channel within {self.timeout} s") \
                from err
        if len(signal) != 4:
            raise StateError("the daemon closed the uio channel")
        answer = self._read_tx()
        if answer is None:
            raise RemoteProtocolError("the daemon signalled without an answer in its TX ring")
        xactid, reply = answer
        if xactid != self._xactid:
            raise RemoteProtocolError(f"answer for transaction {xactid}, "
                                      f"expected {self._xactid}")
        # the answer is padded to 8 bytes; the IC packet is as long as the request
        reply = reply[: len(packet)]
        return HostResponse(IcHeader.unpack(reply), reply)
