"""Session state machine of docs/protocol.md §3, sans-IO.

A :class:`Connection` is one end of a host-guest session. The caller owns the
I/O: it feeds received bytes to :meth:`Connection.receive_data`, drains
events with :meth:`Connection.next_event` until it returns :data:`NEED_DATA`,
and writes whatever :meth:`Connection.data_to_send` returns. The connection
answers the protocol's own housekeeping (SYNC, ``not-ready``) by itself, so
the caller only ever sees events meant for it.

Rule 1: every state transition lives in this file, in ``_TRANSITIONS``; the
drawing in docs/protocol.md §3.3 is that table. That is why this module
stays whole at a little over 500 lines: the state machine and the events it
turns frames into are read together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from vmis.errors import LocalProtocolError, RemoteProtocolError
from vmis.protocol.frames import (
    DEFAULT_MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    Kind,
    Payload,
    Received,
    encode_frame,
)
from vmis.protocol.services import CONTROL, ControlOp

__all__ = [
    "NEED_DATA",
    "Connection",
    "ErrorReceived",
    "Event",
    "NeedData",
    "NotificationReceived",
    "RequestReceived",
    "ResponseReceived",
    "Role",
    "State",
    "StrayResponse",
    "Synced",
    "decode_json",
    "decode_json_raw",
    "encode_json",
    "encode_json_raw",
]

_NONCE_SIZE = 8
_MAX_ID = 0xFFFFFFFF


class Role(Enum):
    """Which end of the channel a connection is; the host always dials."""

    HOST = "host"
    GUEST = "guest"


class State(Enum):
    """Session states, docs/protocol.md §3.3."""

    #: guest: scanning for a SYNC frame; host: nothing sent yet
    HUNTING = "hunting"
    #: host: SYNC sent, waiting for the matching answer
    SYNCING = "syncing"
    #: SYNC done, HELLO not yet answered
    NEGOTIATING = "negotiating"
    #: HELLO answered: any request may flow
    RUNNING = "running"
    #: host only: the session ended (EOF or framing error); make a new Connection
    CLOSED = "closed"


#: (role, state, trigger) -> new state. Triggers are the names used below.
_TRANSITIONS: dict[tuple[Role, State, str], State] = {
    (Role.HOST, State.HUNTING, "send_sync"): State.SYNCING,
    (Role.HOST, State.SYNCING, "send_sync"): State.SYNCING,
    (Role.HOST, State.SYNCING, "sync_acked"): State.NEGOTIATING,
    (Role.HOST, State.NEGOTIATING, "hello_answered"): State.RUNNING,
    (Role.GUEST, State.HUNTING, "sync_received"): State.NEGOTIATING,
    (Role.GUEST, State.NEGOTIATING, "sync_received"): State.NEGOTIATING,
    (Role.GUEST, State.RUNNING, "sync_received"): State.NEGOTIATING,
    (Role.GUEST, State.NEGOTIATING, "hello_answered"): State.RUNNING,
    # docs/protocol.md §3.2: a HELLO in a running session is negotiated again
    (Role.GUEST, State.RUNNING, "hello_answered"): State.RUNNING,
    (Role.GUEST, State.NEGOTIATING, "reset"): State.HUNTING,
    (Role.GUEST, State.RUNNING, "reset"): State.HUNTING,
    (Role.GUEST, State.HUNTING, "reset"): State.HUNTING,
}


# Section: events


class NeedData:
    """Sentinel: :meth:`Connection.next_event` needs more bytes."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


@dataclass(frozen=True, slots=True)
class Synced:
    """The resync handshake completed (host: our nonce came back; guest: SYNC answered).

    On the guest, ``replaced`` says a running session was dropped for the new
    one: pending work of the old session must be abandoned.
    """

    nonce: bytes
    replaced: bool = False


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """The peer sent a request; answer it with send_response or send_error."""

    service: int
    op: int
    id: int
    #: ``bytearray`` when large (docs/protocol.md §2.2), ``bytes`` otherwise
    payload: Received


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """The answer to one of our requests."""

    service: int
    op: int
    id: int
    #: ``bytearray`` when large (docs/protocol.md §2.2), ``bytes`` otherwise; a
    #: view of the request's buffer when it gave one (Connection.send_request)
    payload: Received


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    """The error answer to one of our requests (docs/protocol.md §5)."""

    service: int
    op: int
    id: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class NotificationReceived:
    """A one-way message from the peer."""

    service: int
    op: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """An answer whose id matches no outstanding request (log and drop, §2.3)."""

    service: int
    op: int
    id: int


Event = (
    Synced
    | RequestReceived
    | ResponseReceived
    | ErrorReceived
    | NotificationReceived
    | StrayResponse
)


# Section: json helpers


def encode_json(obj: Any) -> bytes:
    """Encode a json payload (docs/protocol.md §2.2).

    A string may hold bytes that are not UTF-8 as lone surrogates (a file
    name decoded with ``surrogateescape``): such a payload is written with
    ``\\uXXXX`` escapes, which decode back to the same string.
    """
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def decode_json(payload: Received) -> dict[str, Any]:
    """Decode a json payload that must be an object.

    :raise RemoteProtocolError: When it is not valid UTF-8 JSON or not an object.
    """
    try:
        obj = json.loads(bytes(payload) if isinstance(payload, memoryview) else payload)
    except (ValueError, RecursionError) as exc:
        # ValueError: not UTF-8, not JSON, or a number longer than Python
        # converts (4300 digits); RecursionError: nested deeper than the stack
        raise RemoteProtocolError(f"payload is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("payload is not a JSON object")
    return obj


def encode_json_raw(obj: Any, raw: bytes | memoryview = b"") -> tuple[bytes, bytes | memoryview]:
    """Encode a json+raw payload (docs/protocol.md §2.2); the raw bytes are not copied."""
    head = encode_json(obj)
    return (len(head).to_bytes(4, "little") + head, raw)


def decode_json_raw(payload: Received) -> tuple[dict[str, Any], memoryview]:
    """Split a json+raw payload into its object and a view of the raw bytes.

    :raise RemoteProtocolError: When the length prefix or the JSON is malformed.
    """
    if len(payload) < 4:
        raise RemoteProtocolError("json+raw payload shorter than its length prefix")
    size = int.from_bytes(payload[:4], "little")
    if size > len(payload) - 4:
        raise RemoteProtocolError("json+raw length prefix exceeds the payload")
    view = memoryview(payload)
    return decode_json(bytes(view[4 : 4 + size])), view[4 + size :]


# Section: the connection


def _token_bytes(n: int) -> bytes:
    # Imported when a host makes its first nonce: secrets loads hashlib, hmac and
    # random, 8 ms of every command line that reads the protocol's constants.
    import secrets

    return secrets.token_bytes(n)


class Connection:
    """One end of a vmis session (docs/protocol.md §3).

    :param role: ``Role.HOST`` dials and starts the resync; ``Role.GUEST`` hunts.
    :param max_payload: our own receive limit, announced in HELLO.
    :param random_bytes: nonce source, injectable for deterministic tests
        (default ``secrets.token_bytes``).
    """

    def __init__(
        self,
        role: Role,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        random_bytes: Callable[[int], bytes] = _token_bytes,
    ) -> None:
        #: which end this is
        self.role = role
        self._state = State.HUNTING
        self._decoder = FrameDecoder(max_payload)
        self._random = random_bytes
        self._out: list[bytes | memoryview] = []
        self._nonce = b""
        self._next_id = 1
        #: request id -> (service, op) of our requests still waiting for an answer
        self._outstanding: dict[int, tuple[int, int]] = {}
        self._hello_id = 0
        #: the peer's receive limit; until HELLO we assume the protocol minimum
        #: is safe only for control traffic, which stays far below it
        self.peer_max_payload = DEFAULT_MAX_PAYLOAD

    # Section: public state

    @property
    def state(self) -> State:
        """The current :class:`State`."""
        return self._state

    @property
    def max_payload(self) -> int:
        """Our own receive limit."""
        return self._decoder.max_payload

    @property
    def outstanding(self) -> int:
        """Number of our requests still waiting for an answer."""
        return len(self._outstanding)

    def _go(self, trigger: str) -> None:
        try:
            self._state = _TRANSITIONS[(self.role, self._state, trigger)]
        except KeyError:
            raise LocalProtocolError(
                f"{self.role.value} cannot {trigger.replace('_', ' ')} while {self._state.value}"
            ) from None

    # Section: sending

    def start_sync(self, flush: int = 0) -> bytes:
        """Host: queue a SYNC with a fresh nonce (docs/protocol.md §3.1).

        Call again after the sync timeout; answers to earlier nonces are then
        skipped.

        :param flush: zero bytes to send ahead of the SYNC. A guest that is
            still waiting for the payload of a frame cut off by an earlier
            host swallows them instead of the SYNC (docs/protocol.md §3.1).
        :return: the nonce sent.
        :raise LocalProtocolError: When called on the guest or after the handshake.
        """
        if self.role is not Role.HOST:
            raise LocalProtocolError("only the host starts a resync")
        self._go("send_sync")
        self._nonce = self._random(_NONCE_SIZE)
        if flush:
            self._out.append(bytes(flush))
        # A SYNC is a request but is not tracked: its answer is found by
        # hunting, not by id, so stale answers can never match.
        self._emit(Frame(Kind.REQUEST, CONTROL, ControlOp.SYNC, self._take_id(), self._nonce))
        return self._nonce

    def send_hello(self, offer: dict[str, Any]) -> int:
        """Host: queue the HELLO request (docs/protocol.md §3.2).

        :return: its request id; the answer arrives as a ResponseReceived or
            ErrorReceived event with that id.
        """
        if self.role is not Role.HOST or self._state is not State.NEGOTIATING:
            raise LocalProtocolError(f"HELLO cannot be sent while {self._state.value}")
        self._hello_id = self._request(CONTROL, ControlOp.HELLO, encode_json(offer))
        return self._hello_id

    def send_request(self, service: int, op: int, payload: Payload = b"",
                     into: memoryview | None = None) -> int:
        """Queue a request.

        :param into: where a large answer is received (FrameDecoder.answer_into):
            its payload is then a view of *into*.
        :return: the request id to match the answer with.
        :raise LocalProtocolError: Before the session is RUNNING, or when the
            payload exceeds the peer's limit.
        """
        self._require_running()
        rid = self._request(service, op, payload)
        if into is not None:
            self._decoder.answer_into(rid, into)
        return rid

    def send_response(self, request: RequestReceived, payload: Payload = b"") -> None:
        """Queue the successful answer to *request*."""
        self._emit(Frame(Kind.RESPONSE, request.service, request.op, request.id, payload))
        if request.service == CONTROL and request.op == ControlOp.HELLO:
            self._go("hello_answered")

    def send_error(self, request: RequestReceived, code: str, message: str) -> None:
        """Queue an error answer to *request* (codes: docs/protocol.md §5.1)."""
        body = encode_json({"code": code, "message": message})
        self._emit(Frame(Kind.ERROR, request.service, request.op, request.id, body))
        if request.service == CONTROL and request.op == ControlOp.HELLO:
            # docs/protocol.md §3.2: a refused HELLO leaves the guest hunting
            self._go("reset")

    def send_notification(self, service: int, op: int, payload: Payload = b"") -> None:
        """Queue a notification.

        :raise LocalProtocolError: Before the session is RUNNING.
        """
        self._require_running()
        self._emit(Frame(Kind.NOTIFY, service, op, 0, payload))

    def forget(self, request_id: int) -> None:
        """Stop waiting for a request's answer (the caller gave up on it)."""
        self._outstanding.pop(request_id, None)
        self._decoder.drop_answer_buffer(request_id)

    def data_to_send(self) -> list[bytes | memoryview]:
        """Take the buffers queued for the peer, in order; write them as they are."""
        out, self._out = self._out, []
        return out

    def _require_running(self) -> None:
        if self._state is not State.RUNNING:
            raise LocalProtocolError(f"the session is {self._state.value}, not running")

    def _request(self, service: int, op: int, payload: Payload) -> int:
        rid = self._take_id()
        self._emit(Frame(Kind.REQUEST, service, op, rid, payload))
        self._outstanding[rid] = (service, op)
        return rid

    def _take_id(self) -> int:
        rid = self._next_id
        while rid in self._outstanding:
            rid = rid % _MAX_ID + 1
        self._next_id = rid % _MAX_ID + 1
        return rid

    def _emit(self, frame: Frame) -> None:
        self._out.extend(encode_frame(frame, self.peer_max_payload))

    # Section: receiving

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the channel; ``b""`` means the stream ended."""
        self._decoder.feed(data)

    def receive_buffer(self, scratch: memoryview | None = None) -> memoryview:
        """Where the caller may read the next bytes into (then :meth:`received_into`).

        The alternative to :meth:`receive_data` that spares a copy: a large
        payload is read straight into its own buffer (FrameDecoder.get_buffer,
        which says what *scratch* is for).
        """
        return self._decoder.get_buffer(scratch)

    def received_into(self, nbytes: int) -> None:
        """*nbytes* were read into the start of the last :meth:`receive_buffer`."""
        self._decoder.buffer_updated(nbytes)

    def next_event(self) -> Event | NeedData:
        """Return the next event, or :data:`NEED_DATA`.

        :raise RemoteProtocolError: On a framing error (docs/protocol.md §2.4).
            The host's connection is then CLOSED; the guest's returns to
            HUNTING and can be fed further bytes.
        """
        try:
            while True:
                # The running session, every beat of every VM, reads straight
                # from the decoder; the handshake states go through _read_frame.
                if self._state is State.RUNNING:
                    frame = self._decoder.next_frame()
                elif self._state is State.CLOSED:
                    return NEED_DATA
                else:
                    frame = self._read_frame()
                if frame is None:
                    return NEED_DATA
                event = self._handle(frame)
                if event is not None:
                    return event
        except RemoteProtocolError:
            self._fail()
            raise

    def _forget_all(self) -> None:
        self._outstanding.clear()
        self._decoder.drop_answer_buffer()

    def _fail(self) -> None:
        self._forget_all()
        if self.role is Role.HOST:
            self._state = State.CLOSED
        else:
            self._go("reset")

    def _read_frame(self) -> Frame | None:
        if self.role is Role.GUEST and self._state is State.HUNTING:
            return self._decoder.hunt((CONTROL, ControlOp.SYNC, Kind.REQUEST))
        if self.role is Role.HOST and self._state is State.SYNCING:
            while True:
                frame = self._decoder.hunt((CONTROL, ControlOp.SYNC, Kind.RESPONSE))
                if frame is None or frame.body == self._nonce:
                    return frame
        if self._state is State.HUNTING:
            # Host before start_sync: nothing it receives can be meant for it.
            self._decoder.clear()
            return None
        return self._decoder.next_frame()

    def _handle(self, frame: Frame) -> Event | None:
        kind = frame.kind
        # A notification (a beat: the most frequent frame of all) is tested
        # first; a SYNC, whatever its kind, goes to _handle_sync.
        if kind is Kind.NOTIFY and (frame.service != CONTROL or frame.op != ControlOp.SYNC):
            if self._state is not State.RUNNING:
                return None
            payload = frame.payload
            # Notifications are small; a large one is made bytes for its handlers.
            return NotificationReceived(frame.service, frame.op, payload
                                        if type(payload) is bytes else bytes(frame.body))
        if frame.service == CONTROL and frame.op == ControlOp.SYNC:
            return self._handle_sync(frame)
        if kind is Kind.REQUEST:
            request = RequestReceived(frame.service, frame.op, frame.id, frame.body)
            if self._state is not State.RUNNING and not (
                frame.service == CONTROL and frame.op == ControlOp.HELLO
            ):
                self.send_error(request, "not-ready", "the session handshake is not finished")
                return None
            if frame.service == CONTROL and frame.op == ControlOp.HELLO and self.role is Role.HOST:
                raise RemoteProtocolError("the guest sent a HELLO request")
            return request
        return self._handle_answer(frame)

    def _handle_sync(self, frame: Frame) -> Event | None:
        if self.role is Role.GUEST:
            if frame.kind is not Kind.REQUEST:
                raise RemoteProtocolError("the host sent a SYNC answer")
            self._forget_all()
            replaced = self._state is State.RUNNING
            self._go("sync_received")
            self._emit(Frame(Kind.RESPONSE, CONTROL, ControlOp.SYNC, frame.id, frame.body))
            return Synced(bytes(frame.body), replaced=replaced)
        # Host: only the awaited answer reaches here (see _read_frame); any
        # other SYNC traffic in a running session is a stale duplicate.
        if self._state is State.SYNCING and frame.kind is Kind.RESPONSE:
            self._go("sync_acked")
            return Synced(bytes(frame.body))
        return None

    def _handle_answer(self, frame: Frame) -> Event:
        expected = self._outstanding.pop(frame.id, None)
        self._decoder.drop_answer_buffer(frame.id)
        if expected is None:
            return StrayResponse(frame.service, frame.op, frame.id)
        if expected != (frame.service, frame.op):
            raise RemoteProtocolError(
                f"answer {frame.id} is for {frame.service}/{frame.op}, "
                f"the request was {expected[0]}/{expected[1]}"
            )
        if frame.kind is Kind.ERROR:
            try:
                body = decode_json(frame.body)
                code, message = str(body["code"]), str(body.get("message", ""))
            except (RemoteProtocolError, KeyError):
                code, message = "failed", "malformed error answer"
            event: Event = ErrorReceived(frame.service, frame.op, frame.id, code, message)
        else:
            event = ResponseReceived(frame.service, frame.op, frame.id, frame.body)
        if frame.id == self._hello_id and self._state is State.NEGOTIATING:
            self._hello_id = 0
            if isinstance(event, ResponseReceived):
                self._go("hello_answered")
        return event

    def events(self) -> Iterator[Event]:
        """Iterate over the events available now (stops at NEED_DATA)."""
        while True:
            event = self.next_event()
            if isinstance(event, NeedData):
                return
            yield event
