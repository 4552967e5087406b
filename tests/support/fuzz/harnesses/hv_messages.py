"""The Hyper-V message layouts (vmis.hyperv.messages), the UTF-16 conversions, the IC
version negotiation and the VMBus ring reader of the uio fcopy daemon.

May raise, as documented: the ``unpack`` methods RemoteProtocolError (too
short, a size field past its buffer); ``Ring.recv_raw`` RemoteProtocolError
(an impossible descriptor); the others nothing. Checked: an unpacked
structure packs back to the bytes it came from (text fields as stored), and
the conversions stay within the sizes they are given.
"""

from __future__ import annotations

import mmap
import struct

import atheris

from vmis.errors import RemoteProtocolError
from vmis.hyperv.messages import (
    FCOPY_DO_SIZE,
    FCOPY_START_SIZE,
    IC_HEADERS_SIZE,
    KVP_IPADDR_VALUE,
    KVP_VALUE_SIZE,
    VSS_MSG_SIZE,
    FcopyData,
    FcopyStart,
    IcHeader,
    IpAddrValue,
    KvpValue,
    VssMessage,
    cstring,
)
from vmis.hyperv.uio import RING_HEADER_SIZE, Ring, _negotiate
from vmis.hyperv.utf import utf8s_to_utf16s, utf16s_to_utf8s

_SIZES = [IC_HEADERS_SIZE, KVP_VALUE_SIZE, KVP_IPADDR_VALUE.size, VSS_MSG_SIZE,
          FCOPY_START_SIZE, FCOPY_DO_SIZE]


def _data(fdp: atheris.FuzzedDataProvider) -> bytes:
    """Bytes near one of the message sizes (the fuzzer alone would rarely reach 6196)."""
    head = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    size = fdp.PickValueInList(_SIZES) + fdp.ConsumeIntInRange(-2, 2)
    return (head + fdp.ConsumeBytes(size)).ljust(max(size, 0), b"\0")[: max(size, 0)]


def _unpack(fdp: atheris.FuzzedDataProvider) -> None:
    data = _data(fdp)
    try:
        which = fdp.ConsumeIntInRange(0, 5)
        if which == 0:
            header = IcHeader.unpack(data)
            assert header.pack()[:8] == data[:8]
        elif which == 1:
            offset = fdp.ConsumeIntInRange(0, 16)
            value = KvpValue.unpack(data, offset)
            assert value.pack() == data[offset : offset + KVP_VALUE_SIZE]
        elif which == 2:
            ip = IpAddrValue.unpack(data)
            assert ip.pack() == data[: KVP_IPADDR_VALUE.size]
        elif which == 3:
            VssMessage.unpack(data)
        elif which == 4:
            start = FcopyStart.unpack(data)
            cstring(start.file_name)
            cstring(start.path_name)
        else:
            chunk = FcopyData.unpack(data)
            assert len(chunk.data) <= 6144
            assert chunk.pack()[40:] == data[40:FCOPY_DO_SIZE][: 12 + len(chunk.data)].ljust(
                FCOPY_DO_SIZE - 40, b"\0")
    except RemoteProtocolError:
        pass


def _utf(fdp: atheris.FuzzedDataProvider) -> None:
    data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 600))
    inlen, maxout = fdp.ConsumeIntInRange(0, 300), fdp.ConsumeIntInRange(0, 600)
    out = utf16s_to_utf8s(data, inlen, maxout)
    assert len(out) <= maxout
    units, failed = utf8s_to_utf16s(data, inlen, maxout)
    assert len(units) <= 2 * maxout and isinstance(failed, bool)


def _negotiation(fdp: atheris.FuzzedDataProvider) -> None:
    packet = bytearray(fdp.ConsumeBytes(IC_HEADERS_SIZE))
    counts = fdp.ConsumeIntInRange(0, 3), fdp.ConsumeIntInRange(0, 3)
    if fdp.ConsumeBool():
        packet += struct.pack("<HHI", *counts, 0)
    packet += fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
    size = len(packet)
    _negotiate(packet)
    assert len(packet) == size


def _ring(fdp: atheris.FuzzedDataProvider) -> None:
    size = RING_HEADER_SIZE + 8 * fdp.ConsumeIntInRange(4, 64)
    buf = mmap.mmap(-1, size)
    try:
        # the host writes the indexes and the packets; any value is possible
        struct.pack_into("<II", buf, 0, fdp.ConsumeIntInRange(0, 2 * size),
                         fdp.ConsumeIntInRange(0, 2 * size))
        data = fdp.ConsumeBytes(size - RING_HEADER_SIZE)
        buf[RING_HEADER_SIZE : RING_HEADER_SIZE + len(data)] = data
        ring = Ring(buf, 0, size)
        for _ in range(4):
            packet = ring.recv_raw()
            if packet is None:
                break
            assert len(packet) % 8 == 0
    except RemoteProtocolError:
        pass
    finally:
        buf.close()


_TARGETS = [_unpack, _unpack, _utf, _negotiation, _ring]


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    fdp.PickValueInList(_TARGETS)(fdp)
