"""Defects the fuzz harnesses found in the Hyper-V daemons and the bundle reader.

Harnesses: hv_messages (the uio ring), hv_fcopy (a write offset past off_t),
bundle (damaged bzip2 and lzma members).
"""

from __future__ import annotations

import io
import logging
import mmap
import struct
import zipfile
from pathlib import Path

import pytest

from vmis.errors import RemoteProtocolError
from vmis.hyperv.constants import FcopyFlag, HResult
from vmis.hyperv.fcopy import FcopyHandler
from vmis.hyperv.messages import FcopyData, FcopyStart
from vmis.hyperv.uio import CHANPKT, RING_HEADER_SIZE, Ring
from vmis.packaging.bundle import bundle_version

SIZE = RING_HEADER_SIZE + 256


def _ring(windex: int, rindex: int, data: bytes = b"") -> tuple[Ring, mmap.mmap]:
    buf = mmap.mmap(-1, SIZE)
    struct.pack_into("<II", buf, 0, windex, rindex)
    buf[RING_HEADER_SIZE : RING_HEADER_SIZE + len(data)] = data
    return Ring(buf, 0, SIZE), buf


@pytest.mark.parametrize("windex, rindex", [(300, 0), (16, 260), (16, 3)],
                         ids=["write past the ring", "read past the ring", "read unaligned"])
def test_ring_indexes_no_packet_can_have_are_a_dead_channel(windex, rindex):
    # hv_messages: struct.error ("unpack requires a buffer of 16 bytes") out of recv_raw
    ring, buf = _ring(windex, rindex)
    with pytest.raises(RemoteProtocolError, match="ring indexes"):
        ring.recv_raw()
    buf.close()


def test_a_packet_longer_than_the_ring_is_a_dead_channel():
    descriptor = CHANPKT.pack(6, 2, 200, 0, 1)  # 200 * 8 bytes in a 256-byte ring
    ring, buf = _ring(64, 0, descriptor)
    with pytest.raises(RemoteProtocolError, match="in a ring of"):
        ring.recv_raw()
    buf.close()


def test_a_good_packet_still_reads_across_the_ring_s_end():
    packet = CHANPKT.pack(6, 2, 3, 0, 7) + b"payload!"  # 24 bytes, + 8 of trailer
    data = bytearray(256)
    start = 240
    wrapped = packet + bytes(8)
    for i, byte in enumerate(wrapped):
        data[(start + i) % 256] = byte
    ring, buf = _ring((start + len(wrapped)) % 256, start, bytes(data))
    assert ring.recv_raw() == packet
    buf.close()


def test_a_write_offset_past_off_t_fails_the_copy_instead_of_the_daemon(tmp_path: Path):
    # hv_fcopy: os.pwrite raised OverflowError ("Python int too large to convert to C long")
    handler = FcopyHandler(logging.getLogger("test.hv.fcopy"))
    start = FcopyStart(b"f.bin", str(tmp_path).encode(), int(FcopyFlag.OVER_WRITE), 10)
    assert struct.unpack("<I", handler.handle(start.pack()))[0] == HResult.HV_S_OK
    for offset in (2**64 - 1, 2**63):
        reply = handler.handle(FcopyData(offset, b"data").pack())
        assert struct.unpack("<I", reply)[0] == HResult.HV_E_FAIL
    assert struct.unpack("<I", handler.handle(FcopyData(0, b"data").pack()))[0] == 0
    handler.reset()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA], ids=["bzip2", "lzma"])
def test_a_bundle_with_a_damaged_compressed_member_is_not_a_bundle(method):
    # bundle: OSError ("Invalid data stream") and LZMAError left bundle_version,
    # which documents ValueError
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr(zipfile.ZipInfo("vmis/__init__.py"), '__version__ = "1.0"\n')
        info = zipfile.ZipInfo("vmis/errors.py")
        info.compress_type = method
        zf.writestr(info, b"x = 1\n" * 200)
    data = bytearray(out.getvalue())
    assert bundle_version(bytes(data)) == "1.0"
    offset = data.index(b"vmis/errors.py") + len("vmis/errors.py") + 20  # its compressed data
    data[offset : offset + 8] = b"\xff" * 8
    with pytest.raises(ValueError, match=r"damaged|not a vmis agent bundle"):
        bundle_version(bytes(data))
