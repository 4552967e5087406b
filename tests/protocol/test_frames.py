"""Frame codec on bytes (docs/protocol.md §2): round trips, byte-at-a-time, every reject path."""

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmis.errors import LocalProtocolError, RemoteProtocolError
from vmis.protocol.frames import (
    HEADER_SIZE,
    MAGIC,
    MIN_MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    Kind,
    encode_frame,
    encode_header,
)


def wire(frame: Frame) -> bytes:
    return b"".join(encode_frame(frame))


def decode_all(data: bytes, chunks: list[int] | None = None) -> list[Frame]:
    dec = FrameDecoder()
    frames = []
    pos = 0
    for size in chunks or [len(data)]:
        if pos >= len(data):
            break
        dec.feed(data[pos : pos + size])
        pos += size
        while (f := dec.next_frame()) is not None:
            frames.append(f)
    if pos < len(data):
        dec.feed(data[pos:])
    dec.feed(b"")
    while (f := dec.next_frame()) is not None:
        frames.append(f)
    return frames


def test_header_layout_is_the_documented_one():
    raw = encode_header(Kind.RESPONSE, 6, 2, 0x01020304, 0x0A0B0C0D)
    assert len(raw) == HEADER_SIZE == 20
    assert raw[:4] == b"\x89VMI"
    assert raw[4] == 1 and raw[5] == 1 and raw[6] == 6 and raw[7] == 2
    assert raw[8:12] == bytes([4, 3, 2, 1])
    assert raw[12:16] == bytes([0x0D, 0x0C, 0x0B, 0x0A])
    assert int.from_bytes(raw[16:20], "little") == zlib.crc32(raw[:16])


def test_round_trip_and_trailing_data():
    a = Frame(Kind.REQUEST, 2, 1, 7, b"hello")
    b = Frame(Kind.NOTIFY, 1, 1, 0, b"")
    data = wire(a) + wire(b) + wire(a)[:5]
    dec = FrameDecoder()
    dec.feed(data)
    assert dec.next_frame() == a
    assert dec.next_frame() == b
    assert dec.next_frame() is None
    assert dec.buffered == 5


def test_fed_one_byte_at_a_time():
    frames = [Frame(Kind.REQUEST, 3, 4, 9, bytes(range(256)) * 3), Frame(Kind.ERROR, 0, 2, 9, b"{}")]
    data = b"".join(wire(f) for f in frames)
    dec = FrameDecoder()
    got = []
    for i in range(len(data)):
        dec.feed(data[i : i + 1])
        f = dec.next_frame()
        if f is not None:
            got.append(f)
            # a frame comes out exactly when its last byte arrives
            assert i + 1 in (len(wire(frames[0])), len(data))
    assert got == frames


@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(Kind)),
            st.integers(0, 255),
            st.integers(0, 255),
            st.integers(1, 2**32 - 1),
            st.binary(max_size=300),
        ),
        max_size=8,
    ),
    st.lists(st.integers(1, 64), max_size=40),
)
def test_property_any_chunking_round_trips(specs, chunks):
    frames = [Frame(k, s, o, 0 if k is Kind.NOTIFY else i, p) for k, s, o, i, p in specs]
    data = b"".join(wire(f) for f in frames)
    assert decode_all(data, chunks) == frames


def bad_header(**fields) -> bytes:
    values = dict(magic=MAGIC, version=1, kind=0, service=1, op=1, id=1, length=0)
    crc = fields.pop("crc", None)
    values.update(fields)
    head = struct.pack("<4sBBBBII", *values.values())
    crc = zlib.crc32(head) if crc is None else crc
    return head + struct.pack("<I", crc)


@pytest.mark.parametrize(
    "raw, message",
    [
        (bad_header(magic=b"XVMI"), "magic"),
        (bad_header(version=2), "version"),
        (bad_header(kind=4), "kind"),
        (bad_header(kind=0x13), "kind"),
        (bad_header(crc=1), "checksum"),
        (bad_header(length=MIN_MAX_PAYLOAD + 1), "exceeds"),
        (bad_header(kind=3, id=5), "notification"),
        (bad_header(kind=0, id=0), "notification"),
    ],
)
def test_reject_bad_headers(raw, message):
    dec = FrameDecoder(max_payload=MIN_MAX_PAYLOAD)
    dec.feed(raw)
    with pytest.raises(RemoteProtocolError, match=message):
        dec.next_frame()


def test_oversized_frame_is_rejected_before_its_payload_arrives():
    dec = FrameDecoder(max_payload=MIN_MAX_PAYLOAD)
    dec.feed(encode_header(Kind.REQUEST, 1, 1, 1, 10**9))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        dec.next_frame()


@pytest.mark.parametrize("cut", [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 3])
def test_reject_truncated_frames(cut):
    dec = FrameDecoder()
    dec.feed(wire(Frame(Kind.REQUEST, 1, 1, 1, b"12345"))[:cut])
    assert dec.next_frame() is None
    dec.feed(b"")
    with pytest.raises(RemoteProtocolError, match="stream ended"):
        dec.next_frame()


def test_clean_eof_is_not_an_error():
    dec = FrameDecoder()
    dec.feed(wire(Frame(Kind.NOTIFY, 1, 1, 0)))
    dec.feed(b"")
    assert dec.next_frame() is not None
    assert dec.next_frame() is None
    with pytest.raises(RuntimeError):
        dec.feed(b"x")


def test_encoder_refuses_what_the_peer_cannot_take():
    with pytest.raises(LocalProtocolError):
        encode_frame(Frame(Kind.REQUEST, 1, 1, 1, b"x" * 10), max_payload=5)
    with pytest.raises(LocalProtocolError):
        encode_frame(Frame(Kind.REQUEST, 256, 1, 1))
    with pytest.raises(LocalProtocolError):
        encode_frame(Frame(Kind.NOTIFY, 1, 1, 3))
    with pytest.raises(LocalProtocolError):
        encode_frame(Frame(Kind.REQUEST, 1, 1, 0))
    with pytest.raises(ValueError):
        FrameDecoder(max_payload=10)


SYNC = (0, 1, Kind.REQUEST)


def test_hunt_skips_garbage_and_other_frames():
    sync = Frame(Kind.REQUEST, 0, 1, 5, b"N" * 8)
    noise = b"garbage \x89VM \x89VMI" + bad_header(crc=7) + wire(Frame(Kind.REQUEST, 2, 1, 3, b"x"))
    dec = FrameDecoder()
    dec.feed(noise + wire(sync) + b"tail")
    assert dec.hunt(SYNC) == sync
    assert dec.buffered == 4


def test_hunt_one_byte_at_a_time_with_split_magic():
    sync = Frame(Kind.REQUEST, 0, 1, 5, b"N" * 8)
    data = b"\x89V" + b"\x89VM" + b"zz" + wire(sync)
    dec = FrameDecoder()
    found = None
    for i in range(len(data)):
        dec.feed(data[i : i + 1])
        found = found or dec.hunt(SYNC)
    assert found == sync


def test_hunt_does_not_wait_for_the_body_of_a_discarded_frame():
    # A stale frame announcing a long body was cut off by an agent restart;
    # the SYNC that follows must still be found.
    stale = encode_header(Kind.REQUEST, 6, 2, 9, 60000) + b"partial"
    sync = Frame(Kind.REQUEST, 0, 1, 5, b"N" * 8)
    dec = FrameDecoder()
    dec.feed(stale + wire(sync))
    assert dec.hunt(SYNC) == sync


@given(st.binary(max_size=2000), st.binary(max_size=50))
def test_property_hunt_finds_sync_after_any_garbage(garbage, tail):
    sync = Frame(Kind.REQUEST, 0, 1, 77, b"12345678")
    dec = FrameDecoder()
    dec.feed(garbage + wire(sync) + tail)
    # Garbage could itself hold a valid SYNC frame only with a correct CRC;
    # random bytes never do, so the first one found is ours.
    assert dec.hunt(SYNC) == sync


def test_large_buffers_are_compacted():
    dec = FrameDecoder()
    frame = Frame(Kind.NOTIFY, 6, 1, 0, b"x" * 1000)
    data = wire(frame) * 200
    dec.feed(data)
    n = 0
    while dec.next_frame() is not None:
        n += 1
    assert n == 200 and dec.buffered == 0


def test_zero_padding_between_frames_is_skipped():
    a = Frame(Kind.NOTIFY, 1, 1, 0, b"x")
    dec = FrameDecoder()
    dec.feed(bytes(70000) + wire(a) + bytes(5) + wire(a))
    assert dec.next_frame() == a
    assert dec.next_frame() == a
    assert dec.buffered == 0
