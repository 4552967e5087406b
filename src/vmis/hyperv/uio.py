"""File copy on newer kernels: the raw VMBus channel through ``uio_hv_generic``.

Kernels from about 6.10 on have no ``/dev/vmbus/hv_fcopy``; the Guest
Service Interface channel is handed to user space whole (facts 6.4,
``tools/hv/hv_fcopy_uio_daemon.c``, ``tools/hv/vmbus_bufring.c``):

* setup: ``modprobe uio_hv_generic``, write the fcopy class GUID to
  ``/sys/bus/vmbus/drivers/uio_hv_generic/new_id``; the device
  ``/sys/bus/vmbus/devices/eb765408-.../uio/uioN`` is ``/dev/uioN``;
* ``mmap`` of the device gives two rings of ``ring_size`` bytes each: first
  the TX ring (guest -> host), then the RX ring (host -> guest).  A ring is a
  4096-byte header (u32 write index, u32 read index, u32 interrupt mask, ...)
  followed by ``ring_size - 4096`` data bytes used circularly;
* a packet in a ring is a 16-byte descriptor (u16 type, u16 header length /
  8, u16 total length / 8, u16 flags, u64 transaction id), the payload padded
  to 8 bytes, then a u64 holding the packet's start offset << 32;
* ``read(fd, 4)`` waits for an interrupt from the host; ``write(fd, 1)``
  unmasks interrupts and signals the host;
* the payload is an IC message exactly as the host sent it (28 header bytes,
  UTF-16 names): no kernel driver converts anything, so version negotiation
  (framework 3.0, file copy 1.1) and the UTF-16 -> UTF-8 conversion happen
  here.  The reply is the same payload with ``status`` and ``icflags`` set,
  sent as an in-band packet (type 6).

The file work itself is :class:`~vmis.hyperv.fcopy.FcopyHandler`, the same as
for the character device.  Beyond the C uio daemon: non-ASCII names are
converted properly (it turns each into 'X'), CANCEL_FCOPY is served (it
answers HV_E_FAIL and leaves the partial file), every packet waiting in the
ring is served per interrupt, and the reply carries the request's transaction
id as the kernel drivers do (it sends all-ones).

For tests, :class:`UioChannel` also takes a socket standing in for
``/dev/uioN`` (one 4-byte datagram per interrupt or signal) plus a file to map
as the rings; the tests' ``UioHostEmulator``
(``tests/support/hv_emulator/uio_host.py``) plays the host.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import socket
import stat
import struct
from pathlib import Path

from vmis.errors import ChannelClosed, ConnectError, RemoteProtocolError
from vmis.hyperv.constants import HResult, IcFlag, IcMsgType
from vmis.hyperv.daemon import StopSignal
from vmis.hyperv.fcopy import FcopyHandler
from vmis.hyperv.messages import (
    FCOPY_DO_SIZE,
    FCOPY_START,
    FCOPY_START_SIZE,
    IC_HEADERS_SIZE,
    ICMSG_HDR,
    VMBUSPIPE_HDR,
    W_MAX_PATH,
)
from vmis.hyperv.utf import utf16s_to_utf8s

__all__ = [
    "DEFAULT_RING_SIZE",
    "FCOPY_INSTANCE_GUID",
    "RING_HEADER_SIZE",
    "Ring",
    "UioChannel",
    "UioFcopyDaemon",
    "find_uio_device",
]

#: The fixed instance GUID of the Guest Service Interface channel.
FCOPY_INSTANCE_GUID = "eb765408-105f-49b6-b4aa-c123b64d17d4"
#: Ring size when the channel does not tell (the first uio daemon's 16 KiB).
DEFAULT_RING_SIZE = 0x4000
#: The ring header page.
RING_HEADER_SIZE = 4096
#: Ring header fields: write index, read index, interrupt mask, pending send size.
RING_INDICES = struct.Struct("<IIII")
#: ``vmbus_chanpkt_hdr``: type, hlen/8, tlen/8, flags, transaction id.
CHANPKT = struct.Struct("<HHHHQ")
#: In-band data packet type (VM_PKT_DATA_INBAND).
PKT_DATA_INBAND = 6
_FW_VERSIONS = [(3, 0)]
_SRV_VERSIONS = [(1, 1)]


class Ring:
    """One VMBus ring inside a mapping (``vmbus_bufring.c``).

    :param buf: the mapping.
    :param offset: where the ring's header starts.
    :param size: the ring's size, header included.
    """

    def __init__(self, buf: mmap.mmap, offset: int, size: int) -> None:
        if size <= RING_HEADER_SIZE or size % 8:
            raise ValueError(f"bad ring size {size}")
        self._buf = buf
        self._off = offset
        self._data = offset + RING_HEADER_SIZE
        #: bytes of data space
        self.dsize = size - RING_HEADER_SIZE

    @property
    def windex(self) -> int:
        """The write index."""
        return int(struct.unpack_from("<I", self._buf, self._off)[0])

    @property
    def rindex(self) -> int:
        """The read index."""
        return int(struct.unpack_from("<I", self._buf, self._off + 4)[0])

    def set_interrupt_mask(self, masked: bool) -> None:
        """Write the interrupt mask (0 = interrupt me)."""
        struct.pack_into("<I", self._buf, self._off + 8, int(masked))

    def avail_read(self) -> int:
        """Bytes written and not yet read."""
        w, r = self.windex, self.rindex
        return w - r if w >= r else self.dsize - r + w

    def _copy_from(self, index: int, n: int) -> bytes:
        start = self._data + index
        if n <= self.dsize - index:
            return bytes(self._buf[start : start + n])
        first = self.dsize - index
        return bytes(self._buf[start : start + first]) + bytes(
            self._buf[self._data : self._data + n - first])

    def _copy_to(self, index: int, data: bytes) -> int:
        start = self._data + index
        if len(data) <= self.dsize - index:
            self._buf[start : start + len(data)] = data
        else:
            first = self.dsize - index
            self._buf[start : start + first] = data[:first]
            self._buf[self._data : self._data + len(data) - first] = data[first:]
        return (index + len(data)) % self.dsize

    def recv_raw(self) -> bytes | None:
        """Take the next packet (descriptor included), or ``None`` if the ring is empty.

        :raise RemoteProtocolError: When the ring's indexes or the descriptor
            are impossible (the channel is dead).
        """
        w, r = self.windex, self.rindex
        if w >= self.dsize or r >= self.dsize or (w | r) % 8:
            # outside the data area or not on a packet boundary: no packet can be read
            raise RemoteProtocolError(f"bad VMBus ring indexes (write {w}, read {r}, "
                                      f"size {self.dsize})")
        avail = self.avail_read()
        if avail < CHANPKT.size + 8:
            return None
        _, hlen, tlen, _, _ = CHANPKT.unpack(self._copy_from(self.rindex, CHANPKT.size))
        if hlen < CHANPKT.size // 8 or hlen > tlen:
            raise RemoteProtocolError(f"bad VMBus packet descriptor (hlen {hlen}, tlen {tlen})")
        length = tlen * 8
        if length + 8 > self.dsize:
            raise RemoteProtocolError(f"VMBus packet of {length} bytes in a ring of {self.dsize}")
        if avail < length + 8:
            return None
        packet = self._copy_from(self.rindex, length)
        # skip the packet and its u64 start offset, then publish the read index
        new_rindex = (self.rindex + length + 8) % self.dsize
        struct.pack_into("<I", self._buf, self._off + 4, new_rindex)
        return packet

    def send(self, data: bytes, xactid: int, pkt_type: int = PKT_DATA_INBAND,
             flags: int = 0) -> None:
        """Append one packet: descriptor, ``data`` padded to 8, start offset.

        :raise OSError: EAGAIN when the ring has no room (the host is not reading).
        """
        hlen = CHANPKT.size
        padded = (hlen + len(data) + 7) & ~7
        packet = CHANPKT.pack(pkt_type, hlen // 8, padded // 8, flags, xactid) + data
        packet = packet.ljust(padded, b"\0")
        old = self.windex
        free = self.dsize - (old - self.rindex) if old >= self.rindex else self.rindex - old
        total = padded + 8
        if free <= total:
            raise OSError(11, "VMBus TX ring full")
        index = self._copy_to(old, packet)
        index = self._copy_to(index, struct.pack("<Q", old << 32))
        struct.pack_into("<I", self._buf, self._off, index)  # publish after the data


class UioChannel:
    """``/dev/uioN`` (or a socket standing in for it) and its two mapped rings.

    :param device: the uio device, or a Unix SOCK_SEQPACKET socket path.
    :param ring_size: the size of each ring.
    :param ring_file: map this file instead of the device (for the socket
        stand-in, which cannot be mapped).
    :raise ConnectError: When the device or ring file cannot be opened or mapped.
    """

    def __init__(self, device: str, ring_size: int = DEFAULT_RING_SIZE,
                 ring_file: str | None = None) -> None:
        self._sock: socket.socket | None = None
        self._fd = -1
        try:
            if stat.S_ISSOCK(os.stat(device).st_mode):
                self._sock = socket.socket(socket.AF_UNIX,
                                           socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
                self._sock.connect(device)
                self._fd = self._sock.fileno()
            else:
                self._fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
            map_fd = self._fd
            if ring_file is not None:
                map_fd = os.open(ring_file, os.O_RDWR | os.O_CLOEXEC)
            try:
                self._map = mmap.mmap(map_fd, 2 * ring_size, mmap.MAP_SHARED,
                                      mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                if ring_file is not None:
                    os.close(map_fd)
        except (OSError, ValueError) as err:
            self.close()
            raise ConnectError(f"cannot open the uio channel {device}: {err}",
                               err if isinstance(err, OSError) else None) from err
        #: guest -> host
        self.tx = Ring(self._map, 0, ring_size)
        #: host -> guest
        self.rx = Ring(self._map, ring_size, ring_size)
        self.rx.set_interrupt_mask(False)

    def fileno(self) -> int:
        """The descriptor that becomes readable on a host interrupt."""
        return self._fd

    def wait_interrupt(self) -> int:
        """Consume one interrupt (the device's 4-byte count).

        :raise ChannelClosed: When the stand-in socket closed.
        """
        data = self._sock.recv(4) if self._sock is not None else os.read(self._fd, 4)
        if len(data) != 4:
            raise ChannelClosed("the uio channel closed")
        return int(struct.unpack("<I", data)[0])

    def signal_host(self) -> None:
        """Unmask interrupts and signal the host (write 1)."""
        raw = struct.pack("<I", 1)
        if self._sock is not None:
            self._sock.send(raw)
        else:
            os.write(self._fd, raw)

    def close(self) -> None:
        """Unmap and close."""
        with contextlib.suppress(AttributeError, BufferError, ValueError):
            self._map.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        elif self._fd >= 0:
            os.close(self._fd)
        self._fd = -1


def find_uio_device(sys_root: Path = Path("/sys"),
                    dev_root: Path = Path("/dev")) -> tuple[str, int] | None:
    """The fcopy channel's ``/dev/uioN`` and ring size, or ``None`` if not bound.

    The ring size is half the size of ``channels/<relid>/ring`` when the
    kernel has that file, else :data:`DEFAULT_RING_SIZE`.
    """
    device_dir = sys_root / "bus/vmbus/devices" / FCOPY_INSTANCE_GUID
    try:
        names = sorted(p.name for p in (device_dir / "uio").iterdir() if p.is_dir())
    except OSError:
        return None
    if not names:
        return None
    ring_size = DEFAULT_RING_SIZE
    with contextlib.suppress(OSError):
        for channel in sorted((device_dir / "channels").iterdir()):
            size = (channel / "ring").stat().st_size
            if size:
                ring_size = size // 2
                break
    return str(dev_root / names[0]), ring_size


def _negotiate(packet: bytearray) -> bool:
    """``vmbus_prep_negotiate_resp`` on an IC packet (status set by the caller)."""
    if len(packet) < IC_HEADERS_SIZE + 4:
        return False
    fields = list(ICMSG_HDR.unpack_from(packet, VMBUSPIPE_HDR.size))
    fields[5] = 0x10
    ICMSG_HDR.pack_into(packet, VMBUSPIPE_HDR.size, *fields)
    fw_count, srv_count = struct.unpack_from("<HH", packet, IC_HEADERS_SIZE)
    chosen = None
    if fw_count <= 100 and srv_count <= 100 and \
            IC_HEADERS_SIZE + 8 + 4 * (fw_count + srv_count) <= len(packet):
        offered = [struct.unpack_from("<HH", packet, IC_HEADERS_SIZE + 8 + 4 * i)
                   for i in range(fw_count + srv_count)]
        fw = next((v for v in _FW_VERSIONS if v in offered[:fw_count]), None)
        srv = next((v for v in _SRV_VERSIONS if v in offered[fw_count:]), None)
        if fw and srv:
            chosen = (fw, srv)
    if chosen is None:
        struct.pack_into("<HH", packet, IC_HEADERS_SIZE, 0, 0)
        return False
    struct.pack_into("<HH", packet, IC_HEADERS_SIZE, 1, 1)
    if len(packet) >= IC_HEADERS_SIZE + 16:
        struct.pack_into("<HHHH", packet, IC_HEADERS_SIZE + 8, *chosen[0], *chosen[1])
    return True


class UioFcopyDaemon:
    """Serves the fcopy channel over uio until stopped.

    :param channel: the opened channel.
    :param handler: does the file work.
    :param stop: ends :meth:`run`.
    :param logger: where to log.
    """

    def __init__(self, channel: UioChannel, handler: FcopyHandler, stop: StopSignal,
                 logger: logging.Logger) -> None:
        self._chan = channel
        self._handler = handler
        self._stop = stop
        self._log = logger

    def run(self) -> int:
        """Serve until stopped: 0; 1 when the channel fails."""
        try:
            # packets may already wait (e.g. a negotiation sent before we started)
            self._drain()
            while True:
                if not self._stop.wait_readable(self._chan.fileno(), None):
                    return 0
                self._chan.wait_interrupt()
                self._drain()
        except (OSError, ChannelClosed, RemoteProtocolError) as err:
            self._log.error("uio fcopy channel failed: %s", err)
            return 1
        finally:
            self._handler.reset()
            self._chan.close()

    def _drain(self) -> None:
        served = False
        while (raw := self._chan.rx.recv_raw()) is not None:
            _, hlen, _, _, xactid = CHANPKT.unpack_from(raw)
            packet = bytearray(raw[hlen * 8 :])
            self._chan.tx.send(self.process(packet), xactid)
            served = True
        if served:
            self._chan.signal_host()

    def process(self, packet: bytearray) -> bytes:
        """Answer one IC packet (headers and payload) in place; return it.

        :raise RemoteProtocolError: When the packet is shorter than its headers.
        """
        if len(packet) < IC_HEADERS_SIZE:
            raise RemoteProtocolError(f"IC packet of {len(packet)} bytes")
        fields = list(ICMSG_HDR.unpack_from(packet, VMBUSPIPE_HDR.size))
        msgtype = fields[2]
        status: int = HResult.HV_E_FAIL
        if msgtype == IcMsgType.NEGOTIATE:
            if _negotiate(packet):
                status = HResult.HV_S_OK
                self._log.info("FCOPY: IC version 1.1 negotiated")
            fields = list(ICMSG_HDR.unpack_from(packet, VMBUSPIPE_HDR.size))
        elif msgtype == IcMsgType.FCOPY and len(packet) >= IC_HEADERS_SIZE + 36:
            status = self._fcopy(bytes(packet[IC_HEADERS_SIZE:]))
        fields[6] = status
        fields[8] = IcFlag.TRANSACTION | IcFlag.RESPONSE
        ICMSG_HDR.pack_into(packet, VMBUSPIPE_HDR.size, *fields)
        return bytes(packet)

    def _fcopy(self, payload: bytes) -> int:
        (op,) = struct.unpack_from("<I", payload)
        if op == 0:  # START_FILE_COPY: names arrive in UTF-16 here
            payload = payload.ljust(FCOPY_START_SIZE, b"\0")
            _, _, _, fname, pname, flags, size = FCOPY_START.unpack_from(payload)
            message = FCOPY_START.pack(
                op, b"", b"", utf16s_to_utf8s(fname, W_MAX_PATH, W_MAX_PATH - 1),
                utf16s_to_utf8s(pname, W_MAX_PATH, W_MAX_PATH - 1), flags, size)
        elif op == 1:
            message = payload.ljust(FCOPY_DO_SIZE, b"\0")
        else:
            message = payload
        try:
            (status,) = struct.unpack("<I", self._handler.handle(message))
        except RemoteProtocolError as err:
            self._log.error("FCOPY: malformed request: %s", err)
            return HResult.HV_E_FAIL
        return int(status)
