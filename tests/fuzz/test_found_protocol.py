"""Defects the fuzz harnesses found in the protocol layer, each pinned by its input.

Harnesses: session (a HELLO in a running session), wire_helpers (the json
codec, the host's reading of a HELLO answer).
"""

from __future__ import annotations

import pytest

from vmis.errors import RemoteProtocolError
from vmis.links.vmis_agent import _hello_answer
from vmis.protocol import (
    Connection,
    RequestReceived,
    Role,
    State,
    decode_json,
    encode_json,
)
from vmis.protocol.frames import Frame, FrameDecoder, Kind, encode_frame
from vmis.protocol.services import ControlOp


def _running_pair() -> tuple[Connection, Connection]:
    host, guest = Connection(Role.HOST), Connection(Role.GUEST)

    def pump(a: Connection, b: Connection) -> list[object]:
        for buf in a.data_to_send():
            b.receive_data(buf)
        return list(b.events())

    host.start_sync()
    pump(host, guest)
    pump(guest, host)
    host.send_hello({"framework": [[1, 0]]})
    [hello] = pump(host, guest)
    assert isinstance(hello, RequestReceived)
    guest.send_response(hello, b"{}")
    pump(guest, host)
    assert host.state is guest.state is State.RUNNING
    return host, guest


def _hello_frame(rid: int) -> bytes:
    return b"".join(encode_frame(Frame(Kind.REQUEST, 0, ControlOp.HELLO, rid,
                                       encode_json({"framework": [[1, 0]]}))))


def test_a_hello_in_a_running_session_is_answered_and_the_session_stays_running():
    # session harness: the guest's answer raised LocalProtocolError ("guest cannot
    # hello answered while running") after queueing it; the agent's task died with it
    _, guest = _running_pair()
    guest.receive_data(_hello_frame(77))
    [again] = list(guest.events())
    assert isinstance(again, RequestReceived) and again.op == ControlOp.HELLO
    guest.send_response(again, b'{"framework":[1,0]}')
    assert guest.state is State.RUNNING
    answer = FrameDecoder()
    for buf in guest.data_to_send():
        answer.feed(buf)
    frame = answer.next_frame()
    assert frame is not None and (frame.kind, frame.id) == (Kind.RESPONSE, 77)


def test_a_refused_hello_in_a_running_session_leaves_the_guest_hunting():
    _, guest = _running_pair()
    guest.receive_data(_hello_frame(78))
    [again] = list(guest.events())
    guest.send_error(again, "protocol-mismatch", "no common framework version")
    assert guest.state is State.HUNTING


@pytest.mark.parametrize("payload", [
    b'{"seq": ' + b"9" * 5000 + b"}",  # past int()'s 4300 digits: ValueError
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the stack: RecursionError
], ids=["5000-digit number", "100000 nested arrays"])
def test_json_past_what_python_parses_is_a_protocol_error(payload):
    # wire_helpers harness: decode_json let ValueError and RecursionError out, so a
    # handler's "bad payload" path (which catches ProtocolError) did not run
    with pytest.raises(RemoteProtocolError, match="not valid JSON"):
        decode_json(payload)


def test_a_lone_surrogate_goes_out_as_a_json_escape_and_comes_back_unchanged():
    # host_handlers and guest_handlers harnesses: a peer's "\ud800" echoed back (a
    # VSS checkpoint id, an fcopy path) raised UnicodeEncodeError in encode_json
    body = {"id": "cp-\ud800-\udcff", "path": "/tmp/é"}
    wire = encode_json(body)
    assert b"\\ud800" in wire
    assert decode_json(wire) == body
    assert encode_json({"path": "/tmp/é"}) == '{"path":"/tmp/é"}'.encode()  # UTF-8 otherwise


@pytest.mark.parametrize("answer", [
    {"services": ["heartbeat"]},
    {"services": "heartbeat"},
    {"agent": "vmis 0.1"},
    {"agent": [1, 2]},
])
def test_a_hello_answer_whose_parts_are_not_objects_is_a_protocol_error(answer):
    # wire_helpers harness: AttributeError ('list' object has no attribute 'items');
    # a non-object "agent" was kept and failed later in the session's log line
    with pytest.raises(RemoteProtocolError, match="not an object"):
        _hello_answer(answer)


def test_a_well_formed_hello_answer_still_reads():
    hello = _hello_answer({"agent": {"version": "0.1.0"}, "services": {
        "kvp": {"version": [1, 0], "state": "running", "startup": "automatic"},
        "unknown": {"version": [9, 9]}}})
    assert hello.agent == {"version": "0.1.0"} and list(hello.services) == ["kvp"]
