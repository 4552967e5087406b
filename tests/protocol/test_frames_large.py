"""Large payloads (bulk data) through the frame decoder: each lands in a buffer of its own, once."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmis.errors import RemoteProtocolError
from vmis.protocol.frames import HEADER_SIZE, Frame, FrameDecoder, Kind, encode_frame

SYNC = (0, 1, Kind.REQUEST)
BIG = 300 * 1024


def wire(frame: Frame) -> bytes:
    return b"".join(encode_frame(frame))


def feed_in(dec: FrameDecoder, data: bytes, sizes: list[int]) -> list[Frame]:
    frames, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        i += 1
        dec.feed(data[pos : pos + size])
        pos += size
        while (f := dec.next_frame()) is not None:
            frames.append(f)
    return frames


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 200_000), min_size=1, max_size=8),
       st.sampled_from([64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, BIG]))
def test_property_large_and_small_frames_survive_any_chunking(sizes, big):
    payload = os.urandom(big)
    frames = [Frame(Kind.REQUEST, 6, 4, 1, payload), Frame(Kind.NOTIFY, 1, 1, 0, b"beat"),
              Frame(Kind.RESPONSE, 6, 4, 2, payload[::-1]), Frame(Kind.REQUEST, 0, 5, 3, b"")]
    dec = FrameDecoder()
    got = feed_in(dec, b"".join(wire(f) for f in frames), sizes)
    assert got == frames
    assert dec.buffered == 0


def test_large_payload_fed_one_byte_at_a_time():
    frame = Frame(Kind.REQUEST, 6, 4, 9, os.urandom(70 * 1024))
    data = wire(frame) + wire(Frame(Kind.NOTIFY, 1, 1, 0, b"x"))
    dec = FrameDecoder()
    got = []
    for i in range(len(data)):
        dec.feed(data[i : i + 1])
        while (f := dec.next_frame()) is not None:
            got.append(f)
        if i < HEADER_SIZE + len(frame.body) - 1:
            assert got == []
    assert got == [frame, Frame(Kind.NOTIFY, 1, 1, 0, b"x")]


def test_buffered_counts_a_large_payload_in_progress():
    data = wire(Frame(Kind.REQUEST, 6, 4, 1, os.urandom(BIG)))
    dec = FrameDecoder()
    dec.feed(data[:100_000])
    assert dec.next_frame() is None
    dec.feed(data[100_000:200_000])
    assert dec.next_frame() is None
    assert dec.buffered == 200_000 - HEADER_SIZE


def test_fed_buffers_that_change_later_do_not_change_the_payload():
    payload = os.urandom(BIG)
    data = bytearray(wire(Frame(Kind.REQUEST, 6, 4, 1, payload)))
    dec = FrameDecoder()
    dec.feed(memoryview(data)[:1000])
    assert dec.next_frame() is None
    rest = bytearray(data[1000:])
    dec.feed(rest)
    rest[:] = bytes(len(rest))  # a reused receive buffer, overwritten
    frame = dec.next_frame()
    assert frame is not None and frame.body == payload


def test_end_of_stream_inside_a_large_payload_is_a_framing_error():
    data = wire(Frame(Kind.REQUEST, 6, 4, 1, os.urandom(BIG)))
    dec = FrameDecoder()
    dec.feed(data[: len(data) // 2])
    assert dec.next_frame() is None
    dec.feed(b"")
    with pytest.raises(RemoteProtocolError, match="inside a frame payload"):
        dec.next_frame()


def test_hunting_after_a_cut_off_large_frame_finds_the_sync():
    # A guest that resets while a large frame is half in (docs/protocol.md §3.1):
    # the bytes gathered so far are scanned again like any others.
    big = wire(Frame(Kind.REQUEST, 6, 4, 1, os.urandom(BIG)))
    sync = Frame(Kind.REQUEST, 0, 1, 5, b"12345678")
    dec = FrameDecoder()
    dec.feed(big[:150_000])
    assert dec.next_frame() is None
    dec.feed(wire(sync))
    assert dec.hunt(SYNC) == sync
    assert dec.buffered == 0


def test_clear_drops_a_large_frame_in_progress():
    dec = FrameDecoder()
    dec.feed(wire(Frame(Kind.REQUEST, 6, 4, 1, os.urandom(BIG)))[:100_000])
    assert dec.next_frame() is None
    dec.clear()
    assert dec.buffered == 0
    small = Frame(Kind.NOTIFY, 1, 1, 0, b"ok")
    dec.feed(wire(small))
    assert dec.next_frame() == small


# Section: receiving into the decoder's buffer (get_buffer / buffer_updated)


def recv_in(dec: FrameDecoder, data: bytes, sizes: list[int]) -> list[Frame]:
    """What a BufferedProtocol transport does: recv_into the offered buffer."""
    frames, pos, i = [], 0, 0
    while pos < len(data):
        buf = dec.get_buffer()
        assert len(buf) > 0
        size = sizes[i % len(sizes)] if sizes else len(data)
        i += 1
        n = min(len(buf), size, len(data) - pos)
        buf[:n] = data[pos : pos + n]
        dec.buffer_updated(n)
        pos += n
        while (f := dec.next_frame()) is not None:
            frames.append(f)
    return frames


@settings(max_examples=40, deadline=None)
# Reads of a byte or a few are the byte-at-a-time test's; here they would make a
# 4 MiB payload millions of calls.
@given(st.lists(st.integers(64, 5_000_000), min_size=1, max_size=8),
       st.sampled_from([64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, BIG, 4 * 1024 * 1024]))
def test_property_received_into_buffers_in_any_sizes(sizes, big):
    payload = os.urandom(big)
    frames = [Frame(Kind.REQUEST, 6, 4, 1, payload), Frame(Kind.NOTIFY, 1, 1, 0, b"beat"),
              Frame(Kind.RESPONSE, 6, 4, 2, payload[::-1]), Frame(Kind.REQUEST, 0, 5, 3, b"")]
    dec = FrameDecoder()
    got = recv_in(dec, b"".join(wire(f) for f in frames), sizes)
    assert got == frames
    assert dec.buffered == 0


def test_a_large_payload_is_received_into_its_own_buffer_and_never_past_it():
    payload = os.urandom(BIG)
    after = wire(Frame(Kind.NOTIFY, 1, 1, 0, b"next"))
    data = wire(Frame(Kind.REQUEST, 6, 4, 7, payload)) + after
    dec = FrameDecoder()
    first = dec.get_buffer()
    first[:1000] = data[:1000]
    dec.buffer_updated(1000)
    assert dec.next_frame() is None
    rest = dec.get_buffer()
    # the rest of this payload exactly: the next frame's bytes never land in it
    assert len(rest) == BIG - (1000 - HEADER_SIZE)
    rest[:] = data[1000 : HEADER_SIZE + BIG]
    dec.buffer_updated(len(rest))
    frame = dec.next_frame()
    assert frame is not None and isinstance(frame.payload, bytearray)
    assert frame.body == payload and frame.id == 7
    tail = dec.get_buffer()
    tail[: len(after)] = after
    dec.buffer_updated(len(after))
    assert dec.next_frame() == Frame(Kind.NOTIFY, 1, 1, 0, b"next")


def test_byte_at_a_time_into_the_buffer_still_parses():
    frame = Frame(Kind.REQUEST, 6, 4, 9, os.urandom(70 * 1024))
    small = Frame(Kind.NOTIFY, 1, 1, 0, b"x")
    data = wire(frame) + wire(small)
    dec = FrameDecoder()
    assert recv_in(dec, data, [1]) == [frame, small]


def test_feeding_and_receiving_into_the_buffer_mix():
    payload = os.urandom(BIG)
    data = wire(Frame(Kind.REQUEST, 6, 4, 1, payload)) * 2
    dec = FrameDecoder()
    got = []
    pos = 0
    for i, size in enumerate([10, 100_000, 7, 200_000, 150_000, 10**6]):
        chunk = data[pos : pos + size]
        pos += len(chunk)
        if i % 2:
            dec.feed(chunk)  # a bytes-delivering transport
        else:
            while chunk:
                buf = dec.get_buffer()
                n = min(len(buf), len(chunk))
                buf[:n] = chunk[:n]
                dec.buffer_updated(n)
                chunk = chunk[n:]
                while (f := dec.next_frame()) is not None:
                    got.append(f)
        while (f := dec.next_frame()) is not None:
            got.append(f)
    assert [f.body for f in got] == [payload, payload]


def test_hunting_after_a_large_frame_cut_off_in_its_buffer_finds_the_sync():
    big = wire(Frame(Kind.REQUEST, 6, 4, 1, os.urandom(BIG)))
    sync = Frame(Kind.REQUEST, 0, 1, 5, b"12345678")
    dec = FrameDecoder()
    recv_in(dec, big[:150_000], [])
    assert dec.buffered == 150_000 - HEADER_SIZE
    recv_in(dec, wire(sync), [])
    assert dec.hunt(SYNC) == sync
    assert dec.buffered == 0


def test_end_of_stream_inside_a_payload_received_into_its_buffer():
    dec = FrameDecoder()
    recv_in(dec, wire(Frame(Kind.REQUEST, 6, 4, 1, os.urandom(BIG)))[:100_000], [])
    dec.feed(b"")
    with pytest.raises(RemoteProtocolError, match="inside a frame payload"):
        dec.next_frame()


def test_decoders_served_one_at_a_time_may_share_the_callers_scratch_buffer():
    # what a channel does (vmis.transport.channel): one scratch buffer for all its
    # thread's decoders, each decoder given it for one get_buffer/buffer_updated pair
    whole = [b"".join(bytes(b) for b in encode_frame(
        Frame(Kind.NOTIFY, 3, 1, 0, f"vm{i}".encode() * 5))) for i in range(50)]
    whole.append(b"".join(bytes(b) for b in encode_frame(
        Frame(Kind.REQUEST, 3, 1, 9, os.urandom(200_000)))))  # a large one among them
    shared = memoryview(bytearray(4096))
    decoders = [FrameDecoder() for _ in whole]
    got: list[list[Frame]] = [[] for _ in decoders]
    pos = [0] * len(whole)
    while any(p < len(w) for p, w in zip(pos, whole, strict=True)):
        for i, dec in enumerate(decoders):  # interleaved, 7 bytes or a buffer's worth each
            if pos[i] == len(whole[i]):
                continue
            buf = dec.get_buffer(shared)
            n = min(len(buf), 7 if len(buf) == len(shared) else len(buf), len(whole[i]) - pos[i])
            buf[:n] = whole[i][pos[i] : pos[i] + n]
            dec.buffer_updated(n)
            pos[i] += n
            while (f := dec.next_frame()) is not None:
                got[i].append(f)
    assert [g[0].payload for g in got[:-1]] == [f"vm{i}".encode() * 5 for i in range(50)]
    assert len(got[-1][0].payload) == 200_000 and got[-1][0].id == 9
    assert decoders[0]._own_scratch is None  # none of its own was made


# Section: answers received into the caller's buffer (answer_into)


def into_buffer(size: int = BIG) -> tuple[bytearray, memoryview]:
    buffer = bytearray(size)
    return buffer, memoryview(buffer)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(64, 400_000), min_size=1, max_size=6), st.booleans(),
       st.sampled_from([64 * 1024, 64 * 1024 + 1, BIG]))
def test_property_a_large_answer_lands_in_the_callers_buffer_in_any_chunking(sizes, fed,
                                                                              length):
    payload = os.urandom(length)
    answer = Frame(Kind.RESPONSE, 6, 4, 5, payload)
    around = [Frame(Kind.NOTIFY, 1, 1, 0, b"beat"), Frame(Kind.REQUEST, 6, 4, 5, payload)]
    buffer, view = into_buffer()
    dec = FrameDecoder()
    dec.answer_into(5, view)
    data = b"".join(wire(f) for f in [*around, answer, around[0]])
    got = (feed_in if fed else recv_in)(dec, data, sizes)
    assert got == [*around, answer, around[0]]
    # the request with the same id got a buffer of its own; the answer is the caller's
    assert not isinstance(got[1].payload, memoryview)
    into = got[2].payload
    assert isinstance(into, memoryview) and into.obj is buffer and len(into) == length
    assert buffer[:length] == payload and not any(buffer[length:])


def test_an_answer_fed_one_byte_at_a_time_lands_in_the_callers_buffer():
    payload = os.urandom(64 * 1024 + 3)
    buffer, view = into_buffer()
    dec = FrameDecoder()
    dec.answer_into(9, view)
    [frame] = recv_in(dec, wire(Frame(Kind.RESPONSE, 6, 4, 9, payload)), [1])
    assert isinstance(frame.payload, memoryview) and frame.payload.obj is buffer
    assert frame.body == payload


@pytest.mark.parametrize(("frame", "why"), [
    (Frame(Kind.RESPONSE, 6, 4, 5, b"s" * 1000), "small: received as bytes"),
    (Frame(Kind.RESPONSE, 6, 4, 5, b"L" * (BIG + 1)), "longer than the buffer"),
    (Frame(Kind.RESPONSE, 6, 4, 6, b"o" * BIG), "another request's answer"),
    (Frame(Kind.ERROR, 6, 4, 5, b"e" * BIG), "an error, not a response"),
    (Frame(Kind.REQUEST, 6, 4, 5, b"r" * BIG), "the peer's request with the same id"),
])
def test_what_is_not_a_large_response_that_fits_keeps_its_own_buffer(frame, why):
    buffer, view = into_buffer()
    dec = FrameDecoder()
    dec.answer_into(5, view)
    [got] = recv_in(dec, wire(frame), [100_000])
    assert got == frame and not isinstance(got.payload, memoryview), why
    assert not any(buffer), why


def test_a_buffer_serves_one_answer_and_a_dropped_or_cleared_one_none():
    buffer, view = into_buffer()
    dec = FrameDecoder()
    dec.answer_into(5, view)
    first, second = (Frame(Kind.RESPONSE, 6, 4, 5, os.urandom(BIG)) for _ in range(2))
    got = recv_in(dec, wire(first) + wire(second), [70_000])
    assert got == [first, second]
    assert isinstance(got[0].payload, memoryview) and isinstance(got[1].payload, bytearray)
    for forget in (lambda d: d.drop_answer_buffer(5), lambda d: d.drop_answer_buffer(),
                   FrameDecoder.clear):
        buffer, view = into_buffer()
        dec = FrameDecoder()
        dec.answer_into(5, view)
        forget(dec)
        assert recv_in(dec, wire(first), [70_000]) == [first] and not any(buffer)


def test_hunting_after_an_answer_cut_off_in_the_callers_buffer_finds_the_sync():
    buffer, view = into_buffer()
    dec = FrameDecoder()
    dec.answer_into(5, view)
    cut = wire(Frame(Kind.RESPONSE, 6, 4, 5, os.urandom(BIG)))[: HEADER_SIZE + 90_000]
    sync = Frame(Kind.REQUEST, 0, 1, 77, b"nonce")
    assert recv_in(dec, cut, [30_000]) == []
    dec.feed(wire(sync))
    assert dec.hunt(SYNC) == sync
