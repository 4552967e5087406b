"""A stand-in for the kernel's ``hv_utils`` side, for tests without Hyper-V.

:class:`KernelEmulator` listens on a Unix ``SOCK_SEQPACKET`` socket; a daemon
started with ``--device <that socket>`` connects to it as it would open
``/dev/vmbus/hv_kvp`` (one datagram = one kernel message).  The emulator then
plays the kernel, byte for byte (drivers/hv/hv_kvp.c, hv_snapshot.c,
hv_fcopy.c, hv_utils_transport.c; facts sections 1-6):

* the per-service transaction state machine (DEVICE_INIT, READY,
  HOSTMSG_RECEIVED, USERSPACE_REQ, USERSPACE_RECV), a single opener (a second
  connection is closed at once, the device's EBUSY), and the reset when the
  daemon goes away (pending request answered HV_E_FAIL);
* the registration handshakes, and the checks on every daemon write (wrong
  size, reply with no request outstanding ...) -- a socket cannot carry a
  write errno, so refused writes are recorded in :attr:`rejected` with the
  errno the kernel would have returned;
* the host side: requests are built as the host sends them (a VMBus packet:
  28 header bytes then the payload, strings in UTF-16LE), converted exactly
  as the driver converts them (:mod:`vmis.hyperv.utf`, quirks included),
  and the daemon's reply is turned into the packet the host would receive;
* the daemon timeout (30 s; 900 s for a VSS freeze), answered HV_E_FAIL,
  and version negotiation (answered in the kernel, without the daemon).

Quick use::

    with KernelEmulator("kvp", tmp / "kvp.sock") as kernel:
        start the daemon with --device tmp/kvp.sock
        kernel.wait_registered(10)
        assert kernel.kvp_set(Pool.EXTERNAL, "key", "value") == HResult.HV_S_OK
        status, items = kernel.kvp_enumerate_all(Pool.GUEST)

Every host helper returns the status the host would see and decodes the
payload; :meth:`KernelEmulator.host_request` takes and returns whole packets
for anything else, and :meth:`KernelEmulator.send_to_daemon` sends a raw
kernel->daemon message (for malformed-input tests the real kernel would never
produce).
"""

from __future__ import annotations

import abc
import contextlib
import errno
import mmap
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from types import TracebackType
from typing import Literal

from vmis.errors import RemoteProtocolError, RequestTimeout, StateError
from vmis.hyperv.constants import (
    FCOPY_CURRENT_VERSION,
    FCOPY_VERSION_0,
    FCOPY_VERSION_1,
    HV_DRV_VERSION,
    HV_UTIL_TIMEOUT,
    VSS_FREEZE_TIMEOUT,
    VSS_HBU_NO_AUTO_RECOVERY,
    FcopyOp,
    HResult,
    IcFlag,
    IcMsgType,
    KvpOp,
    RegType,
    VssOp,
)
from vmis.hyperv.messages import (
    DATA_FRAGMENT,
    FCOPY_START,
    IC_HEADERS_SIZE,
    ICMSG_HDR,
    KVP_IPADDR_VALUE,
    KVP_MSG_SIZE,
    MAX_ADAPTER_ID_SIZE,
    MAX_GATEWAY_SIZE,
    MAX_IP_ADDR_SIZE,
    NEGOTIATE_HDR,
    VMBUSPIPE_HDR,
    VSS_MSG_SIZE,
    W_MAX_PATH,
    FcopyData,
    IcHeader,
    cstring,
    kvp_message,
)
from vmis.hyperv.utf import utf8s_to_utf16s, utf16s_to_utf8s

__all__ = [
    "HostIpInfo",
    "HostResponse",
    "HvUtilState",
    "KernelEmulator",
    "ServiceName",
    "UioHostEmulator",
]

ServiceName = Literal["kvp", "vss", "fcopy"]

_PAGE = 4096
#: Receive buffer per service: KVP 4 pages, VSS and FCOPY 2 (hv_util.c).
_RECV_BUFFER = {"kvp": 4 * _PAGE, "vss": 2 * _PAGE, "fcopy": 2 * _PAGE}
_MSGTYPE = {"kvp": IcMsgType.KVPEXCHANGE, "vss": IcMsgType.VSS, "fcopy": IcMsgType.FCOPY}
#: Guest version preferences for negotiation, highest first (major, minor).
_FW_VERSIONS = {"kvp": [(3, 0), (1, 0)], "vss": [(3, 0)], "fcopy": [(3, 0)]}
_SRV_VERSIONS = {"kvp": [(4, 0), (3, 0), (1, 0)], "vss": [(5, 0)], "fcopy": [(1, 1)]}
_MAX_VER_COUNT = 100
_RESPONSE = IcFlag.TRANSACTION | IcFlag.RESPONSE
_P = IC_HEADERS_SIZE  # payload offset in a packet


class HvUtilState(IntEnum):
    """``hvutil_device_state`` (drivers/hv/hyperv_vmbus.h)."""

    DEVICE_INIT = 0
    READY = 1
    HOSTMSG_RECEIVED = 2
    USERSPACE_REQ = 3
    USERSPACE_RECV = 4
    DEVICE_DYING = 5


@dataclass(frozen=True, slots=True)
class HostResponse:
    """The packet the host receives back."""

    header: IcHeader
    #: the whole packet (headers and payload)
    packet: bytes

    @property
    def status(self) -> int:
        """``icmsg_hdr.status``."""
        return self.header.status

    @property
    def payload(self) -> bytes:
        """The bytes after the 28 header bytes."""
        return self.packet[_P:]


@dataclass(frozen=True, slots=True)
class HostIpInfo:
    """The host's view of a GET_IP_INFO answer (decoded from UTF-16LE)."""

    adapter_id: str
    addr_family: int
    dhcp_enabled: int
    ip_addr: str
    sub_net: str
    gate_way: str
    dns_addr: str


def _utf16(text: str, units: int) -> bytes:
    """``text`` as a NUL-padded UTF-16LE field of ``units`` code units."""
    raw = text.encode("utf-16-le")[: 2 * units]
    return raw.ljust(2 * units, b"\0")


def _host_string(text: str, units: int) -> bytes:
    """``text`` as the host puts it in a ``units``-code-unit field: UTF-16LE,
    cut to fit with its NUL (the host never overruns a field)."""
    return text.encode("utf-16-le")[: 2 * (units - 1)] + b"\0\0"


def _from_utf16(field: bytes) -> str:
    for i in range(0, len(field) - 1, 2):
        if field[i : i + 2] == b"\0\0":
            field = field[:i]
            break
    return field.decode("utf-16-le", "replace")


class _FcopyHost(abc.ABC):
    """Host requests of the file-copy service, over any transport.

    The two emulators (chardev and uio) differ only in how a packet travels:
    each implements :meth:`packet` and :meth:`host_request`.
    """

    @abc.abstractmethod
    def packet(self, payload: bytes, msgtype: int | None = None,
               version: tuple[int, int] | None = None) -> bytes:
        """Frame ``payload`` as the host does."""

    @abc.abstractmethod
    def host_request(self, packet: bytes) -> HostResponse:
        """Deliver one host packet; return the answer."""

    def fcopy_start(self, file_name: str, path_name: str, flags: int = 0,
                    file_size: int = 0) -> int:
        """Host START_FILE_COPY: the status."""
        payload = FCOPY_START.pack(FcopyOp.START_FILE_COPY, b"", b"",
                                   _utf16(file_name, W_MAX_PATH), _utf16(path_name, W_MAX_PATH),
                                   flags, file_size)
        return self.host_request(self.packet(payload)).status

    def fcopy_write(self, offset: int, data: bytes) -> int:
        """Host WRITE_TO_FILE of at most 6 KiB: the status."""
        return self.host_request(self.packet(FcopyData(offset, data).pack())).status

    def fcopy_complete(self) -> int:
        """Host COMPLETE_FCOPY: the status."""
        return self.host_request(self.packet(struct.pack("<I32s", FcopyOp.COMPLETE_FCOPY,
                                                         b""))).status

    def fcopy_cancel(self) -> int:
        """Host CANCEL_FCOPY: the status."""
        return self.host_request(self.packet(struct.pack("<I32s", FcopyOp.CANCEL_FCOPY,
                                                         b""))).status

    def copy_file(self, data: bytes, file_name: str, path_name: str, flags: int = 0) -> int:
        """A whole ``Copy-VMFile``: START, WRITE per 6 KiB, COMPLETE.

        :return: the first non-OK status, or HV_S_OK.
        """
        status = self.fcopy_start(file_name, path_name, flags, len(data))
        if status != HResult.HV_S_OK:
            return status
        for offset in range(0, len(data), DATA_FRAGMENT):
            status = self.fcopy_write(offset, data[offset : offset + DATA_FRAGMENT])
            if status != HResult.HV_S_OK:
                self.fcopy_cancel()
                return status
        return self.fcopy_complete()

    def negotiate(self, framework: list[tuple[int, int]],
                  service: list[tuple[int, int]]) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """Host version negotiation: the versions chosen, or ``None`` if none fit."""
        payload = NEGOTIATE_HDR.pack(len(framework), len(service), 0) + b"".join(
            struct.pack("<HH", *v) for v in framework + service
        )
        r = self.host_request(self.packet(payload, msgtype=IcMsgType.NEGOTIATE))
        fw_count, srv_count = struct.unpack_from("<HH", r.payload)
        if (fw_count, srv_count) != (1, 1):
            return None
        a, b, c, d = struct.unpack_from("<HHHH", r.payload, 8)
        return (a, b), (c, d)


class KernelEmulator(_FcopyHost):
    """Plays ``hv_utils`` for one service on a SOCK_SEQPACKET socket.

    :param service: ``"kvp"``, ``"vss"`` or ``"fcopy"``.
    :param path: where to listen.
    :param timeout: seconds to wait for the daemon (the kernel's 30).
    :param freeze_timeout: seconds to wait for a VSS FREEZE (the kernel's 900).
    """

    def __init__(self, service: ServiceName, path: str | os.PathLike[str], *,
                 timeout: float = HV_UTIL_TIMEOUT,
                 freeze_timeout: float = VSS_FREEZE_TIMEOUT) -> None:
        if service not in _RECV_BUFFER:
            raise ValueError(f"unknown service {service!r}")
        #: which driver this plays
        self.service: ServiceName = service
        #: the socket path
        self.path = Path(path)
        self.timeout = timeout
        self.freeze_timeout = freeze_timeout
        #: daemon writes the kernel would refuse: (message, errno)
        self.rejected: list[tuple[bytes, int]] = []
        #: connections refused because a daemon was already attached (EBUSY)
        self.busy_refusals = 0
        #: what the daemon registered with (KVP op, VSS op, FCOPY version)
        self.daemon_registration: int | None = None
        #: every connection accepted so far
        self.connections = 0
        self._cond = threading.Condition()
        self._state = HvUtilState.DEVICE_INIT
        self._conn: socket.socket | None = None
        self._reply: bytes | None = None
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._recv_buffer = bytearray(_RECV_BUFFER[service])
        self._request_id = 0

    # Section: lifecycle

    def start(self) -> KernelEmulator:
        """Listen and accept daemons in the background."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener.bind(str(self.path))
        listener.listen(4)
        self._listener = listener
        t = threading.Thread(target=self._accept_loop, name=f"hv-{self.service}-accept",
                             daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def close(self) -> None:
        """Stop listening and drop the daemon's connection."""
        with self._cond:
            self._closing = True
            conn, self._conn = self._conn, None
            self._state = HvUtilState.DEVICE_DYING
            self._cond.notify_all()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for t in self._threads:
            t.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def disconnect(self) -> None:
        """Drop the daemon's connection but keep listening, as a transport
        reset (e.g. after hibernation) does: the daemon should reopen."""
        with self._cond:
            conn = self._conn
            if conn is not None:
                self._release(conn)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> KernelEmulator:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def state(self) -> HvUtilState:
        """The driver's transaction state."""
        with self._cond:
            return self._state

    def wait_registered(self, timeout: float) -> bool:
        """Wait until a daemon has registered (state READY or beyond)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: HvUtilState.READY <= self._state < HvUtilState.DEVICE_DYING, timeout
            )

    def wait_unregistered(self, timeout: float) -> bool:
        """Wait until no daemon is attached (state DEVICE_INIT)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._conn is None, timeout)

    # Section: the device side

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._cond:
                if self._closing:
                    conn.close()
                    return
                if self._conn is not None:
                    # hvt_op_open: a second opener gets EBUSY
                    self.busy_refusals += 1
                    conn.close()
                    continue
                self._conn = conn
                self.connections += 1
                self._state = HvUtilState.DEVICE_INIT
                self._cond.notify_all()
            t = threading.Thread(target=self._read_loop, args=(conn,),
                                 name=f"hv-{self.service}-read", daemon=True)
            t.start()
            self._threads.append(t)

    def _read_loop(self, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            with self._cond:
                if self._conn is not conn:
                    break
                code = self._on_msg(data)
                if code:
                    self.rejected.append((data, code))
                self._cond.notify_all()
        with self._cond:
            if self._conn is conn:
                self._release(conn)
        with contextlib.suppress(OSError):
            conn.close()

    def _release(self, conn: socket.socket) -> None:
        """hvt_op_release (lock held): the service resets; a pending request fails."""
        del conn
        self._conn = None
        if self._state != HvUtilState.DEVICE_DYING:
            self._state = HvUtilState.DEVICE_INIT
        self._cond.notify_all()

    def _to_daemon(self, message: bytes) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            conn.send(message)
        except OSError:
            return False
        return True

    def _on_msg(self, data: bytes) -> int:
        """The driver's on_msg; returns the write errno (0 = accepted)."""
        if self.service == "kvp":
            return self._kvp_on_msg(data)
        if self.service == "vss":
            return self._vss_on_msg(data)
        return self._fcopy_on_msg(data)

    def _deliver(self, data: bytes) -> None:
        self._state = HvUtilState.USERSPACE_RECV
        self._reply = data

    def _kvp_on_msg(self, data: bytes) -> int:
        if len(data) < KVP_MSG_SIZE:
            return errno.EINVAL
        if self._state < HvUtilState.READY:
            op = data[0]
            if op not in (KvpOp.REGISTER, KvpOp.REGISTER1):
                return errno.EINVAL  # "incompatible daemon"
            self.daemon_registration = op
            reply = kvp_message(op, 0, HV_DRV_VERSION.encode("ascii"))
            if not self._to_daemon(reply):
                return errno.EFAULT
            self._state = HvUtilState.READY
            return 0
        if self._state < HvUtilState.USERSPACE_REQ:
            return errno.EINVAL  # a reply with nothing asked
        self._deliver(data)
        return 0

    def _vss_on_msg(self, data: bytes) -> int:
        if len(data) != VSS_MSG_SIZE:
            return errno.EINVAL
        op = data[0]
        if op in (VssOp.REGISTER, VssOp.REGISTER1):
            if self._state > HvUtilState.READY:
                return errno.EINVAL  # not in the middle of a transaction
            if op == VssOp.REGISTER1 and not self._to_daemon(struct.pack("<I", VssOp.REGISTER1)):
                return errno.EFAULT
            self.daemon_registration = op
            self._state = HvUtilState.READY
            return 0
        if self._state == HvUtilState.USERSPACE_REQ:
            self._deliver(data)
            return 0
        return errno.EINVAL

    def _fcopy_on_msg(self, data: bytes) -> int:
        if len(data) != 4:
            return errno.EINVAL
        (value,) = struct.unpack("<i", data)
        if self._state == HvUtilState.DEVICE_INIT:
            if value == FCOPY_VERSION_0:
                pass  # no reply expected
            elif value == FCOPY_VERSION_1:
                if not self._to_daemon(struct.pack("<I", FCOPY_CURRENT_VERSION)):
                    return errno.EFAULT
            else:
                return errno.EINVAL
            self.daemon_registration = value
            self._state = HvUtilState.READY
            return 0
        if self._state != HvUtilState.USERSPACE_REQ:
            return errno.EINVAL
        self._deliver(data)
        return 0

    # Section: the host side, generic

    def packet(self, payload: bytes, msgtype: int | None = None,
               version: tuple[int, int] | None = None) -> bytes:
        """Frame ``payload`` as the host does: pipe header, icmsg header, payload."""
        header = IcHeader(
            msgtype=_MSGTYPE[self.service] if msgtype is None else msgtype,
            framework=(3, 0),
            version=version or _SRV_VERSIONS[self.service][0],
            msgsize=len(payload),
            flags=IcFlag.TRANSACTION | IcFlag.REQUEST,
            pipe_flags=1,
            pipe_msgsize=len(payload) + ICMSG_HDR.size,
        )
        return header.pack() + payload

    def host_request(self, packet: bytes) -> HostResponse:
        """Deliver one host packet to the driver and return the host's answer.

        :raise StateError: When a request is already in progress (the host
            sends one at a time; tests must too).
        :raise RemoteProtocolError: When the packet is shorter than its headers.
        """
        header = IcHeader.unpack(packet)
        with self._cond:
            if self._state > HvUtilState.READY and self._state != HvUtilState.DEVICE_DYING:
                raise StateError("a host request is already in progress")
            buf = self._recv_buffer
            if len(packet) > len(buf):
                raise RemoteProtocolError(f"packet of {len(packet)} bytes exceeds the "
                                          f"{len(buf)}-byte receive buffer")
            buf[: len(packet)] = packet
            recv_len = len(packet)
            self._request_id += 1
            if header.msgtype == IcMsgType.NEGOTIATE:
                self._negotiate(recv_len)
                return self._respond(recv_len, None)
            if self.service == "kvp":
                return self._kvp_request(recv_len)
            if self.service == "vss":
                return self._vss_request(recv_len)
            return self._fcopy_request(recv_len)

    def _respond(self, recv_len: int, status: int | None) -> HostResponse:
        buf = self._recv_buffer
        off = VMBUSPIPE_HDR.size
        fields = list(ICMSG_HDR.unpack_from(buf, off))
        if status is not None:
            fields[6] = status & 0xFFFFFFFF
        fields[8] = _RESPONSE
        ICMSG_HDR.pack_into(buf, off, *fields)
        packet = bytes(buf[:recv_len])
        return HostResponse(IcHeader.unpack(packet), packet)

    def _exchange(self, message: bytes, timeout: float) -> bytes | None:
        """Send to the daemon and wait for its accepted reply (lock held)."""
        self._state = HvUtilState.USERSPACE_REQ
        self._reply = None
        if not self._to_daemon(message):
            self._state = HvUtilState.READY if self._conn is not None else self._state
            return None
        self._cond.wait_for(
            lambda: self._reply is not None or self._conn is None or self._closing, timeout
        )
        reply, self._reply = self._reply, None
        if self._conn is not None and not self._closing:
            # answered or timed out: the transaction is over (poll wrapper)
            self._state = HvUtilState.READY
        return reply

    def _negotiate(self, recv_len: int) -> None:
        """``vmbus_prep_negotiate_resp``: answered by the kernel itself."""
        buf = self._recv_buffer
        off = VMBUSPIPE_HDR.size
        fields = list(ICMSG_HDR.unpack_from(buf, off))
        fields[5] = 0x10  # icmsgsize
        ICMSG_HDR.pack_into(buf, off, *fields)
        fw_chosen = srv_chosen = None
        if recv_len >= _P + 4:
            fw_count, srv_count = struct.unpack_from("<HH", buf, _P)
            total = _P + NEGOTIATE_HDR.size + 4 * (fw_count + srv_count)
            if fw_count <= _MAX_VER_COUNT and srv_count <= _MAX_VER_COUNT and total <= recv_len:
                offered = [struct.unpack_from("<HH", buf, _P + 8 + 4 * i)
                           for i in range(fw_count + srv_count)]
                host_fw, host_srv = offered[:fw_count], offered[fw_count:]
                fw_chosen = next((v for v in _FW_VERSIONS[self.service] if v in host_fw), None)
                srv_chosen = next((v for v in _SRV_VERSIONS[self.service] if v in host_srv), None)
        if fw_chosen and srv_chosen:
            struct.pack_into("<HH", buf, _P, 1, 1)
            struct.pack_into("<HHHH", buf, _P + 8, *fw_chosen, *srv_chosen)
        elif recv_len >= _P + 4:
            struct.pack_into("<HH", buf, _P, 0, 0)

    def send_to_daemon(self, message: bytes, timeout: float | None = None) -> bytes | None:
        """Send a raw kernel->daemon message and return the daemon's accepted
        reply (``None`` on timeout or disconnect).  Bypasses the host
        conversions: for inputs the real kernel would never produce.

        :raise StateError: When no daemon is registered or a request is in progress.
        """
        with self._cond:
            if self._state != HvUtilState.READY:
                raise StateError(f"the driver is in state {self._state.name}, not READY")
            return self._exchange(message, self.timeout if timeout is None else timeout)

    # Section: KVP driver (hv_kvp.c)

    def _kvp_request(self, recv_len: int) -> HostResponse:
        if self._state < HvUtilState.READY:
            return self._respond(recv_len, HResult.HV_E_FAIL)  # userspace not registered
        buf = bytes(self._recv_buffer[:recv_len])
        self._state = HvUtilState.HOSTMSG_RECEIVED
        message = self._kvp_send_key(buf)
        reply = self._exchange(message, self.timeout)
        if reply is None:
            return self._respond(recv_len, HResult.HV_E_FAIL)  # timeout or daemon gone
        if self.daemon_registration == KvpOp.REGISTER:
            # legacy daemons signal errors with an empty key (enumerate layout)
            error = HResult.HV_S_CONT if reply[4 + 4 + 12] == 0 else 0
        else:
            (error,) = struct.unpack_from("<I", reply, 0)
        return self._kvp_respond(recv_len, buf[_P], reply, error)

    @staticmethod
    def _kvp_send_key(host: bytes) -> bytes:
        """Build the daemon message from the host's (``kvp_send_key``)."""
        op, pool = host[_P], host[_P + 1]
        msg = bytearray(kvp_message(op, pool))
        body, hbody = 4, _P + 4
        if op in (KvpOp.SET_IP_INFO, KvpOp.GET_IP_INFO):
            hip = _P + 2  # hv_kvp_ip_msg: u8 operation, u8 pool, then the value
            if op == KvpOp.SET_IP_INFO:
                for name, field_off, units in (
                    ("ip_addr", 258, MAX_IP_ADDR_SIZE), ("sub_net", 2306, MAX_IP_ADDR_SIZE),
                    ("gate_way", 4354, MAX_GATEWAY_SIZE), ("dns_addr", 5378, MAX_IP_ADDR_SIZE),
                ):
                    del name
                    out = utf16s_to_utf8s(host[hip + field_off :], units, units)
                    msg[body + field_off : body + field_off + len(out)] = out
                msg[body + 257] = host[hip + 257]  # dhcp_enabled
            out = utf16s_to_utf8s(host[hip:], MAX_ADAPTER_ID_SIZE, MAX_ADAPTER_ID_SIZE)
            msg[body : body + len(out)] = out
            msg[body + 256] = host[hip + 256]  # addr_family
        elif op == KvpOp.SET:
            vtype, ksize, vsize = struct.unpack_from("<III", host, hbody)
            value_off = hbody + 524
            if vtype == RegType.REG_SZ:
                value = utf16s_to_utf8s(host[value_off:], vsize, 2048 - 1)
                struct.pack_into("<I", msg, body + 8, len(value) + 1)
            elif vtype == RegType.REG_U32:
                value = str(struct.unpack_from("<I", host, value_off)[0]).encode()
                struct.pack_into("<I", msg, body + 8, len(value) + 1)
            elif vtype == RegType.REG_U64:
                value = str(struct.unpack_from("<Q", host, value_off)[0]).encode()
                struct.pack_into("<I", msg, body + 8, len(value) + 1)
            else:
                value = b""  # unknown type: nothing converted, value_size stays 0
            msg[body + 524 : body + 524 + len(value)] = value
            key = utf16s_to_utf8s(host[hbody + 12 :], ksize, 512 - 1)
            msg[body + 12 : body + 12 + len(key)] = key
            struct.pack_into("<I", msg, body + 4, len(key) + 1)
        elif op == KvpOp.GET:
            (ksize,) = struct.unpack_from("<I", host, hbody + 4)
            key = utf16s_to_utf8s(host[hbody + 12 :], ksize, 512 - 1)
            msg[body + 12 : body + 12 + len(key)] = key
            struct.pack_into("<I", msg, body + 4, len(key) + 1)
        elif op == KvpOp.DELETE:
            (ksize,) = struct.unpack_from("<I", host, hbody)
            key = utf16s_to_utf8s(host[hbody + 4 :], ksize, 512 - 1)
            msg[body + 4 : body + 4 + len(key)] = key
            struct.pack_into("<I", msg, body, len(key) + 1)
        elif op == KvpOp.ENUMERATE:
            msg[body : body + 4] = host[hbody : hbody + 4]
        return bytes(msg)

    def _kvp_respond(self, recv_len: int, op: int, reply: bytes, error: int) -> HostResponse:
        """``kvp_respond_to_host``."""
        if error:
            return self._respond(recv_len, error)
        buf = self._recv_buffer
        status = 0
        if op == KvpOp.GET_IP_INFO:
            if not self._process_ob_ipinfo(reply):
                status = HResult.HV_E_FAIL
            return self._respond(recv_len, status)
        if op in (KvpOp.SET_IP_INFO, KvpOp.SET, KvpOp.DELETE):
            return self._respond(recv_len, status)
        keylen = 0
        key_failed = False
        if op == KvpOp.GET:
            data = _P + 4  # kvp_get.data in the host buffer
        else:
            data = _P + 4 + 4  # kvp_enum_data.data
            key = cstring(reply[4 + 4 + 12 :])  # strlen from the daemon's enum key
            out, key_failed = utf8s_to_utf16s(key, len(key), 512 // 2 - 2)
            buf[data + 12 : data + 12 + len(out)] = out
            keylen = -errno.EINVAL if key_failed else len(out) // 2
            struct.pack_into("<I", buf, data + 4, (2 * (keylen + 1)) & 0xFFFFFFFF)
        # the value is always read through the enumerate layout, GET included
        value = cstring(reply[4 + 4 + 524 :])
        out, value_failed = utf8s_to_utf16s(value, len(value), 2048 // 2 - 2)
        buf[data + 524 : data + 524 + len(out)] = out
        valuelen = -errno.EINVAL if value_failed else len(out) // 2
        struct.pack_into("<I", buf, data + 8, (2 * (valuelen + 1)) & 0xFFFFFFFF)
        if key_failed or value_failed:
            status = HResult.HV_E_FAIL
        struct.pack_into("<I", buf, data, RegType.REG_SZ)
        return self._respond(recv_len, status)

    def _process_ob_ipinfo(self, reply: bytes) -> bool:
        buf = self._recv_buffer
        hip = _P + 2
        for field_off, units in ((258, MAX_IP_ADDR_SIZE), (2306, MAX_IP_ADDR_SIZE),
                                 (4354, MAX_GATEWAY_SIZE), (5378, MAX_IP_ADDR_SIZE),
                                 (0, MAX_ADAPTER_ID_SIZE)):
            text = cstring(reply[4 + field_off :])
            out, failed = utf8s_to_utf16s(text, len(text), units)
            buf[hip + field_off : hip + field_off + len(out)] = out
            if failed:
                return False
        buf[hip + 257] = reply[4 + 257]  # dhcp_enabled
        return True

    # Section: KVP host helpers

    def _kvp_packet(self, op: int, pool: int, body: bytes) -> bytes:
        return self.packet(kvp_message(op, pool, body))

    def kvp_set(self, pool: int, key: str, value: str | int,
                value_type: int | None = None) -> int:
        """Host SET; ``value`` as REG_SZ, or an int as REG_U32 / REG_U64.

        :return: the status the host sees.
        """
        if value_type is None:
            value_type = RegType.REG_SZ if isinstance(value, str) else RegType.REG_U32
        k = _host_string(key, 256)
        if value_type == RegType.REG_SZ:
            v = _host_string(str(value), 1024)
        elif value_type == RegType.REG_U32:
            v = struct.pack("<I", int(value))
        else:
            v = struct.pack("<Q", int(value))
        body = struct.pack("<III", value_type, len(k), len(v)) + k.ljust(512, b"\0") + v
        return self.host_request(self._kvp_packet(KvpOp.SET, pool, body)).status

    def kvp_get(self, pool: int, key: str) -> tuple[int, str]:
        """Host GET: status and the value (UTF-16 decoded)."""
        k = _host_string(key, 256)
        body = struct.pack("<III", RegType.REG_SZ, len(k), 0) + k
        r = self.host_request(self._kvp_packet(KvpOp.GET, pool, body))
        return r.status, _from_utf16(r.payload[4 + 524 : 4 + 524 + 2048])

    def kvp_delete(self, pool: int, key: str) -> int:
        """Host DELETE: the status."""
        k = _host_string(key, 256)
        body = struct.pack("<I", len(k)) + k
        return self.host_request(self._kvp_packet(KvpOp.DELETE, pool, body)).status

    def kvp_enumerate(self, pool: int, index: int) -> tuple[int, tuple[str, str] | None]:
        """Host ENUMERATE of one index: status and ``(key, value)`` on success."""
        r = self.host_request(self._kvp_packet(KvpOp.ENUMERATE, pool, struct.pack("<I", index)))
        if r.status != HResult.HV_S_OK:
            return r.status, None
        data = r.payload[8:]
        return r.status, (_from_utf16(data[12:524]), _from_utf16(data[524:2572]))

    def kvp_enumerate_all(self, pool: int) -> tuple[int, list[tuple[str, str]]]:
        """Enumerate as the host does: 0, 1, 2 ... until the first error.

        :return: the terminating status (HV_S_CONT normally) and the items.
        """
        items: list[tuple[str, str]] = []
        while True:
            status, item = self.kvp_enumerate(pool, len(items))
            if item is None:
                return status, items
            items.append(item)

    def kvp_get_ip_info(self, mac: str) -> tuple[int, HostIpInfo | None]:
        """Host GET_IP_INFO for the NIC with MAC ``mac``."""
        value = struct.pack("<256sBB", _utf16(mac, MAX_ADAPTER_ID_SIZE), 0, 0)
        payload = struct.pack("<BB", KvpOp.GET_IP_INFO, 0) + value.ljust(KVP_IPADDR_VALUE.size,
                                                                          b"\0")
        r = self.host_request(self.packet(payload))
        if r.status != HResult.HV_S_OK:
            return r.status, None
        v = r.payload[2:]
        return r.status, HostIpInfo(
            adapter_id=_from_utf16(v[0:256]), addr_family=v[256], dhcp_enabled=v[257],
            ip_addr=_from_utf16(v[258:2306]), sub_net=_from_utf16(v[2306:4354]),
            gate_way=_from_utf16(v[4354:5378]), dns_addr=_from_utf16(v[5378:7426]),
        )

    def kvp_set_ip_info(self, adapter_guid: str, *, dhcp: bool = False, ip_addr: str = "",
                        sub_net: str = "", gate_way: str = "", dns_addr: str = "",
                        addr_family: int = 0) -> int:
        """Host SET_IP_INFO for the NIC with VMBus GUID ``adapter_guid``."""
        value = KVP_IPADDR_VALUE.pack(
            _utf16(adapter_guid, MAX_ADAPTER_ID_SIZE), addr_family, int(dhcp),
            _utf16(ip_addr, MAX_IP_ADDR_SIZE), _utf16(sub_net, MAX_IP_ADDR_SIZE),
            _utf16(gate_way, MAX_GATEWAY_SIZE), _utf16(dns_addr, MAX_IP_ADDR_SIZE),
        )
        payload = struct.pack("<BB", KvpOp.SET_IP_INFO, 0) + value
        return self.host_request(self.packet(payload)).status

    # Section: VSS driver (hv_snapshot.c)

    def _vss_request(self, recv_len: int) -> HostResponse:
        buf = self._recv_buffer
        op = buf[_P]
        if op in (VssOp.FREEZE, VssOp.THAW, VssOp.HOT_BACKUP):
            if self._state < HvUtilState.READY:
                return self._respond(recv_len, HResult.HV_E_FAIL)
            self._state = HvUtilState.HOSTMSG_RECEIVED
            message = struct.pack("<B7sI", op, b"", 0)
            timeout = self.freeze_timeout if op == VssOp.FREEZE else self.timeout
            reply = self._exchange(message, timeout)
            if reply is None:
                return self._respond(recv_len, HResult.HV_E_FAIL)
            # The driver tests the *reply's* operation byte, which the daemon
            # has overwritten with its error code: with HV_S_OK it reads 0,
            # so in practice the flag is not set.  Reproduced as is.
            if reply[0] == VssOp.HOT_BACKUP:
                struct.pack_into("<I", buf, _P + 8, VSS_HBU_NO_AUTO_RECOVERY)
            (error,) = struct.unpack_from("<I", reply, 0)
            return self._respond(recv_len, error)
        if op == VssOp.GET_DM_INFO:
            struct.pack_into("<I", buf, _P + 8, 0)
        return self._respond(recv_len, 0)

    def _vss(self, op: int) -> HostResponse:
        return self.host_request(self.packet(struct.pack("<B7sI", op, b"", 0)))

    def vss_freeze(self) -> int:
        """Host FREEZE: the status."""
        return self._vss(VssOp.FREEZE).status

    def vss_thaw(self) -> int:
        """Host THAW: the status."""
        return self._vss(VssOp.THAW).status

    def vss_hot_backup(self) -> tuple[int, int]:
        """Host HOT_BACKUP: the status and ``vss_cf.flags``."""
        r = self._vss(VssOp.HOT_BACKUP)
        return r.status, struct.unpack_from("<I", r.payload, 8)[0]

    def vss_get_dm_info(self) -> tuple[int, int]:
        """Host GET_DM_INFO (answered by the kernel): status and flags."""
        r = self._vss(VssOp.GET_DM_INFO)
        return r.status, struct.unpack_from("<I", r.payload, 8)[0]

    # Section: FCOPY driver (hv_fcopy.c)

    def _fcopy_request(self, recv_len: int) -> HostResponse:
        if self._state < HvUtilState.READY:
            return self._respond(recv_len, HResult.HV_E_FAIL)
        buf = self._recv_buffer
        (op,) = struct.unpack_from("<I", buf, _P)
        self._state = HvUtilState.HOSTMSG_RECEIVED
        if op == FcopyOp.START_FILE_COPY:
            fname = utf16s_to_utf8s(bytes(buf[_P + 36 : _P + 556]), W_MAX_PATH, W_MAX_PATH - 1)
            pname = utf16s_to_utf8s(bytes(buf[_P + 556 : _P + 1076]), W_MAX_PATH, W_MAX_PATH - 1)
            flags, size = struct.unpack_from("<IQ", buf, _P + 1076)
            message = FCOPY_START.pack(op, b"", b"", fname, pname, flags, size)
        elif op == FcopyOp.WRITE_TO_FILE:
            message = bytes(buf[_P : _P + 6196])
        else:
            # the driver sends recv_len bytes from the payload on: 28 bytes
            # more than the payload, whatever the receive buffer holds there
            message = bytes(buf[_P : _P + recv_len])
        reply = self._exchange(message, self.timeout)
        if reply is None:
            return self._respond(recv_len, HResult.HV_E_FAIL)
        (status,) = struct.unpack("<I", reply)
        return self._respond(recv_len, status)


# Section: the uio file-copy channel (newer kernels)

_UIO_DESC = struct.Struct("<HHHHQ")
_RING_HEADER = 4096


class UioHostEmulator(_FcopyHost):
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
