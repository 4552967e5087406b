"""A stand-in for the kernel's ``hv_utils`` side, for tests without Hyper-V.

:class:`KernelEmulator` listens on a Unix ``SOCK_SEQPACKET`` socket; a daemon
started with ``--device <that socket>`` connects to it as it would open
``/dev/vmbus/hv_kvp`` (one datagram = one kernel message).  The emulator then
plays the kernel, byte for byte (drivers/hv/hv_kvp.c, hv_snapshot.c,
hv_fcopy.c, hv_utils_transport.c):

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

The host's requests (``kvp_set``, ``vss_freeze``, ``copy_file`` ...) come from
:mod:`support.hv_emulator.host_requests` and return the status the host would
see; :meth:`KernelEmulator.host_request` takes and returns whole packets for
anything else, and :meth:`KernelEmulator.send_to_daemon` sends a raw
kernel->daemon message (for malformed-input tests the real kernel would never
produce).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
from enum import IntEnum
from pathlib import Path
from types import TracebackType
from typing import Literal

from support.hv_emulator.host_requests import (
    FcopyRequests,
    HostResponse,
    KvpRequests,
    VssRequests,
)
from support.hv_emulator.kernel_conversions import (
    fcopy_send,
    kvp_respond_to_host,
    kvp_send_key,
    prep_negotiate_resp,
)
from vmis.errors import RemoteProtocolError, StateError
from vmis.hyperv.constants import (
    FCOPY_CURRENT_VERSION,
    FCOPY_VERSION_0,
    FCOPY_VERSION_1,
    HV_DRV_VERSION,
    HV_UTIL_TIMEOUT,
    VSS_FREEZE_TIMEOUT,
    VSS_HBU_NO_AUTO_RECOVERY,
    HResult,
    IcFlag,
    IcMsgType,
    KvpOp,
    VssOp,
)
from vmis.hyperv.messages import (
    IC_HEADERS_SIZE,
    ICMSG_HDR,
    KVP_MSG_SIZE,
    VMBUSPIPE_HDR,
    VSS_MSG_SIZE,
    IcHeader,
    kvp_message,
)

__all__ = ["HvUtilState", "KernelEmulator", "ServiceName"]

ServiceName = Literal["kvp", "vss", "fcopy"]

_PAGE = 4096
#: Receive buffer per service: KVP 4 pages, VSS and FCOPY 2 (hv_util.c).
_RECV_BUFFER = {"kvp": 4 * _PAGE, "vss": 2 * _PAGE, "fcopy": 2 * _PAGE}
_MSGTYPE = {"kvp": IcMsgType.KVPEXCHANGE, "vss": IcMsgType.VSS, "fcopy": IcMsgType.FCOPY}
#: Guest version preferences for negotiation, highest first (major, minor).
_FW_VERSIONS = {"kvp": [(3, 0), (1, 0)], "vss": [(3, 0)], "fcopy": [(3, 0)]}
_SRV_VERSIONS = {"kvp": [(4, 0), (3, 0), (1, 0)], "vss": [(5, 0)], "fcopy": [(1, 1)]}
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


class KernelEmulator(KvpRequests, VssRequests, FcopyRequests):
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
                prep_negotiate_resp(buf, recv_len, _FW_VERSIONS[self.service],
                                    _SRV_VERSIONS[self.service])
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
        message = kvp_send_key(buf)
        reply = self._exchange(message, self.timeout)
        if reply is None:
            return self._respond(recv_len, HResult.HV_E_FAIL)  # timeout or daemon gone
        if self.daemon_registration == KvpOp.REGISTER:
            # legacy daemons signal errors with an empty key (enumerate layout)
            error = HResult.HV_S_CONT if reply[4 + 4 + 12] == 0 else 0
        else:
            (error,) = struct.unpack_from("<I", reply, 0)
        return self._kvp_respond(recv_len, buf[_P], reply, error)

    def _kvp_respond(self, recv_len: int, op: int, reply: bytes, error: int) -> HostResponse:
        """``kvp_respond_to_host``."""
        if error:
            return self._respond(recv_len, error)
        return self._respond(recv_len, kvp_respond_to_host(self._recv_buffer, op, reply))

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

    # Section: FCOPY driver (hv_fcopy.c)

    def _fcopy_request(self, recv_len: int) -> HostResponse:
        if self._state < HvUtilState.READY:
            return self._respond(recv_len, HResult.HV_E_FAIL)
        self._state = HvUtilState.HOSTMSG_RECEIVED
        reply = self._exchange(fcopy_send(self._recv_buffer, recv_len), self.timeout)
        if reply is None:
            return self._respond(recv_len, HResult.HV_E_FAIL)
        (status,) = struct.unpack("<I", reply)
        return self._respond(recv_len, status)
