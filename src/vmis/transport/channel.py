"""The asyncio adapter around the sans-IO :class:`~vmis.protocol.Connection`.

A :class:`Channel` is an :class:`asyncio.BufferedProtocol`: every transport
in this package (Unix socket, AF_VSOCK, hybrid vsock, virtio-serial) hands
its bytes to one, so the host session and the guest agent are written once
for all of them. Socket transports read straight into the buffer the frame
decoder offers (a large payload's own buffer, docs/services/fcopy.md §3.3);
transports that deliver ``bytes`` call ``data_received``, which feeds them.
The channel correlates requests with answers, runs the host's resync and
HELLO (docs/protocol.md §3), and passes everything else to a
:class:`ChannelHandler`.

"Bottom half" methods (``buffer_updated``, ``data_received`` and what they call) run in the event
loop's callbacks; they never raise, because an exception there would be lost:
a framing error is logged and ends the session instead (docs/protocol.md §2.4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from typing import Any, Protocol

from vmis.errors import (
    ChannelClosed,
    LocalProtocolError,
    RemoteProtocolError,
    RemoteServiceError,
    RequestTimeout,
)
from vmis.protocol import (
    Connection,
    ErrorReceived,
    NotificationReceived,
    Payload,
    Received,
    RequestReceived,
    ResponseReceived,
    Role,
    State,
    StrayResponse,
    Synced,
    decode_json,
)

__all__ = ["Channel", "ChannelHandler"]

_log = logging.getLogger("vmis.channel")

#: docs/protocol.md §3.1
SYNC_TIMEOUT = 2.0
_FIRST_FLUSH = 64 * 1024
#: bytes of kernel socket buffer asked for each way
_SOCKET_BUFFER = 4 * 1024 * 1024
#: buffers shorter than this are joined before being written (see _flush)
_JOIN_BELOW = 64 * 1024


class ChannelHandler(Protocol):
    """What a channel calls back into: the host session or the guest agent."""

    def on_synced(self, channel: Channel, event: Synced) -> None:
        """The resync handshake completed (guest: a new session started)."""

    def on_request(self, channel: Channel, request: RequestReceived) -> None:
        """A request arrived; answer it with ``channel.respond`` or ``channel.fail``."""

    def on_notification(self, channel: Channel, note: NotificationReceived) -> None:
        """A notification arrived."""

    def on_session_lost(self, channel: Channel, reason: str) -> None:
        """The session ended: framing error (both), end of stream (both)."""


#: One receive buffer per thread for the bytes between large payloads, shared
#: by the thread's channels: a host has a channel per VM, and a buffer each
#: would be 64 MiB at 1024 VMs. Sharing is safe because a transport calls
#: get_buffer(), reads into it and calls buffer_updated() back to back (asyncio
#: and uvloop alike), and the decoder copies the bytes out in buffer_updated().
_per_thread = threading.local()
_SCRATCH = 64 * 1024


def _scratch() -> memoryview:
    view: memoryview | None = getattr(_per_thread, "scratch", None)
    if view is None:
        view = _per_thread.scratch = memoryview(bytearray(_SCRATCH))
    return view


class Channel(asyncio.BufferedProtocol):
    """One end of a vmis session over an asyncio transport.

    :param role: host or guest.
    :param handler: receives requests, notifications and session changes.
    :param name: used in log messages (the VM name on the host).
    :param max_payload: our receive limit (docs/protocol.md §2.4).
    """

    def __init__(
        self,
        role: Role,
        handler: ChannelHandler,
        *,
        name: str = "",
        max_payload: int | None = None,
    ) -> None:
        self.role = role
        self.handler = handler
        self.log = _log.getChild(name) if name else _log
        self._max_payload = max_payload
        self.conn = self._new_connection()
        self.transport: asyncio.BaseTransport | None = None
        self._pending: dict[int, asyncio.Future[Received]] = {}
        self._synced: asyncio.Future[Synced] | None = None
        self._closed = asyncio.get_running_loop().create_future()
        self._writable = asyncio.Event()
        self._writable.set()
        self._lost_reason = ""
        #: requests of the current session not yet answered, by object identity
        self._open: dict[int, RequestReceived] = {}

    def _new_connection(self) -> Connection:
        if self._max_payload is None:
            return Connection(self.role)
        return Connection(self.role, max_payload=self._max_payload)

    # Section: asyncio.BufferedProtocol (bottom half)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Room in the kernel for a whole bulk frame: the transport then
            # hands it over in one send instead of copying the rest into its
            # own buffer (docs/services/fcopy.md §3.3). The kernel caps the
            # sizes at net.core.wmem_max / rmem_max.
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._pump()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conn.receive_buffer(_scratch())

    def buffer_updated(self, nbytes: int) -> None:
        self.conn.received_into(nbytes)
        self._pump()

    def eof_received(self) -> bool | None:
        self._session_lost("the peer closed the channel")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._session_lost(f"channel lost: {exc}" if exc else "channel closed")
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _pump(self) -> None:
        next_event = self.conn.next_event
        handler = self.handler
        while True:
            try:
                event = next_event()
            except RemoteProtocolError as exc:
                self.log.error("protocol error, session ended: %s", exc)
                self._flush()
                self._session_lost(f"protocol error: {exc}")
                if self.role is Role.HOST:
                    self.close()
                return
            # Exact type tests, most frequent first: a host with a thousand
            # VMs runs this for every beat (the event classes are final).
            kind = type(event)
            if kind is NotificationReceived:
                handler.on_notification(self, event)  # type: ignore[arg-type]
            elif kind is ResponseReceived or kind is ErrorReceived:
                self._resolve(event)  # type: ignore[arg-type]
            elif kind is RequestReceived:
                self._open[id(event)] = event  # type: ignore[assignment]
                handler.on_request(self, event)  # type: ignore[arg-type]
            elif kind is Synced:
                self._on_synced(event)  # type: ignore[arg-type]
            elif kind is StrayResponse:
                # docs/protocol.md §2.3: the caller gave up on this request
                self.log.warning("dropped a late answer to request %d",
                                 event.id)  # type: ignore[union-attr]
            else:  # NEED_DATA
                break
        self._flush()

    def _resolve(self, event: ResponseReceived | ErrorReceived) -> None:
        fut = self._pending.pop(event.id, None)
        if fut is None or fut.done():
            return
        if isinstance(event, ErrorReceived):
            fut.set_exception(RemoteServiceError(event.code, event.message))
        else:
            fut.set_result(event.payload)

    def _on_synced(self, event: Synced) -> None:
        if self.role is Role.GUEST:
            self._open.clear()
            self._fail_pending("the host started a new session")
        elif self._synced is not None and not self._synced.done():
            self._synced.set_result(event)
        self.handler.on_synced(self, event)

    def _session_lost(self, reason: str) -> None:
        self._open.clear()
        self._fail_pending(reason)
        if self._synced is not None and not self._synced.done():
            self._synced.set_exception(ChannelClosed(reason))
        if not self._lost_reason:
            self.handler.on_session_lost(self, reason)
            # The guest's stream may go on after a framing error (its
            # connection hunts for the next SYNC), so it can lose again.
            self._lost_reason = reason if self.role is Role.HOST else ""

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ChannelClosed(reason))

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if not data or self.transport is None or self.transport.is_closing():
            return
        write = self.transport.write  # type: ignore[attr-defined]
        # Small buffers go out joined, in one write; a large one (bulk data)
        # on its own: Python 3.11's socket transports implement writelines
        # by joining, which would copy every payload once more.
        small: list[bytes | memoryview] = []
        for buf in data:
            if len(buf) < _JOIN_BELOW:
                small.append(buf)
                continue
            if small:
                write(b"".join(small))
                small = []
            write(buf)
        if small:
            write(b"".join(small) if len(small) > 1 else small[0])

    # Section: public interface (upper half)

    @property
    def lost_reason(self) -> str:
        """Why the session ended, or "" while it has not."""
        return self._lost_reason

    @property
    def running(self) -> bool:
        """True while the session is RUNNING (handshake done, not lost)."""
        return self.conn.state is State.RUNNING

    async def sync(self, timeout: float = SYNC_TIMEOUT, attempts: int = 5) -> None:
        """Host: run the resync handshake (docs/protocol.md §3.1).

        :raise RequestTimeout: When no attempt is answered.
        :raise ChannelClosed: When the channel closes meanwhile.
        """
        loop = asyncio.get_running_loop()
        for attempt in range(attempts):
            flush = 0 if attempt == 0 else min(_FIRST_FLUSH * 4 ** (attempt - 1), self._peer_max())
            self._synced = loop.create_future()
            self.conn.start_sync(flush)
            self._flush()
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._synced)
                return
            except TimeoutError:
                self.log.debug("SYNC attempt %d unanswered", attempt + 1)
        raise RequestTimeout(f"the guest did not answer {attempts} resync attempts")

    def _peer_max(self) -> int:
        return self.conn.peer_max_payload

    async def hello(self, offer: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Host: negotiate (docs/protocol.md §3.2) and return the guest's answer.

        :raise RemoteServiceError: When the guest refuses (``protocol-mismatch``).
        :raise RemoteProtocolError: When the answer is not a JSON object.
        """
        rid = self.conn.send_hello(offer)
        answer = await self._wait(rid, timeout)
        body = decode_json(answer)
        peer_max = body.get("max_payload")
        if isinstance(peer_max, int) and peer_max >= 64 * 1024:
            self.conn.peer_max_payload = peer_max
        return body

    async def request(
        self, service: int, op: int, payload: Payload = b"", timeout: float | None = 30.0,
        into: memoryview | None = None,
    ) -> Received:
        """Send a request and return the answer's payload.

        :param timeout: seconds to wait for the answer; None waits forever.
        :param into: where a large answer is received; it is then ``into[:length]``
            (Connection.send_request).
        :raise RemoteServiceError: When the peer answers with an error.
        :raise RequestTimeout: When no answer comes in time.
        :raise ChannelClosed: When the session ends first.
        :raise LocalProtocolError: When the session is not running.
        """
        if self.transport is None or self.transport.is_closing():
            raise ChannelClosed("the channel is closed")
        rid = self.conn.send_request(service, op, payload, into)
        return await self._wait(rid, timeout)

    async def _wait(self, rid: int, timeout: float | None) -> Received:
        fut: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._flush()
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise RequestTimeout(f"no answer within {timeout:g} s") from None
        finally:
            if self._pending.pop(rid, None) is not None:
                self.conn.forget(rid)

    def notify(self, service: int, op: int, payload: Payload = b"") -> None:
        """Send a notification (dropped with a debug log if the session is not running)."""
        try:
            self.conn.send_notification(service, op, payload)
        except LocalProtocolError as exc:
            self.log.debug("notification %d/%d not sent: %s", service, op, exc)
            return
        self._flush()

    def respond(self, request: RequestReceived, payload: Payload = b"") -> None:
        """Answer *request* successfully (a no-op if its session has ended)."""
        if self._answerable(request):
            self.conn.send_response(request, payload)
            self._flush()

    def fail(self, request: RequestReceived, code: str, message: str) -> None:
        """Answer *request* with an error (docs/protocol.md §5.1)."""
        if self._answerable(request):
            self.conn.send_error(request, code, message)
            self._flush()

    def _answerable(self, request: RequestReceived) -> bool:
        # An answer to a request of an ended session would reach a new host
        # as a stray, or worse match one of its request ids: drop it here.
        return self._open.pop(id(request), None) is not None

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        await self._writable.wait()
        if self.transport is None or self.transport.is_closing():
            raise ChannelClosed(self._lost_reason or "the channel is closed")

    def close(self) -> None:
        """Close the transport; pending requests fail with ChannelClosed."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    async def wait_closed(self) -> None:
        """Wait until the transport is gone."""
        await asyncio.shield(self._closed)
