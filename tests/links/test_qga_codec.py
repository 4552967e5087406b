"""qemu-ga's wire protocol, sans-IO (vmis.links.qemu_ga.codec), byte by byte.

The transcripts are what qemu-ga 7.2 wrote when this codec's client sent the
same requests (taken with ``qemu-ga -v`` in the test sandbox): the id-less
error it answers the 0xFF with, the 0xFF before a guest-sync-delimited reply,
one JSON object per line with the request's id.
"""

from __future__ import annotations

import itertools
import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmis.errors import LocalProtocolError, RemoteProtocolError
from vmis.links.qemu_ga.codec import (
    COMMAND_TIMEOUTS,
    DEFAULT_TIMEOUT,
    ErrorReply,
    Expired,
    QgaCodec,
    Reply,
    Stray,
    Synced,
)

#: what qemu-ga answers the 0xFF a client sends before guest-sync-delimited
FF_ERROR = b'{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}\n'


def synced_codec(seed: int = 1) -> QgaCodec:
    codec = QgaCodec(random.Random(seed))
    wire = codec.sync(now=0.0)
    sync_id = json.loads(wire[1:])["arguments"]["id"]
    assert codec.feed(FF_ERROR + b"\xff" + f'{{"return": {sync_id}}}\n'.encode()) == [
        Synced(sync_id)]
    return codec


def sync_id_of(wire: bytes) -> int:
    assert wire[0] == 0xFF
    body = json.loads(wire[1:])
    assert body["execute"] == "guest-sync-delimited"
    return int(body["arguments"]["id"])


def test_a_sync_attempt_is_the_sentinel_then_a_fresh_random_id():
    codec = QgaCodec(random.Random(7))
    ids = [sync_id_of(codec.sync(now=0.0)) for _ in range(20)]
    assert len(set(ids)) == 20 and all(0 < i < 2**53 for i in ids)
    assert codec.sync_deadline == COMMAND_TIMEOUTS["guest-sync-delimited"]


def test_the_hunt_skips_everything_up_to_the_sentinel_and_stale_sync_replies():
    codec = QgaCodec(random.Random(3))
    old = sync_id_of(codec.sync(now=0.0))
    new = sync_id_of(codec.sync(now=2.0))
    assert old != new
    # A previous client's half-read reply, then both attempts answered in order
    # (they waited in QEMU while the guest's port was closed).
    stream = (b'"buf-b64": "QUJD", "eof": false}, "id": 9}\n{"return": {}}\n'
              + FF_ERROR + b"\xff" + f'{{"return": {old}}}\n'.encode()
              + FF_ERROR + b"\xff" + f'{{"return": {new}}}\n'.encode())
    events = codec.feed(stream)
    assert [e for e in events if not isinstance(e, Stray)] == [Synced(new)]
    assert [e.why for e in events if isinstance(e, Stray)] == ["stale while hunting"]
    assert not codec.hunting and codec.sync_deadline is None


def test_nothing_but_a_sync_goes_out_while_hunting():
    codec = QgaCodec(random.Random(1))
    codec.sync(now=0.0)
    with pytest.raises(LocalProtocolError):
        codec.request("guest-ping", None, now=0.0)


def test_requests_carry_ids_and_replies_are_matched_by_them():
    codec = synced_codec()
    first, wire = codec.request("guest-ping", None, now=0.0)
    assert json.loads(wire) == {"execute": "guest-ping", "id": first}
    second, wire = codec.request("guest-file-open", {"path": "/tmp/x", "mode": "r"}, now=0.0)
    assert json.loads(wire) == {"execute": "guest-file-open",
                                "arguments": {"path": "/tmp/x", "mode": "r"}, "id": second}
    assert codec.pending == 2
    events = codec.feed(
        f'{{"return": {{}}, "id": {first}}}\n'.encode()
        + f'{{"error": {{"class": "GenericError", "desc": "failed to open file \'/tmp/x\' '
          f'(mode: \'r\'): No such file or directory"}}, "id": {second}}}\n'.encode())
    assert events == [
        Reply(first, "guest-ping", {}),
        ErrorReply(second, "guest-file-open", "GenericError",
                   "failed to open file '/tmp/x' (mode: 'r'): No such file or directory"),
    ]
    assert codec.pending == 0


def test_a_line_that_answers_nothing_is_a_stray():
    codec = synced_codec()
    request_id, _ = codec.request("guest-ping", None, now=0.0)
    events = codec.feed(b'{"return": {}, "id": 12345678901}\n' + FF_ERROR + b"[1, 2]\n"
                        + b"garbage\n" + f'{{"return": {{}}, "id": {request_id}}}\n'.encode())
    assert [e.why for e in events if isinstance(e, Stray)] == [
        "no pending request has id 12345678901", "no id", "not a JSON object", "not JSON"]
    assert events[-1] == Reply(request_id, "guest-ping", {})


def test_a_no_reply_command_is_done_when_a_later_request_is_answered():
    codec = synced_codec()
    shutdown, _ = codec.request("guest-shutdown", {"mode": "powerdown"}, now=0.0)
    ping, _ = codec.request("guest-ping", None, now=0.0)
    assert codec.feed(f'{{"return": {{}}, "id": {ping}}}\n'.encode()) == [
        Reply(shutdown, "guest-shutdown", None), Reply(ping, "guest-ping", {})]


def test_a_no_reply_command_that_fails_answers_with_its_error():
    codec = synced_codec()
    shutdown, _ = codec.request("guest-shutdown", None, now=0.0)
    ping, _ = codec.request("guest-ping", None, now=0.0)
    events = codec.feed(
        f'{{"error": {{"class": "CommandNotFound", "desc": "Command guest-shutdown has been '
        f'disabled"}}, "id": {shutdown}}}\n{{"return": {{}}, "id": {ping}}}\n'.encode())
    assert events == [
        ErrorReply(shutdown, "guest-shutdown", "CommandNotFound",
                   "Command guest-shutdown has been disabled"),
        Reply(ping, "guest-ping", {})]


def test_deadlines_per_command_and_a_late_reply_is_dropped():
    codec = synced_codec()
    ping, _ = codec.request("guest-ping", None, now=100.0)
    freeze, _ = codec.request("guest-fsfreeze-freeze", None, now=100.0)
    other, _ = codec.request("guest-get-osinfo", None, now=100.0)
    short, _ = codec.request("guest-file-read", {"handle": 1}, now=100.0, timeout=1.0)
    assert codec.next_deadline() == 101.0
    assert codec.expire(104.0) == [Expired(short, "guest-file-read", 1.0)]
    assert codec.expire(100.0 + COMMAND_TIMEOUTS["guest-ping"]) == [
        Expired(ping, "guest-ping", COMMAND_TIMEOUTS["guest-ping"])]
    assert codec.expire(100.0 + DEFAULT_TIMEOUT) == [
        Expired(other, "guest-get-osinfo", DEFAULT_TIMEOUT)]
    assert COMMAND_TIMEOUTS["guest-fsfreeze-freeze"] >= 900  # never libvirt's 5 s
    assert codec.next_deadline() == 100.0 + COMMAND_TIMEOUTS["guest-fsfreeze-freeze"]
    # the ping's reply comes after all: it is no one's any more
    events = codec.feed(f'{{"return": {{}}, "id": {ping}}}\n'.encode())
    assert [type(e) for e in events] == [Stray]
    assert codec.feed(f'{{"return": 2, "id": {freeze}}}\n'.encode()) == [
        Reply(freeze, "guest-fsfreeze-freeze", 2)]


def test_forget_drops_a_request():
    codec = synced_codec()
    request_id, _ = codec.request("guest-file-read", {"handle": 1}, now=0.0)
    codec.forget(request_id)
    assert codec.pending == 0 and codec.next_deadline() is None
    assert isinstance(codec.feed(f'{{"return": 1, "id": {request_id}}}\n'.encode())[0], Stray)


def test_a_sentinel_cuts_off_a_line_in_the_middle():
    codec = synced_codec()
    request_id, _ = codec.request("guest-ping", None, now=0.0)
    events = codec.feed(b'{"return": {}, "i' + b"\xff"
                        + f'{{"return": {{}}, "id": {request_id}}}\n'.encode())
    assert isinstance(events[0], Stray) and events[0].why == "cut off by a sentinel"
    assert events[1] == Reply(request_id, "guest-ping", {})


def test_a_sync_needs_an_idle_connection():
    codec = synced_codec()
    codec.request("guest-ping", None, now=0.0)
    with pytest.raises(LocalProtocolError):
        codec.sync(now=0.0)


def test_a_line_over_the_limit_is_refused():
    codec = QgaCodec(random.Random(1), max_line=1000)
    sync_id = sync_id_of(codec.sync(now=0.0))
    codec.feed(b"\xff" + f'{{"return": {sync_id}}}\n'.encode())
    codec.feed(b"x" * 900)
    with pytest.raises(RemoteProtocolError):
        codec.feed(b"x" * 200)


def test_garbage_before_the_first_sentinel_is_never_buffered():
    codec = QgaCodec(random.Random(1), max_line=1000)
    codec.sync(now=0.0)
    for _ in range(100):
        assert codec.feed(b"y" * 1000) == []  # no limit hit: skipped, not kept


def transcript(codec: QgaCodec) -> tuple[bytes, list[int]]:
    """A whole session's bytes from qemu-ga: stale data, two sync replies, replies."""
    old = sync_id_of(codec.sync(now=0.0))
    new = sync_id_of(codec.sync(now=2.0))
    stream = (b'stale half line from an earlier client"}\n' + FF_ERROR + b"\xff"
              + f'{{"return": {old}}}\n'.encode() + FF_ERROR + b"\xff"
              + f'{{"return": {new}}}\n'.encode())
    return stream, [new]


def run_session(chunker) -> list[object]:
    """Feed a whole session through a codec, each part cut into pieces by *chunker*."""
    codec = QgaCodec(random.Random(11))
    stream, _ = transcript(codec)
    events: list[object] = []
    for chunk in chunker(stream):
        events += codec.feed(chunk)
    ids = [codec.request(name, None, now=0.0)[0]
           for name in ("guest-info", "guest-shutdown", "guest-file-read")]
    big = "A" * 100_000
    tail = (f'{{"return": {{"version": "7.2.22"}}, "id": {ids[0]}}}\n'
            f'{{"return": {{"count": 75000, "buf-b64": "{big}", "eof": false}}, "id": {ids[2]}}}\n'
            ).encode()
    for chunk in chunker(tail):
        events += codec.feed(chunk)
    return events


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def test_one_byte_at_a_time_gives_the_same_events_as_one_block():
    events = run_session(whole)
    assert run_session(bytewise) == events
    assert [type(e).__name__ for e in events if not isinstance(e, Stray)] == [
        "Synced", "Reply", "Reply", "Reply"]
    replies = [e for e in events if isinstance(e, Reply)]
    assert [r.command for r in replies] == ["guest-info", "guest-shutdown", "guest-file-read"]
    assert replies[1].value is None and len(replies[2].value["buf-b64"]) == 100_000


@given(st.lists(st.integers(min_value=0, max_value=200_000), max_size=40))
def test_any_split_of_the_stream_gives_the_same_events(cuts):
    assert run_session(lambda data: split(data, cuts)) == run_session(whole)
