"""Two Connections wired in memory (h11's ConnectionPair): handshake, correlation, resync."""

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmis.errors import LocalProtocolError, RemoteProtocolError
from vmis.protocol import (
    CONTROL,
    Connection,
    ControlOp,
    ErrorReceived,
    NotificationReceived,
    RequestReceived,
    ResponseReceived,
    Role,
    State,
    StrayResponse,
    Synced,
    decode_json,
    encode_json,
    negotiate,
)
from vmis.protocol.frames import Frame, Kind, encode_frame


def counter_bytes():
    n = itertools.count(1)
    return lambda size: next(n).to_bytes(size, "little")


class Pair:
    """A host and a guest Connection with a fake link; `deliver` moves the bytes."""

    def __init__(self):
        self.host = Connection(Role.HOST, random_bytes=counter_bytes())
        self.guest = Connection(Role.GUEST)

    def deliver(self, src, dst, chunk=None):
        data = b"".join(src.data_to_send())
        if chunk:
            for i in range(0, len(data), chunk):
                dst.receive_data(data[i : i + chunk])
        else:
            dst.receive_data(data)
        return list(dst.events())

    def handshake(self):
        self.host.start_sync()
        assert self.deliver(self.host, self.guest) == [Synced(b"\x01" + bytes(7))]
        assert self.deliver(self.guest, self.host) == [Synced(b"\x01" + bytes(7))]
        hid = self.host.send_hello({"framework": [[1, 0]], "services": {"heartbeat": [[1, 0]]}})
        [hello] = self.deliver(self.host, self.guest)
        assert isinstance(hello, RequestReceived) and hello.op == ControlOp.HELLO
        self.guest.send_response(hello, encode_json({"framework": [1, 0], "services": {}}))
        [answer] = self.deliver(self.guest, self.host)
        assert isinstance(answer, ResponseReceived) and answer.id == hid
        assert self.host.state is State.RUNNING and self.guest.state is State.RUNNING


def test_handshake_reaches_running():
    Pair().handshake()


def test_requests_correlate_in_any_order_both_ways():
    p = Pair()
    p.handshake()
    a = p.host.send_request(2, 1, b"a")
    b = p.host.send_request(2, 2, b"b")
    ra, rb = p.deliver(p.host, p.guest)
    p.guest.send_response(rb, b"B")
    p.guest.send_error(ra, "not-found", "no key a")
    got = p.deliver(p.guest, p.host)
    assert got == [ResponseReceived(2, 2, b, b"B"), ErrorReceived(2, 1, a, "not-found", "no key a")]
    assert p.host.outstanding == 0
    # guest-initiated request and notification
    g = p.guest.send_request(6, 9, b"pull")
    p.guest.send_notification(1, 1, b"beat")
    req, note = p.deliver(p.guest, p.host)
    assert req == RequestReceived(6, 9, g, b"pull")
    assert note == NotificationReceived(1, 1, b"beat")


def test_stray_and_mismatched_answers():
    p = Pair()
    p.handshake()
    rid = p.host.send_request(2, 1)
    [req] = p.deliver(p.host, p.guest)
    p.host.forget(rid)
    p.guest.send_response(req)
    assert p.deliver(p.guest, p.host) == [StrayResponse(2, 1, rid)]
    rid = p.host.send_request(2, 1)
    p.host.data_to_send()
    p.host.receive_data(b"".join(encode_frame(Frame(Kind.RESPONSE, 3, 1, rid))))
    with pytest.raises(RemoteProtocolError, match="the request was"):
        p.host.next_event()
    assert p.host.state is State.CLOSED


def test_a_large_answer_arrives_in_the_requests_buffer_until_it_is_forgotten():
    p = Pair()
    p.handshake()
    data = os.urandom(200_000)
    buffer = bytearray(256 * 1024)
    rid = p.host.send_request(6, 4, b"read", into=memoryview(buffer))
    [req] = p.deliver(p.host, p.guest)
    p.guest.send_response(req, data)
    [answer] = p.deliver(p.guest, p.host, chunk=50_000)
    assert isinstance(answer, ResponseReceived) and answer.id == rid
    assert isinstance(answer.payload, memoryview) and answer.payload.obj is buffer
    assert answer.payload == data
    # forgotten (the caller gave up): its answer is a stray and the buffer is left alone
    buffer = bytearray(256 * 1024)
    rid = p.host.send_request(6, 4, b"read", into=memoryview(buffer))
    [req] = p.deliver(p.host, p.guest)
    p.host.forget(rid)
    p.guest.send_response(req, data)
    assert p.deliver(p.guest, p.host, chunk=50_000) == [StrayResponse(6, 4, rid)]
    assert not any(buffer)


def test_requests_before_hello_get_not_ready():
    p = Pair()
    p.host.start_sync()
    p.deliver(p.host, p.guest)
    p.deliver(p.guest, p.host)
    # a host that skips HELLO (or a confused one) gets not-ready, not silence
    p.guest.receive_data(b"".join(encode_frame(Frame(Kind.REQUEST, 2, 1, 50, b""))))
    assert list(p.guest.events()) == []
    p.host.receive_data(b"".join(p.guest.data_to_send()))
    assert list(p.host.events()) == [StrayResponse(2, 1, 50)]
    with pytest.raises(LocalProtocolError):
        p.host.send_request(2, 1)


def test_guest_resyncs_through_stale_bytes_and_a_new_session():
    p = Pair()
    p.handshake()
    p.host.send_request(6, 1, b"x" * 5000)
    stale = b"".join(p.host.data_to_send())[:3000]  # cut mid-frame by a host restart
    host2 = Connection(Role.HOST, random_bytes=counter_bytes())
    host2.start_sync()
    first_try = b"".join(host2.data_to_send())
    host2.start_sync(flush=5000)  # the retry flushes the guest's half frame
    p.guest.receive_data(stale + first_try + b"".join(host2.data_to_send()))
    # the half frame's "payload" is parsed as garbage until the SYNC: the
    # guest drops the session and hunts, then finds the new SYNC
    events = []
    for _ in range(3):
        try:
            events.extend(p.guest.events())
            break
        except RemoteProtocolError:
            assert p.guest.state is State.HUNTING
    # The cut frame completes with the first SYNC and part of the flush as
    # its "payload" (it belongs to the dead session); the rest of the flush
    # is padding, and the second SYNC replaces the running session.
    assert [type(e) for e in events] == [RequestReceived, Synced]
    assert events[-1] == Synced((2).to_bytes(8, "little"), replaced=True)


def test_host_skips_answers_to_earlier_sync_attempts():
    host = Connection(Role.HOST, random_bytes=counter_bytes())
    guest = Connection(Role.GUEST)
    host.start_sync()
    first = b"".join(host.data_to_send())
    host.start_sync()  # the first attempt timed out
    second = b"".join(host.data_to_send())
    guest.receive_data(first)
    assert [e.nonce for e in guest.events()] == [(1).to_bytes(8, "little")]
    guest.receive_data(second)
    [e] = guest.events()
    assert e.replaced is False  # not running yet: nothing was replaced
    host.receive_data(b"garbage" + b"".join(guest.data_to_send()))
    assert list(host.events()) == [Synced((2).to_bytes(8, "little"))]
    assert host.state is State.NEGOTIATING


def test_refused_hello_leaves_the_guest_hunting():
    p = Pair()
    p.host.start_sync()
    p.deliver(p.host, p.guest)
    p.deliver(p.guest, p.host)
    p.host.send_hello({"framework": [[9, 0]]})
    [hello] = p.deliver(p.host, p.guest)
    p.guest.send_error(hello, "protocol-mismatch", "no common framework")
    [err] = p.deliver(p.guest, p.host)
    assert isinstance(err, ErrorReceived) and err.code == "protocol-mismatch"
    assert p.guest.state is State.HUNTING and p.host.state is State.NEGOTIATING


def test_new_sync_replaces_a_running_guest_session():
    p = Pair()
    p.handshake()
    p.host = Connection(Role.HOST, random_bytes=counter_bytes())
    p.host.start_sync()
    [e] = p.deliver(p.host, p.guest)
    assert e.replaced is True and p.guest.state is State.NEGOTIATING


def test_guest_cannot_sync_and_host_rejects_hello_requests():
    with pytest.raises(LocalProtocolError):
        Connection(Role.GUEST).start_sync()
    p = Pair()
    p.handshake()
    p.host.receive_data(
        b"".join(encode_frame(Frame(Kind.REQUEST, CONTROL, ControlOp.HELLO, 4, b"{}")))
    )
    with pytest.raises(RemoteProtocolError):
        p.host.next_event()


def test_error_answer_with_malformed_body_is_still_an_error():
    p = Pair()
    p.handshake()
    rid = p.host.send_request(2, 1)
    p.host.data_to_send()
    p.host.receive_data(b"".join(encode_frame(Frame(Kind.ERROR, 2, 1, rid, b"not json"))))
    [e] = p.host.events()
    assert isinstance(e, ErrorReceived) and e.code == "failed"


def test_json_helpers():
    assert decode_json(encode_json({"k": "välue"})) == {"k": "välue"}
    for bad in (b"[1]", b"\xff", b"{"):
        with pytest.raises(RemoteProtocolError):
            decode_json(bad)


def test_negotiation_picks_highest_common_and_reports_missing():
    result = negotiate(
        [(2, 0), (1, 0)],
        {"heartbeat": [(3, 0), (1, 0)], "kvp": [(2, 0)], "vss": [(1, 0)]},
        [(1, 0)],
        {"heartbeat": [(1, 0), (3, 0)], "kvp": [(1, 0)], "timesync": [(1, 0)]},
    )
    assert result is not None
    assert result.framework == (1, 0)
    assert result.services == {"heartbeat": (3, 0), "kvp": None}
    assert negotiate([(2, 0)], {}, [(1, 0)], {}) is None


@settings(max_examples=50)
@given(st.lists(st.binary(min_size=0, max_size=200), max_size=20), st.integers(1, 50))
def test_property_session_survives_chunking(payloads, chunk):
    p = Pair()
    p.handshake()
    ids = [p.host.send_request(2, 1, body) for body in payloads]
    reqs = p.deliver(p.host, p.guest, chunk)
    assert [r.payload for r in reqs] == payloads
    for r in reversed(reqs):
        p.guest.send_response(r, r.payload[::-1])
    answers = p.deliver(p.guest, p.host, chunk)
    assert {a.id: a.payload for a in answers} == {i: b[::-1] for i, b in zip(ids, payloads)}


def test_json_carries_names_that_are_not_utf8():
    # A Linux file name is bytes: surrogateescape strings travel as \\uDCxx
    # escapes and come back as the same string, hence the same bytes.
    name = b"caf\xe9-\xff.txt".decode("utf-8", "surrogateescape")
    payload = encode_json({"name": name, "plain": "ünïcode"})
    assert payload.decode("ascii")  # escaped, still valid UTF-8 JSON
    assert decode_json(payload) == {"name": name, "plain": "ünïcode"}
    assert os.fsencode(decode_json(payload)["name"]) == b"caf\xe9-\xff.txt"
    assert encode_json({"a": "ü"}) == '{"a":"ü"}'.encode()  # the usual case unescaped
