"""The KVP (Data Exchange) daemon: ``hv_kvp_daemon`` in Python.

Protocol (facts sections 3-4): the daemon registers by writing a 7432-byte
``hv_kvp_msg`` with operation REGISTER1; the kernel answers with the same
size, operation REGISTER1 and the driver version ("3.1").  Then each kernel
message is one host request, already converted to UTF-8, and the reply is
the same 7432 bytes with the first four overwritten by the ``error`` code:

=========== ====================================================================
SET         add or modify the key in pool N's file; too long -> HV_S_CONT
GET         look the key up; missing -> HV_S_CONT
DELETE      remove the key; missing -> HV_S_CONT
ENUMERATE   record ``index`` of pool N's file, or for pool AUTO the intrinsic
            key ``index`` (0..9); past the end -> HV_S_CONT
GET_IP_INFO / SET_IP_INFO  see :mod:`vmis.hyperv.ipconfig`
=========== ====================================================================

GET, as ``tools/hv/hv_kvp_daemon.c`` does it: the stored record's value
field (2048 bytes, NUL-padded) is copied, ``value_size`` bytes of it, into the
GET layout's value (``body.kvp_get.data.value``); a ``key_size`` over 512 or a
``value_size`` over 2048 is refused with HV_S_CONT.  The kernel, though, hands
the daemon ``value_size = 0`` for every GET and reads the reply's value
through the ENUMERATE layout (four bytes further on), so the C daemon's GET
always reaches a Hyper-V host as an empty string.  For that request, and only
for it, this daemon also writes the value where the kernel reads it, so a GET
returns the stored value; any other ``value_size`` is answered byte for byte
as the C daemon answers it.

A pool file error ends the C daemon; this one answers HV_E_FAIL and goes on.
"""

from __future__ import annotations

import logging
import struct

from vmis.errors import KvpFormatError, RemoteProtocolError
from vmis.hyperv.constants import HV_DRV_VERSION, HResult, KvpOp, RegType
from vmis.hyperv.ipconfig import IpConfig, IpInfo
from vmis.hyperv.messages import (
    KVP_ERROR,
    KVP_KEY_FIELD,
    KVP_MSG_SIZE,
    KVP_VALUE_FIELD,
    KVP_VALUE_KEY_OFFSET,
    KVP_VALUE_VALUE_OFFSET,
    IpAddrValue,
    cstring,
    kvp_message,
)
from vmis.services.kvp.intrinsic import INTRINSIC_KEYS, Intrinsics, OsInfo, read_os_info
from vmis.services.kvp.pool import KvpPools, Pool

__all__ = ["INTRINSIC_KEYS", "Intrinsics", "KvpHandler", "OsInfo", "read_os_info"]

#: Body offsets (from the start of the 7432-byte message).
_BODY = 4
_SET_VALUE = _BODY  # hv_kvp_msg_set / _get: hv_kvp_exchg_msg_value at body start
_ENUM_INDEX = _BODY
_ENUM_VALUE = _BODY + 4  # hv_kvp_msg_enumerate: u32 index, then msg_value
_DELETE = _BODY  # hv_kvp_msg_delete: u32 key_size, key[512]
_IP_VALUE = _BODY  # hv_kvp_ipaddr_value at body start


# Section: intrinsic (Auto pool) values
#
# INTRINSIC_KEYS, Intrinsics, OsInfo and read_os_info live in
# vmis.services.kvp.intrinsic, shared with the vmis KVP service; they are
# imported above and re-exported from here.


# Section: the handler


def _put_string(buf: bytearray, offset: int, field: int, text: bytes) -> int:
    """Write ``text`` + NUL into a ``field``-byte field, truncating; return its size."""
    text = text[: field - 1]
    buf[offset : offset + field] = (text + b"\0").ljust(field, b"\0")
    return len(text) + 1


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class KvpHandler:
    """Serves KVP requests from the kernel (a :class:`~vmis.hyperv.daemon.Handler`).

    :param pools: the pool files (directory ``--pool-dir``).
    :param intrinsics: the Auto pool.
    :param ipconfig: serves the IP operations; ``None`` answers them HV_E_FAIL.
    :param logger: where to log.
    """

    name = "kvp"
    max_message = KVP_MSG_SIZE

    def __init__(self, pools: KvpPools, intrinsics: Intrinsics, ipconfig: IpConfig | None,
                 logger: logging.Logger) -> None:
        self._pools = pools
        self._intrinsics = intrinsics
        self._ip = ipconfig
        self._log = logger
        #: the version string the kernel sent at registration
        self.kernel_version: str | None = None

    # Section: registration

    def registration(self) -> bytes:
        """A full ``hv_kvp_msg`` with operation REGISTER1 (the kernel rejects shorter)."""
        return kvp_message(KvpOp.REGISTER1, 0, b"")

    def registration_reply_size(self) -> int:
        """The kernel answers with a full ``hv_kvp_msg``."""
        return KVP_MSG_SIZE

    def registered(self, reply: bytes | None) -> None:
        """Keep the kernel's version string for IntegrationServicesVersion.

        :raise RemoteProtocolError: When the reply is not a REGISTER1 message.
        """
        if reply is None or len(reply) != KVP_MSG_SIZE or reply[0] != KvpOp.REGISTER1:
            got = "nothing" if reply is None else f"{len(reply)} bytes, op {reply[:1].hex()}"
            raise RemoteProtocolError(f"unexpected KVP registration reply ({got})")
        version = cstring(reply[_BODY : _BODY + 512]).decode("ascii", "replace")
        self.kernel_version = version or HV_DRV_VERSION
        self._intrinsics.version = self.kernel_version
        self._log.info("KVP: kernel driver version %s", self.kernel_version)

    def deadline(self) -> float | None:
        """KVP has no timers."""
        return None

    def on_deadline(self) -> None:
        """Never called."""

    def reset(self) -> None:
        """Nothing per transaction to drop."""

    # Section: requests

    def handle(self, message: bytes) -> bytes:
        """Serve one request; the reply is the message with ``error`` in front.

        :raise RemoteProtocolError: When the message is not 7432 bytes (the C
            daemon reopens the device then, and so does our runner).
        """
        if len(message) != KVP_MSG_SIZE:
            raise RemoteProtocolError(f"KVP message of {len(message)} bytes, "
                                      f"expected {KVP_MSG_SIZE}")
        buf = bytearray(message)
        op, pool = buf[0], buf[1]
        try:
            error = self._dispatch(buf, op, pool)
        except OSError as err:
            self._log.error("KVP pool %d: %s", pool, err)
            error = HResult.HV_E_FAIL
        KVP_ERROR.pack_into(buf, 0, error)
        return bytes(buf)

    def _dispatch(self, buf: bytearray, op: int, pool: int) -> int:
        if op == KvpOp.GET_IP_INFO:
            return self._get_ip_info(buf)
        if op == KvpOp.SET_IP_INFO:
            return self._set_ip_info(buf)
        if op not in (KvpOp.GET, KvpOp.SET, KvpOp.DELETE, KvpOp.ENUMERATE):
            self._log.warning("KVP: unknown operation %d", op)
            return HResult.HV_S_OK  # the C daemon answers what it does not know with OK
        if pool >= len(Pool):
            self._log.warning("KVP: operation %d on invalid pool %d", op, pool)
            return HResult.HV_E_FAIL
        if op == KvpOp.SET:
            return self._set(buf, pool)
        if op == KvpOp.GET:
            return self._get(buf, pool)
        if op == KvpOp.DELETE:
            return self._delete(buf, pool)
        return self._enumerate(buf, pool)

    def _set(self, buf: bytearray, pool: int) -> int:
        _, key_size, value_size = struct.unpack_from("<III", buf, _SET_VALUE)
        if key_size > KVP_KEY_FIELD or value_size > KVP_VALUE_FIELD:
            self._log.info("KVP: SET refused, key %d / value %d bytes", key_size, value_size)
            return HResult.HV_S_CONT
        start = _SET_VALUE + KVP_VALUE_KEY_OFFSET
        key = cstring(bytes(buf[start : start + key_size]))
        start = _SET_VALUE + KVP_VALUE_VALUE_OFFSET
        value = cstring(bytes(buf[start : start + value_size]))
        try:
            self._pools[pool].set(_text(key), _text(value))
        except KvpFormatError as err:
            self._log.info("KVP: SET refused: %s", err)
            return HResult.HV_S_CONT
        return HResult.HV_S_OK

    def _get(self, buf: bytearray, pool: int) -> int:
        _, key_size, value_size = struct.unpack_from("<III", buf, _SET_VALUE)
        if key_size > KVP_KEY_FIELD or value_size > KVP_VALUE_FIELD:
            return HResult.HV_S_CONT
        start = _SET_VALUE + KVP_VALUE_KEY_OFFSET
        key = cstring(bytes(buf[start : start + key_size]))
        value = self._pools[pool].get(_text(key))
        if value is None:
            return HResult.HV_S_CONT
        if value_size:
            field = _raw(value)[:KVP_VALUE_FIELD].ljust(KVP_VALUE_FIELD, b"\0")
            start = _SET_VALUE + KVP_VALUE_VALUE_OFFSET
            buf[start : start + value_size] = field[:value_size]
        else:
            # The kernel's GET: its reply is read through the ENUMERATE layout's
            # value, with strlen (it reads no size field for GET).
            _put_string(buf, _ENUM_VALUE + KVP_VALUE_VALUE_OFFSET, KVP_VALUE_FIELD, _raw(value))
        return HResult.HV_S_OK

    def _delete(self, buf: bytearray, pool: int) -> int:
        (key_size,) = struct.unpack_from("<I", buf, _DELETE)
        key = cstring(bytes(buf[_DELETE + 4 : _DELETE + 4 + min(key_size, KVP_KEY_FIELD)]))
        return HResult.HV_S_OK if self._pools[pool].delete(_text(key)) else HResult.HV_S_CONT

    def _enumerate(self, buf: bytearray, pool: int) -> int:
        (index,) = struct.unpack_from("<I", buf, _ENUM_INDEX)
        if pool == Pool.AUTO:
            item = self._intrinsics.item(index)
        else:
            item = self._pools[pool].enumerate(index)
        if item is None:
            return HResult.HV_S_CONT
        key, value = item
        key_size = _put_string(buf, _ENUM_VALUE + KVP_VALUE_KEY_OFFSET, KVP_KEY_FIELD, _raw(key))
        value_size = _put_string(buf, _ENUM_VALUE + KVP_VALUE_VALUE_OFFSET, KVP_VALUE_FIELD,
                                 _raw(value))
        struct.pack_into("<III", buf, _ENUM_VALUE, RegType.REG_SZ, key_size, value_size)
        return HResult.HV_S_OK

    # Section: IP injection

    def _get_ip_info(self, buf: bytearray) -> int:
        if self._ip is None:
            return HResult.HV_E_FAIL
        request = IpAddrValue.unpack(bytes(buf), _IP_VALUE)
        mac = _text(cstring(request.adapter_id))
        status, info = self._ip.get(mac)
        if info is None:
            return status
        reply = IpAddrValue(
            adapter_id=request.adapter_id,
            addr_family=info.addr_family,
            dhcp_enabled=int(info.dhcp_enabled),
            ip_addr=_raw(info.ip_addr)[:2047],
            sub_net=_raw(info.sub_net)[:2047],
            gate_way=_raw(info.gate_way)[:1023],
            dns_addr=_raw(info.dns_addr)[:2047],
        )
        packed = reply.pack()
        buf[_IP_VALUE : _IP_VALUE + len(packed)] = packed
        return status

    def _set_ip_info(self, buf: bytearray) -> int:
        if self._ip is None:
            return HResult.HV_E_FAIL
        request = IpAddrValue.unpack(bytes(buf), _IP_VALUE)
        info = IpInfo(
            adapter_id=_text(cstring(request.adapter_id)),
            addr_family=request.addr_family,
            dhcp_enabled=bool(request.dhcp_enabled),
            ip_addr=_text(cstring(request.ip_addr)),
            sub_net=_text(cstring(request.sub_net)),
            gate_way=_text(cstring(request.gate_way)),
            dns_addr=_text(cstring(request.dns_addr)),
        )
        status = self._ip.set(info)
        if status != HResult.HV_S_OK:
            self._log.warning("KVP: SET_IP_INFO for %s failed: 0x%08X", info.adapter_id, status)
        return status
