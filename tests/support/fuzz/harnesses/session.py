"""The session state machine (vmis.protocol.session): both ends, any bytes, any split.

May raise: RemoteProtocolError from ``next_event`` (a framing error ends the
session, docs/protocol.md §2.4). Checked, for a guest and a host whose
session is running (and a few requests of their own outstanding):

- the same events, and the same framing error, whether the stream comes
  whole or in pieces (up to the first framing error; after it the guest
  hunts, which skips bytes by design);
- every request received can be answered (send_response or send_error
  never raises) and everything the connection writes decodes as frames;
- a guest and a host that start from nothing (hunting, syncing) take any
  stream without raising anything else.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import atheris

from support.fuzz.streams import build_stream, chunks
from vmis.errors import RemoteProtocolError
from vmis.protocol.frames import FrameDecoder
from vmis.protocol.services import CONTROL, ControlOp
from vmis.protocol.session import (
    NEED_DATA,
    Connection,
    RequestReceived,
    ResponseReceived,
    Role,
    State,
    Synced,
)

NONCE = b"\x01nonce\x02\x03"


def _fixed(n: int) -> bytes:
    return NONCE[:n]


def _running(role: Role) -> Connection:
    """One end of a session that has run its handshake (SYNC, HELLO) with the other."""
    host = Connection(Role.HOST, random_bytes=_fixed)
    guest = Connection(Role.GUEST)

    def deliver(source: Connection, target: Connection) -> object:
        for buf in source.data_to_send():
            target.receive_data(buf)
        return target.next_event()

    host.start_sync()
    assert isinstance(deliver(host, guest), Synced)
    assert isinstance(deliver(guest, host), Synced)
    host.send_hello({"framework": [[1, 0]]})
    hello = deliver(host, guest)
    assert isinstance(hello, RequestReceived)
    guest.send_response(hello, b"{}")
    assert isinstance(deliver(guest, host), ResponseReceived)
    host.data_to_send()
    assert host.state is guest.state is State.RUNNING
    return guest if role is Role.GUEST else host


def _describe(event: Any) -> tuple[Any, ...]:
    # every event is a frozen dataclass: its class and its fields
    return (type(event).__name__, *dataclasses.astuple(event))


def _answer(conn: Connection, request: RequestReceived) -> None:
    # As the agent and the host do: answer every request, some with an error.
    if request.id % 3 == 0:
        conn.send_error(request, "failed", "no")
    else:
        conn.send_response(request, b'{"ok":true}')


def _written_frames(conn: Connection, peer: FrameDecoder) -> None:
    for buf in conn.data_to_send():
        peer.feed(buf)
    while peer.next_frame() is not None:
        pass


def run(conn: Connection, pieces: list[bytes]) -> list[tuple[Any, ...]]:
    """Feed *pieces*, answer requests; the events, ending with the framing error if any."""
    events: list[tuple[Any, ...]] = []
    peer = FrameDecoder()
    for piece in pieces:
        conn.receive_data(piece)
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                events.append(("framing error", str(exc)))
                _written_frames(conn, peer)
                return events
            if event is NEED_DATA:
                break
            events.append(_describe(event))
            if isinstance(event, RequestReceived):
                _answer(conn, event)
        _written_frames(conn, peer)
    return events


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    role = Role.GUEST if fdp.ConsumeBool() else Role.HOST
    ours = [(fdp.ConsumeIntInRange(0, 8), fdp.ConsumeIntInRange(0, 8)) for _ in range(3)]
    stream = build_stream(fdp)
    pieces = chunks(fdp, stream)

    def running() -> Connection:
        conn = _running(role)
        for service, op in ours:
            if (service, op) != (CONTROL, ControlOp.SYNC):
                conn.send_request(service, op, b"{}")
        conn.data_to_send()
        return conn

    whole = run(running(), [stream] if stream else [])
    split = run(running(), pieces)
    assert split == whole, "the session saw a split stream differently"

    # From nothing: a hunting guest, a host waiting for its SYNC answer.
    start = Connection(role, random_bytes=_fixed)
    if role is Role.HOST:
        start.start_sync()
        start.data_to_send()
    run(start, pieces)
    if start.state is not State.CLOSED:
        start.receive_data(b"")
        run(start, [])
