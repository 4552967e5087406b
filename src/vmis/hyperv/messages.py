"""Byte layouts of the Hyper-V integration-service messages.

All structures are packed and little-endian, as in ``include/uapi/linux/hyperv.h``
(facts sections 1.2, 3.2, 5.1, 6.1).  Each layout is a :class:`struct.Struct`
whose size is asserted at import, plus a frozen dataclass with ``pack`` and
``unpack`` where code reads or writes the fields.  Text fields are kept as raw
``bytes`` here: whether they hold UTF-8 (kernel <-> daemon) or UTF-16LE
(host <-> kernel) depends on the side, and the conversions live in
:mod:`vmis.hyperv.utf`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmis.errors import RemoteProtocolError

__all__ = [
    "DATA_FRAGMENT",
    "FCOPY_DO",
    "FCOPY_DO_SIZE",
    "FCOPY_HDR",
    "FCOPY_HDR_SIZE",
    "FCOPY_START",
    "FCOPY_START_SIZE",
    "ICMSG_HDR",
    "ICMSG_HDR_SIZE",
    "IC_HEADERS_SIZE",
    "KVP_BODY_SIZE",
    "KVP_DELETE",
    "KVP_ENUMERATE",
    "KVP_HDR",
    "KVP_IPADDR_VALUE",
    "KVP_IP_MSG",
    "KVP_IP_MSG_SIZE",
    "KVP_MSG_SIZE",
    "KVP_VALUE",
    "KVP_VALUE_SIZE",
    "MAX_ADAPTER_ID_SIZE",
    "MAX_GATEWAY_SIZE",
    "MAX_IP_ADDR_SIZE",
    "NEGOTIATE_HDR",
    "VMBUSPIPE_HDR",
    "VSS_MSG",
    "VSS_MSG_SIZE",
    "W_MAX_PATH",
    "FcopyData",
    "FcopyStart",
    "IcHeader",
    "IpAddrValue",
    "KvpValue",
    "VssMessage",
    "cstring",
    "kvp_message",
]


def _sized(fmt: str, size: int) -> struct.Struct:
    s = struct.Struct(fmt)
    assert s.size == size, (fmt, s.size, size)
    return s


def cstring(field: bytes) -> bytes:
    """The bytes of a NUL-terminated string field, up to (not including) the NUL."""
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _check_len(data: bytes, size: int, what: str) -> None:
    if len(data) < size:
        raise RemoteProtocolError(f"{what} needs {size} bytes, got {len(data)}")


# Section: VMBus / IC framing (facts 1.2)

#: ``vmbuspipe_hdr``: u32 flags, u32 msgsize.
VMBUSPIPE_HDR = _sized("<II", 8)
#: ``icmsg_hdr``: icverframe{u16,u16}, u16 icmsgtype, icvermsg{u16,u16},
#: u16 icmsgsize, u32 status, u8 ictransaction_id, u8 icflags, u8 reserved[2].
ICMSG_HDR = _sized("<HHHHHHIBBH", 20)
ICMSG_HDR_SIZE = ICMSG_HDR.size
#: Where an IC service payload starts in a VMBus inband packet (ICMSG_HDR).
IC_HEADERS_SIZE = VMBUSPIPE_HDR.size + ICMSG_HDR.size
assert IC_HEADERS_SIZE == 28
#: ``icmsg_negotiate`` fixed part: u16 icframe_vercnt, u16 icmsg_vercnt, u32 reserved.
NEGOTIATE_HDR = _sized("<HHI", 8)


@dataclass(frozen=True, slots=True)
class IcHeader:
    """The 28 bytes in front of every IC payload (pipe header + ``icmsg_hdr``)."""

    #: icmsgtype (:class:`~vmis.hyperv.constants.IcMsgType`)
    msgtype: int
    #: framework version (major, minor)
    framework: tuple[int, int] = (3, 0)
    #: service message version (major, minor)
    version: tuple[int, int] = (0, 0)
    #: payload size
    msgsize: int = 0
    #: HRESULT written by the guest
    status: int = 0
    #: ictransaction_id
    transaction: int = 0
    #: icflags (:class:`~vmis.hyperv.constants.IcFlag`)
    flags: int = 0
    #: vmbuspipe_hdr.flags
    pipe_flags: int = 0
    #: vmbuspipe_hdr.msgsize
    pipe_msgsize: int = 0

    def pack(self) -> bytes:
        """Encode the 28 header bytes."""
        return VMBUSPIPE_HDR.pack(self.pipe_flags, self.pipe_msgsize) + ICMSG_HDR.pack(
            *self.framework,
            self.msgtype,
            *self.version,
            self.msgsize,
            self.status,
            self.transaction,
            self.flags,
            0,
        )

    @classmethod
    def unpack(cls, packet: bytes) -> IcHeader:
        """Decode the header at the start of ``packet``.

        :raise RemoteProtocolError: When the packet is shorter than 28 bytes.
        """
        _check_len(packet, IC_HEADERS_SIZE, "an IC packet header")
        pflags, psize = VMBUSPIPE_HDR.unpack_from(packet, 0)
        fmaj, fmin, mtype, vmaj, vmin, size, status, trans, flags, _ = ICMSG_HDR.unpack_from(
            packet, VMBUSPIPE_HDR.size
        )
        return cls(mtype, (fmaj, fmin), (vmaj, vmin), size, status, trans, flags, pflags, psize)


# Section: KVP (facts 3.2)

#: Field sizes of hv_kvp_exchg_msg_value (NUL included).
KVP_KEY_FIELD = 512
KVP_VALUE_FIELD = 2048
#: ``hv_kvp_hdr``: u8 operation, u8 pool, u16 pad.
KVP_HDR = _sized("<BBH", 4)
#: ``hv_kvp_exchg_msg_value``: u32 value_type, u32 key_size, u32 value_size,
#: u8 key[512], u8 value[2048] (or u32 / u64 at the same offset).
KVP_VALUE = _sized("<III512s2048s", 2572)
KVP_VALUE_SIZE = KVP_VALUE.size
#: Offsets of key and value inside hv_kvp_exchg_msg_value.
KVP_VALUE_KEY_OFFSET = 12
KVP_VALUE_VALUE_OFFSET = 524
#: ``hv_kvp_msg_enumerate``: u32 index, then hv_kvp_exchg_msg_value.
KVP_ENUMERATE = _sized("<I", 4)
KVP_ENUMERATE_SIZE = KVP_ENUMERATE.size + KVP_VALUE_SIZE
assert KVP_ENUMERATE_SIZE == 2576
#: ``hv_kvp_msg_delete``: u32 key_size, u8 key[512].
KVP_DELETE = _sized("<I512s", 516)
#: ``hv_kvp_register``: u8 version[512].
KVP_REGISTER = _sized("<512s", 512)
#: Sizes of the IP fields, in UTF-16 code units.
MAX_ADAPTER_ID_SIZE = 128
MAX_IP_ADDR_SIZE = 1024
MAX_GATEWAY_SIZE = 512
#: ``hv_kvp_ipaddr_value``: u16 adapter_id[128], u8 addr_family, u8 dhcp_enabled,
#: u16 ip_addr[1024], u16 sub_net[1024], u16 gate_way[512], u16 dns_addr[1024].
KVP_IPADDR_VALUE = _sized("<256sBB2048s2048s1024s2048s", 7426)
#: The body union is the largest member (7426) padded to 4-byte alignment.
KVP_BODY_SIZE = 7428
#: ``hv_kvp_msg``: union{hv_kvp_hdr | s32 error} + body; the kernel <-> daemon unit.
KVP_MSG_SIZE = KVP_HDR.size + KVP_BODY_SIZE
assert KVP_MSG_SIZE == 7432
#: ``hv_kvp_ip_msg``: u8 operation, u8 pool, hv_kvp_ipaddr_value (host wire form, no pad).
KVP_IP_MSG = _sized("<BB", 2)
KVP_IP_MSG_SIZE = KVP_IP_MSG.size + KVP_IPADDR_VALUE.size
assert KVP_IP_MSG_SIZE == 7428
#: The s32 ``error`` that overlays the KVP header in replies.
KVP_ERROR = _sized("<I", 4)


def kvp_message(operation: int, pool: int, body: bytes = b"") -> bytes:
    """Build a 7432-byte ``hv_kvp_msg``: header then ``body``, zero-padded.

    :raise ValueError: When ``body`` is larger than the body union.
    """
    if len(body) > KVP_BODY_SIZE:
        raise ValueError(f"KVP body of {len(body)} bytes exceeds {KVP_BODY_SIZE}")
    return KVP_HDR.pack(operation, pool, 0) + body.ljust(KVP_BODY_SIZE, b"\0")


@dataclass(frozen=True, slots=True)
class KvpValue:
    """``hv_kvp_exchg_msg_value``; ``key`` and ``value`` are the raw fields."""

    value_type: int
    key_size: int
    value_size: int
    key: bytes = b""
    value: bytes = b""

    def pack(self) -> bytes:
        """Encode the 2572 bytes (fields zero-padded)."""
        return KVP_VALUE.pack(self.value_type, self.key_size, self.value_size, self.key, self.value)

    @classmethod
    def unpack(cls, data: bytes, offset: int = 0) -> KvpValue:
        """Decode at ``offset``.

        :raise RemoteProtocolError: When ``data`` is too short.
        """
        _check_len(data, offset + KVP_VALUE_SIZE, "hv_kvp_exchg_msg_value")
        return cls(*KVP_VALUE.unpack_from(data, offset))


@dataclass(frozen=True, slots=True)
class IpAddrValue:
    """``hv_kvp_ipaddr_value``; the text fields are raw (UTF-8 or UTF-16LE by side)."""

    adapter_id: bytes = b""
    addr_family: int = 0
    dhcp_enabled: int = 0
    ip_addr: bytes = b""
    sub_net: bytes = b""
    gate_way: bytes = b""
    dns_addr: bytes = b""

    def pack(self) -> bytes:
        """Encode the 7426 bytes."""
        return KVP_IPADDR_VALUE.pack(
            self.adapter_id,
            self.addr_family,
            self.dhcp_enabled,
            self.ip_addr,
            self.sub_net,
            self.gate_way,
            self.dns_addr,
        )

    @classmethod
    def unpack(cls, data: bytes, offset: int = 0) -> IpAddrValue:
        """Decode at ``offset``.

        :raise RemoteProtocolError: When ``data`` is too short.
        """
        _check_len(data, offset + KVP_IPADDR_VALUE.size, "hv_kvp_ipaddr_value")
        return cls(*KVP_IPADDR_VALUE.unpack_from(data, offset))


# Section: VSS (facts 5.1)

#: ``hv_vss_msg``: union{hv_vss_hdr{u8 operation, u8 reserved[7]} | s32 error},
#: then union{u32 vss_cf.flags | u32 dm_info.flags}.
VSS_MSG = _sized("<B7sI", 12)
VSS_MSG_SIZE = VSS_MSG.size


@dataclass(frozen=True, slots=True)
class VssMessage:
    """``hv_vss_msg`` as the daemon reads it."""

    operation: int
    flags: int = 0

    def pack(self) -> bytes:
        """Encode the 12 bytes."""
        return VSS_MSG.pack(self.operation, b"", self.flags)

    @staticmethod
    def reply(error: int, flags: int = 0) -> bytes:
        """The daemon's reply: ``error`` over the header, ``flags`` kept."""
        return struct.pack("<II", error, 0) + struct.pack("<I", flags)

    @classmethod
    def unpack(cls, data: bytes) -> VssMessage:
        """Decode a 12-byte message.

        :raise RemoteProtocolError: When it is not 12 bytes.
        """
        if len(data) != VSS_MSG_SIZE:
            raise RemoteProtocolError(f"hv_vss_msg is {VSS_MSG_SIZE} bytes, got {len(data)}")
        op, _, flags = VSS_MSG.unpack(data)
        return cls(op, flags)


# Section: FCOPY (facts 6.1)

#: Path and name fields, in UTF-16 code units.
W_MAX_PATH = 260
#: Payload bytes per WRITE_TO_FILE.
DATA_FRAGMENT = 6 * 1024
#: ``hv_fcopy_hdr``: u32 operation, u8 service_id0[16], u8 service_id1[16].
FCOPY_HDR = _sized("<I16s16s", 36)
FCOPY_HDR_SIZE = FCOPY_HDR.size
#: ``hv_start_fcopy``: hdr, u16 file_name[260], u16 path_name[260], u32 copy_flags,
#: u64 file_size.
FCOPY_START = _sized("<I16s16s520s520sIQ", 1088)
FCOPY_START_SIZE = FCOPY_START.size
#: ``hv_do_fcopy``: hdr, u32 pad, u64 offset, u32 size, u8 data[6144].
FCOPY_DO = _sized("<I16s16sIQI6144s", 6196)
FCOPY_DO_SIZE = FCOPY_DO.size


@dataclass(frozen=True, slots=True)
class FcopyStart:
    """``hv_start_fcopy``; names raw (UTF-8 from the kernel, UTF-16LE from the host)."""

    file_name: bytes
    path_name: bytes
    copy_flags: int = 0
    file_size: int = 0
    operation: int = 0

    def pack(self) -> bytes:
        """Encode the 1088 bytes."""
        return FCOPY_START.pack(
            self.operation, b"", b"", self.file_name, self.path_name, self.copy_flags,
            self.file_size,
        )

    @classmethod
    def unpack(cls, data: bytes) -> FcopyStart:
        """Decode.

        :raise RemoteProtocolError: When ``data`` is shorter than 1088 bytes.
        """
        _check_len(data, FCOPY_START_SIZE, "hv_start_fcopy")
        op, _, _, fname, pname, flags, size = FCOPY_START.unpack_from(data)
        return cls(fname, pname, flags, size, op)


@dataclass(frozen=True, slots=True)
class FcopyData:
    """``hv_do_fcopy``: one fragment of the file."""

    offset: int
    data: bytes
    operation: int = 1

    def pack(self) -> bytes:
        """Encode the 6196 bytes.

        :raise ValueError: When ``data`` is longer than :data:`DATA_FRAGMENT`.
        """
        if len(self.data) > DATA_FRAGMENT:
            raise ValueError(f"an fcopy fragment holds at most {DATA_FRAGMENT} bytes")
        return FCOPY_DO.pack(
            self.operation, b"", b"", 0, self.offset, len(self.data), self.data
        )

    @classmethod
    def unpack(cls, data: bytes) -> FcopyData:
        """Decode.

        :raise RemoteProtocolError: When ``data`` is too short or ``size`` exceeds 6144.
        """
        _check_len(data, FCOPY_DO_SIZE, "hv_do_fcopy")
        op, _, _, _, offset, size, payload = FCOPY_DO.unpack_from(data)
        if size > DATA_FRAGMENT:
            raise RemoteProtocolError(f"hv_do_fcopy size {size} exceeds {DATA_FRAGMENT}")
        return cls(offset, payload[:size], op)
