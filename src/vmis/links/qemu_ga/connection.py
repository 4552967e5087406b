"""One connection to qemu-ga: the codec's bytes on an asyncio transport.

:class:`QgaConnection` is the asyncio protocol behind a qemu-ga link. It runs
the hunt (:meth:`QgaConnection.sync`: a fresh guest-sync-delimited every two
seconds until qemu-ga answers the latest), then sends commands and resolves
each caller's future from the reply with its id. One timer, at the earliest
pending deadline, expires what qemu-ga did not answer in time
(:data:`~vmis.links.qemu_ga.codec.COMMAND_TIMEOUTS`); the connection stays
usable after a timeout, since replies carry their ids.

**One request in flight.** Over virtio-serial (QEMU 7.2, a Linux 6.1 guest)
qemu-ga's replies get lost when requests keep arriving while it writes them:
with eight pipelined guest-file-writes, one to seven replies of a burst
never reached the host, though every write was done; with one request at a
time, none of 300 was lost (docs/guest-links.md §2). So requests queue here
and go out one at a time, the next the moment the previous one's reply
arrives, before that reply is handed on: qemu-ga starts on it while the host
decodes the answer, which is all pipelining would have bought here
(qemu-ga works on one command at a time anyway). A command with no reply
(guest-shutdown) does not hold the queue.

qemu-ga's errors come back as :class:`~vmis.errors.RemoteServiceError` with
the code of docs/protocol.md §5.1 that fits (:func:`refusal`), the agent's
own words in the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, cast

from vmis.errors import (
    ChannelClosed,
    ConnectError,
    ProtocolError,
    RemoteServiceError,
    RequestTimeout,
)
from vmis.links.qemu_ga.codec import (
    COMMAND_TIMEOUTS,
    NO_REPLY_COMMANDS,
    ErrorReply,
    Event,
    Expired,
    QgaCodec,
    Reply,
    Stray,
    Synced,
)

__all__ = ["SYNC_ATTEMPT", "QgaConnection", "refusal"]

#: seconds before an unanswered sync attempt is followed by a new one (a new id)
SYNC_ATTEMPT = COMMAND_TIMEOUTS["guest-sync-delimited"]

#: qemu-ga's words (strerror and its own) -> the code of docs/protocol.md §5.1
_CODES = (
    ("No such file or directory", "not-found"),
    ("File exists", "exists"),
    ("Permission denied", "denied"),
    ("Operation not permitted", "denied"),
    ("Read-only file system", "denied"),
    ("No space left on device", "too-large"),
    ("File too large", "too-large"),
    ("Is a directory", "exists"),
    ("has been disabled", "denied"),
    ("Invalid parameter", "bad-request"),
    ("is invalid for argument", "bad-request"),
    ("invalid file open mode", "bad-request"),
)


def refusal(command: str, error_class: str, desc: str) -> RemoteServiceError:
    """qemu-ga's error reply to *command* as a :class:`RemoteServiceError`."""
    if error_class == "CommandNotFound" and "has been disabled" not in desc:
        code = "unknown-op"
    else:
        code = next((c for words, c in _CODES if words in desc), "failed")
    return RemoteServiceError(code, f"qemu-ga: {command}: {desc}")


class QgaConnection(asyncio.Protocol):
    """The host's end of one qemu-ga channel.

    :param name: the VM's name, for messages.
    :param log: the VM's log.
    :param clock: monotonic seconds (the deadlines' clock).
    """

    def __init__(self, name: str, log: logging.Logger,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.log = log
        self._clock = clock
        self.codec = QgaCodec()
        self._transport: asyncio.WriteTransport | None = None
        self._futures: dict[int, asyncio.Future[Any]] = {}
        #: id -> (command, monotonic time asked) of every request not answered yet
        self._sent: dict[int, tuple[str, float]] = {}
        #: requests waiting for the one in flight to be answered: (id, bytes, replies)
        self._queue: deque[tuple[int, bytes, bool]] = deque()
        #: the request whose reply qemu-ga owes now, if any
        self._in_flight: int | None = None
        self._synced: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = asyncio.get_running_loop().create_future()
        self.lost_reason = ""
        #: told why the connection ended, once, before wait_closed() returns
        self.on_lost: Callable[[str], None] | None = None
        #: monotonic time of the last byte from qemu-ga
        self.last_heard = clock()

    # Section: asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (asyncio's, or uvloop's, which subclasses neither)
        self._transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        self.last_heard = self._clock()
        try:
            events = self.codec.feed(data)
        except ProtocolError as exc:
            self._lose(str(exc))
            return
        # The next request goes out first: qemu-ga works on it while the
        # replies are handed on.
        for event in events:
            if getattr(event, "id", None) == self._in_flight and self._in_flight is not None:
                self._in_flight = None
        self._pump()
        for event in events:
            self._event(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(f"the channel closed ({exc})" if exc else "the channel closed")

    # Section: state

    @property
    def running(self) -> bool:
        """True until the connection ends."""
        return not self._closed.done()

    async def wait_closed(self) -> None:
        """Wait until the connection has ended."""
        await asyncio.shield(self._closed)

    def close(self, reason: str = "closed by the host") -> None:
        """End the connection; pending requests fail with ChannelClosed."""
        self._lose(reason)

    def oldest_pending(self) -> tuple[str, float] | None:
        """The command qemu-ga works on now (the oldest unanswered) and when it was asked."""
        return next(iter(self._sent.values()), None)

    # Section: the hunt

    async def sync(self, timeout: float) -> None:
        """Hunt until qemu-ga answers a guest-sync-delimited (docs/guest-links.md §2).

        :raise ConnectError: When it does not within *timeout* seconds.
        :raise ChannelClosed: When the channel ends first.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        attempts = 0
        while True:
            self._require_open()
            self._synced = loop.create_future()
            self._write(self.codec.sync(self._clock()))
            attempts += 1
            try:
                async with asyncio.timeout(max(min(SYNC_ATTEMPT, deadline - loop.time()), 0)):
                    await self._synced
                return
            except TimeoutError:
                if loop.time() >= deadline:
                    raise ConnectError(
                        f"{self.name}: qemu-ga does not answer guest-sync-delimited "
                        f"({attempts} attempts in {timeout:g} s): is the qemu-guest-agent "
                        "service running in the guest, and is this its channel?") from None
            finally:
                self._synced = None

    # Section: requests

    def send(self, command: str, arguments: Mapping[str, Any] | None = None,
             timeout: float | None = None) -> asyncio.Future[Any]:
        """Queue one command; its future gets the ``return`` value or the error.

        Commands go out one at a time, in the order sent here (module
        docstring); the timeout counts from now.

        :raise ChannelClosed: When the connection has ended.
        """
        self._require_open()
        request_id, data = self.codec.request(command, arguments, self._clock(), timeout)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = future
        self._sent[request_id] = (command, self._clock())
        future.add_done_callback(functools.partial(self._done, request_id))
        self._queue.append((request_id, data, command not in NO_REPLY_COMMANDS))
        self._pump()
        self._arm()
        return future

    def _pump(self) -> None:
        """Send queued requests while none is in flight."""
        while self._in_flight is None and self._queue and not self._closed.done():
            request_id, data, replies = self._queue.popleft()
            if request_id not in self._futures:
                continue  # its caller gave up before it went out
            self._write(data)
            if replies:
                self._in_flight = request_id

    async def call(self, command: str, arguments: Mapping[str, Any] | None = None,
                   timeout: float | None = None) -> Any:
        """Send one command and wait for its ``return`` value.

        :raise RemoteServiceError: When qemu-ga answers with an error.
        :raise RequestTimeout: When it does not answer within the command's timeout.
        :raise ChannelClosed: When the connection ends first.
        """
        return await self.send(command, arguments, timeout)

    def _done(self, request_id: int, future: asyncio.Future[Any]) -> None:
        self._futures.pop(request_id, None)
        self._sent.pop(request_id, None)
        # A caller that gave up (cancelled) no longer waits: its reply will be
        # dropped. One in flight stays known to the codec, whose reply or
        # deadline frees the queue.
        if future.cancelled() and request_id != self._in_flight:
            self.codec.forget(request_id)

    # Section: plumbing

    def _require_open(self) -> None:
        if self._closed.done() or self._transport is None:
            raise ChannelClosed(f"{self.name}: the qemu-ga channel is closed "
                                f"({self.lost_reason or 'not connected'})")

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def _arm(self) -> None:
        deadline = self.codec.next_deadline()
        if self._timer is not None:
            if deadline is not None and self._timer.when() <= self._loop_time(deadline):
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(self._loop_time(deadline),
                                                             self._expire)

    def _loop_time(self, clock_time: float) -> float:
        return asyncio.get_running_loop().time() + (clock_time - self._clock())

    def _expire(self) -> None:
        self._timer = None
        for event in self.codec.expire(self._clock()):
            if event.id == self._in_flight:
                # qemu-ga may still answer it (the reply is dropped then); the
                # queue does not wait for ever on a reply that may be lost.
                self._in_flight = None
            self._event(event)
        self._pump()
        self._arm()

    def _event(self, event: Event) -> None:
        if isinstance(event, Synced):
            if self._synced is not None and not self._synced.done():
                self._synced.set_result(None)
            return
        if isinstance(event, Stray):
            self.log.debug("qemu-ga: ignored %r (%s)", event.line[:80], event.why)
            return
        future = self._futures.pop(event.id, None)
        self._sent.pop(event.id, None)
        if future is None or future.done():
            return
        if isinstance(event, Reply):
            future.set_result(event.value)
        elif isinstance(event, ErrorReply):
            future.set_exception(refusal(event.command, event.error_class, event.desc))
        elif isinstance(event, Expired):
            future.set_exception(RequestTimeout(
                f"{self.name}: qemu-ga did not answer {event.command} within "
                f"{event.timeout:g} s"))

    def _lose(self, reason: str) -> None:
        if self._closed.done():
            return
        self.lost_reason = reason
        self._closed.set_result(None)
        if self.on_lost is not None:
            self.on_lost(reason)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._synced is not None and not self._synced.done():
            self._synced.set_exception(ChannelClosed(f"{self.name}: {reason}"))
        futures, self._futures = self._futures, {}
        self._sent.clear()
        self._queue.clear()
        for future in futures.values():
            if not future.done():
                future.set_exception(ChannelClosed(f"{self.name}: {reason}"))
        if self._transport is not None:
            with contextlib.suppress(RuntimeError):
                self._transport.close()
