"""Message sizes, offsets and codes against the kernel headers (facts sections 1-6)."""

from __future__ import annotations

import struct

import pytest

from vmis.errors import RemoteProtocolError
from vmis.hyperv import constants as c
from vmis.hyperv import messages as m
from vmis.services.kvp.pool import Pool


def test_sizes_equal_the_kernels():
    assert m.KVP_MSG_SIZE == 7432  # hv_kvp_msg: 4 + 7426 padded to 7428
    assert m.KVP_BODY_SIZE == 7428
    assert m.KVP_VALUE_SIZE == 2572  # hv_kvp_exchg_msg_value
    assert m.KVP_ENUMERATE.size + m.KVP_VALUE_SIZE == 2576
    assert m.KVP_DELETE.size == 516
    assert m.KVP_REGISTER.size == 512
    assert m.KVP_IPADDR_VALUE.size == 7426
    assert m.KVP_IP_MSG_SIZE == 7428  # hv_kvp_ip_msg, no pad
    assert m.KVP_HDR.size == 4
    assert m.VSS_MSG_SIZE == 12
    assert m.FCOPY_HDR_SIZE == 36
    assert m.FCOPY_START_SIZE == 1088
    assert m.FCOPY_DO_SIZE == 6196
    assert m.VMBUSPIPE_HDR.size == 8 and m.ICMSG_HDR.size == 20
    assert m.IC_HEADERS_SIZE == 28
    assert m.NEGOTIATE_HDR.size == 8
    assert m.DATA_FRAGMENT == 6144 and m.W_MAX_PATH == 260


def test_field_offsets():
    # hv_kvp_exchg_msg_value: key at 12, value at 524
    raw = m.KvpValue(1, 2, 3, b"K", b"V").pack()
    assert raw[12:13] == b"K" and raw[524:525] == b"V"
    # hv_kvp_ipaddr_value: 256 family, 257 dhcp, 258 ip, 2306 subnet, 4354 gw, 5378 dns
    ip = m.IpAddrValue(b"A", 1, 1, b"I", b"S", b"G", b"D").pack()
    assert [ip[o : o + 1] for o in (0, 258, 2306, 4354, 5378)] == [b"A", b"I", b"S", b"G", b"D"]
    assert ip[256] == 1 and ip[257] == 1
    # hv_start_fcopy: names at 36 and 556, flags at 1076, size at 1080
    st = m.FcopyStart(b"f", b"p", 3, 2**40).pack()
    assert st[36:37] == b"f" and st[556:557] == b"p"
    assert struct.unpack_from("<IQ", st, 1076) == (3, 2**40)
    # hv_do_fcopy: pad at 36, offset at 40, size at 48, data at 52
    do = m.FcopyData(7, b"xy").pack()
    assert struct.unpack_from("<I", do, 0)[0] == c.FcopyOp.WRITE_TO_FILE
    assert struct.unpack_from("<IQI", do, 36) == (0, 7, 2) and do[52:54] == b"xy"


def test_kvp_message_builder_and_limits():
    msg = m.kvp_message(c.KvpOp.REGISTER1, 0, b"3.1")
    assert len(msg) == 7432 and msg[0] == 100 and msg[4:7] == b"3.1"
    with pytest.raises(ValueError):
        m.kvp_message(0, 0, b"x" * 7429)


def test_ic_header_round_trip():
    h = m.IcHeader(msgtype=c.IcMsgType.KVPEXCHANGE, framework=(3, 0), version=(4, 0),
                   msgsize=7432, status=c.HResult.HV_S_CONT, transaction=9,
                   flags=c.IcFlag.TRANSACTION | c.IcFlag.RESPONSE, pipe_flags=1, pipe_msgsize=99)
    raw = h.pack()
    assert len(raw) == 28
    assert struct.unpack_from("<H", raw, 8 + 4)[0] == 2  # icmsgtype at icmsg offset 4
    assert struct.unpack_from("<I", raw, 8 + 12)[0] == 0x80070103  # status at 12
    assert raw[8 + 16] == 9 and raw[8 + 17] == 5  # transaction id, flags
    assert m.IcHeader.unpack(raw) == h
    with pytest.raises(RemoteProtocolError):
        m.IcHeader.unpack(raw[:27])


def test_unpack_rejects_short_messages():
    with pytest.raises(RemoteProtocolError):
        m.VssMessage.unpack(b"\0" * 11)
    with pytest.raises(RemoteProtocolError):
        m.FcopyStart.unpack(b"\0" * 1087)
    with pytest.raises(RemoteProtocolError):
        m.FcopyData.unpack(b"\0" * 6195)
    bad = bytearray(m.FcopyData(0, b"").pack())
    struct.pack_into("<I", bad, 48, 6145)
    with pytest.raises(RemoteProtocolError):
        m.FcopyData.unpack(bytes(bad))
    with pytest.raises(ValueError):
        m.FcopyData(0, b"x" * 6145).pack()


def test_cstring():
    assert m.cstring(b"abc\0def") == b"abc" and m.cstring(b"abc") == b"abc"


# Section: codes, transcribed from the facts file


def test_hresult_codes():
    assert {h.name: h.value for h in c.HResult} == {
        "HV_S_OK": 0x00000000,
        "HV_E_FAIL": 0x80004005,
        "HV_S_CONT": 0x80070103,
        "HV_ERROR_NOT_SUPPORTED": 0x80070032,
        "HV_ERROR_MACHINE_LOCKED": 0x800704F7,
        "HV_ERROR_DEVICE_NOT_CONNECTED": 0x8007048F,
        "HV_INVALIDARG": 0x80070057,
        "HV_GUID_NOTFOUND": 0x80041002,
        "HV_ERROR_ALREADY_EXISTS": 0x80070050,
        "HV_ERROR_DISK_FULL": 0x80070070,
    }


def test_ic_codes():
    assert [(t.name, t.value) for t in c.IcMsgType] == [
        ("NEGOTIATE", 0), ("HEARTBEAT", 1), ("KVPEXCHANGE", 2), ("SHUTDOWN", 3),
        ("TIMESYNC", 4), ("VSS", 5), ("FCOPY", 7),
    ]
    assert (c.IcFlag.TRANSACTION, c.IcFlag.REQUEST, c.IcFlag.RESPONSE) == (1, 2, 4)


def test_kvp_codes():
    assert (c.KvpOp.GET, c.KvpOp.SET, c.KvpOp.DELETE, c.KvpOp.ENUMERATE,
            c.KvpOp.GET_IP_INFO, c.KvpOp.SET_IP_INFO, c.KvpOp.COUNT) == (0, 1, 2, 3, 4, 5, 6)
    assert (c.KvpOp.REGISTER, c.KvpOp.REGISTER1) == (4, 100)
    assert (c.RegType.REG_SZ, c.RegType.REG_U32, c.RegType.REG_U64) == (1, 4, 8)
    assert [int(p) for p in (Pool.EXTERNAL, Pool.GUEST, Pool.AUTO, Pool.AUTO_EXTERNAL,
                             Pool.AUTO_INTERNAL)] == [0, 1, 2, 3, 4]
    assert (c.AddrFamily.NONE, c.AddrFamily.IPV4, c.AddrFamily.IPV6) == (0, 1, 2)
    assert (m.MAX_ADAPTER_ID_SIZE, m.MAX_IP_ADDR_SIZE, m.MAX_GATEWAY_SIZE) == (128, 1024, 512)
    assert c.HV_DRV_VERSION == "3.1"


def test_vss_codes():
    assert [(o.name, o.value) for o in c.VssOp] == [
        ("CREATE", 0), ("DELETE", 1), ("HOT_BACKUP", 2), ("GET_DM_INFO", 3),
        ("BU_COMPLETE", 4), ("FREEZE", 5), ("THAW", 6), ("AUTO_RECOVER", 7), ("COUNT", 8),
        ("REGISTER", 128), ("REGISTER1", 129),
    ]
    assert c.VSS_HBU_NO_AUTO_RECOVERY == 5


def test_fcopy_codes():
    assert [(o.name, o.value) for o in c.FcopyOp] == [
        ("START_FILE_COPY", 0), ("WRITE_TO_FILE", 1), ("COMPLETE_FCOPY", 2), ("CANCEL_FCOPY", 3),
    ]
    assert (c.FcopyFlag.OVER_WRITE, c.FcopyFlag.CREATE_PATH) == (1, 2)
    assert (c.FCOPY_VERSION_0, c.FCOPY_VERSION_1, c.FCOPY_CURRENT_VERSION) == (0, 1, 1)


def test_timeouts():
    assert c.HV_UTIL_TIMEOUT == 30 and c.VSS_FREEZE_TIMEOUT == 900
