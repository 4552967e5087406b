"""What ``hv_utils`` does to a message between the host and the daemon.

The host speaks UTF-16LE in fixed fields, the daemons UTF-8; the drivers
convert in both directions with their own converters (:mod:`vmis.hyperv.utf`),
quirks included, and answer version negotiation themselves. These functions
are those steps as the driver source has them (drivers/hv/hv_kvp.c,
hv_fcopy.c, channel_mgmt.c), on the driver's receive buffer: the packet as
the host sent it, which the driver turns into the host's answer in place.
"""

from __future__ import annotations

import errno
import struct

from vmis.hyperv.constants import FcopyOp, HResult, KvpOp, RegType
from vmis.hyperv.messages import (
    FCOPY_START,
    IC_HEADERS_SIZE,
    ICMSG_HDR,
    MAX_ADAPTER_ID_SIZE,
    MAX_GATEWAY_SIZE,
    MAX_IP_ADDR_SIZE,
    NEGOTIATE_HDR,
    VMBUSPIPE_HDR,
    W_MAX_PATH,
    cstring,
    kvp_message,
)
from vmis.hyperv.utf import utf8s_to_utf16s, utf16s_to_utf8s

__all__ = ["fcopy_send", "kvp_respond_to_host", "kvp_send_key", "prep_negotiate_resp"]

_MAX_VER_COUNT = 100
_P = IC_HEADERS_SIZE  # payload offset in a packet

Version = tuple[int, int]


def prep_negotiate_resp(buf: bytearray, recv_len: int, framework: list[Version],
                        service: list[Version]) -> None:
    """``vmbus_prep_negotiate_resp``: answered by the kernel itself.

    :param framework: the guest's framework versions, highest first.
    :param service: the guest's service versions, highest first.
    """
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
            fw_chosen = next((v for v in framework if v in host_fw), None)
            srv_chosen = next((v for v in service if v in host_srv), None)
    if fw_chosen and srv_chosen:
        struct.pack_into("<HH", buf, _P, 1, 1)
        struct.pack_into("<HHHH", buf, _P + 8, *fw_chosen, *srv_chosen)
    elif recv_len >= _P + 4:
        struct.pack_into("<HH", buf, _P, 0, 0)


# Section: KVP (hv_kvp.c)


def kvp_send_key(host: bytes) -> bytes:
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


def kvp_respond_to_host(buf: bytearray, op: int, reply: bytes) -> int:
    """``kvp_respond_to_host`` for a reply without error: the answer into *buf*.

    :return: the status the host gets.
    """
    status = 0
    if op == KvpOp.GET_IP_INFO:
        if not _process_ob_ipinfo(buf, reply):
            status = HResult.HV_E_FAIL
        return status
    if op in (KvpOp.SET_IP_INFO, KvpOp.SET, KvpOp.DELETE):
        return status
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
    return status


def _process_ob_ipinfo(buf: bytearray, reply: bytes) -> bool:
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


# Section: FCOPY (hv_fcopy.c)


def fcopy_send(buf: bytearray, recv_len: int) -> bytes:
    """The daemon message the driver makes of the host's request in *buf*."""
    (op,) = struct.unpack_from("<I", buf, _P)
    if op == FcopyOp.START_FILE_COPY:
        fname = utf16s_to_utf8s(bytes(buf[_P + 36 : _P + 556]), W_MAX_PATH, W_MAX_PATH - 1)
        pname = utf16s_to_utf8s(bytes(buf[_P + 556 : _P + 1076]), W_MAX_PATH, W_MAX_PATH - 1)
        flags, size = struct.unpack_from("<IQ", buf, _P + 1076)
        return FCOPY_START.pack(op, b"", b"", fname, pname, flags, size)
    if op == FcopyOp.WRITE_TO_FILE:
        return bytes(buf[_P : _P + 6196])
    # the driver sends recv_len bytes from the payload on: 28 bytes
    # more than the payload, whatever the receive buffer holds there
    return bytes(buf[_P : _P + recv_len])
