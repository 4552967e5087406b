"""qemu-ga's wire protocol, sans-IO: requests to bytes, bytes to replies (docs/guest-links.md §2).

qemu-ga speaks QMP's JSON: a request is one JSON object
``{"execute": NAME, "arguments": {...}, "id": N}``; the agent answers each
request it reads, strictly in order, with one line holding one JSON object:
``{"return": VALUE, "id": N}`` or ``{"error": {"class", "desc"}, "id": N}``.
Commands marked ``success-response: false`` (``guest-shutdown``, the
``guest-suspend-*``) answer only when they fail.

The channel has no connection semantics (a virtio-serial port): what a
previous client left half-written, half-read or unanswered may still be in
it, and requests sent before the guest opens its port wait in QEMU and are
all answered later, in order. So every connection starts hunting: the client
sends the byte 0xFF (qemu-ga's JSON lexer resets on it, and answers it with
an error line that carries no id) and ``guest-sync-delimited`` with a fresh
random id; qemu-ga writes 0xFF right before that reply. Everything up to a
0xFF is skipped, and only the reply holding the id of the *latest* attempt
ends the hunt: older attempts' replies are stale, and a new attempt (a new
id) is sent whenever one goes unanswered.

After the hunt every request carries an ``id`` that qemu-ga echoes, so each
reply names its request: a reply that comes after its request timed out is
recognised and dropped, and the connection stays usable without another
sync. A no-reply command counts as done once a reply to any later request
arrives (qemu-ga answers in order, and its error would have come first).

The codec keeps each pending request's deadline on a clock the caller
passes in (``now``, seconds); :data:`COMMAND_TIMEOUTS` gives the default per
command, long for freezes and file I/O (a frozen guest holds writes), short
for pings. 0xFF never occurs in qemu-ga's output otherwise (its JSON is
UTF-8, where 0xFF is invalid), so the codec treats it anywhere as the start
of a fresh reply.
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmis.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "COMMAND_TIMEOUTS",
    "DEFAULT_TIMEOUT",
    "MAX_LINE",
    "NO_REPLY_COMMANDS",
    "SENTINEL",
    "ErrorReply",
    "Event",
    "Expired",
    "QgaCodec",
    "Reply",
    "Stray",
    "Synced",
]

#: qemu-ga's sentinel byte: it precedes a guest-sync-delimited reply and resets its lexer
SENTINEL = 0xFF
_SENTINEL_BYTE = bytes([SENTINEL])
#: seconds a request may take unless :data:`COMMAND_TIMEOUTS` or the caller says otherwise
DEFAULT_TIMEOUT = 30.0
#: seconds per command. libvirt and Proxmox wait 5 s for any command, which a
#: freeze (a sync of every dirty page, then the fsfreeze hook) easily exceeds;
#: a write to a filesystem frozen by someone else blocks until its thaw (at
#: most 900 s, docs/hyperv.md §8); a ping that takes seconds is an agent in trouble.
COMMAND_TIMEOUTS: Mapping[str, float] = {
    "guest-sync-delimited": 2.0,
    "guest-ping": 5.0,
    "guest-get-time": 5.0,
    "guest-info": 10.0,
    "guest-fsfreeze-status": 10.0,
    "guest-fsfreeze-freeze": 900.0,
    "guest-fsfreeze-freeze-list": 900.0,
    "guest-fsfreeze-thaw": 300.0,
    "guest-file-open": 960.0,
    "guest-file-write": 960.0,
    "guest-file-read": 960.0,
    "guest-file-flush": 960.0,
    "guest-file-close": 960.0,
    "guest-get-fsinfo": 60.0,
    "guest-set-time": 60.0,
}
#: commands qemu-ga answers only when they fail (``success-response: false``)
NO_REPLY_COMMANDS = frozenset({
    "guest-shutdown", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid",
})
#: the longest reply line taken: a guest-file-read of qemu-ga's limit (48 MiB)
#: in base64 is 64 MiB, and a little room for the JSON around it
MAX_LINE = 72 * 1024 * 1024
#: a sync id's range: qemu-ga takes a 64-bit integer; kept positive and below
#: 2**53 so any JSON reader on the way keeps it exact
_SYNC_ID_LIMIT = 1 << 53


# Section: events


@dataclass(frozen=True, slots=True)
class Synced:
    """The hunt ended: qemu-ga answered the latest guest-sync-delimited."""

    sync_id: int


@dataclass(frozen=True, slots=True)
class Reply:
    """A request succeeded; *value* is its ``return`` (None for a no-reply command)."""

    id: int
    command: str
    value: Any


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A request failed; qemu-ga's error class and description."""

    id: int
    command: str
    error_class: str
    desc: str


@dataclass(frozen=True, slots=True)
class Expired:
    """A request's deadline passed without a reply (a late reply is dropped)."""

    id: int
    command: str
    timeout: float


@dataclass(frozen=True, slots=True)
class Stray:
    """A line that answers no pending request (late, stale, an id-less error); for the log."""

    line: bytes
    why: str
    #: the id it names, if any (a late reply's)
    id: int | None = None


Event = Synced | Reply | ErrorReply | Expired | Stray


@dataclass(slots=True)
class _Pending:
    command: str
    deadline: float
    timeout: float
    reply: bool


# Section: the codec


class QgaCodec:
    """One connection's qemu-ga protocol state.

    :param rng: where sync ids come from (a seeded ``random.Random`` in tests).
    :param max_line: the longest reply line accepted.
    """

    def __init__(self, rng: random.Random | None = None, max_line: int = MAX_LINE) -> None:
        self._rng = rng or random.SystemRandom()
        self._max_line = max_line
        #: True until qemu-ga answered the latest sync attempt
        self.hunting = True
        self._sync_id: int | None = None
        self._sync_deadline = 0.0
        self._next_id = self._rng.randrange(1, 1 << 31)
        #: request id -> pending request, in the order sent (qemu-ga answers in it)
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._line = bytearray()
        #: bytes of _line already searched for a newline
        self._scanned = 0
        #: while hunting, bytes are dropped until a sentinel shows a reply starts
        self._skipping = True

    # Section: sending

    def sync(self, now: float, timeout: float | None = None) -> bytes:
        """Bytes of a new sync attempt (a fresh id); the codec hunts until it is answered.

        :raise LocalProtocolError: While requests are pending: a connection
            syncs before its first request, and needs no sync after a timeout
            (replies carry their request's id).
        """
        if self._pending:
            raise LocalProtocolError("guest-sync-delimited sent while requests are pending")
        self.hunting = True
        self._skipping = True
        self._line.clear()
        self._scanned = 0
        self._sync_id = self._rng.randrange(1, _SYNC_ID_LIMIT)
        wait = COMMAND_TIMEOUTS["guest-sync-delimited"] if timeout is None else timeout
        self._sync_deadline = now + wait
        body = {"execute": "guest-sync-delimited", "arguments": {"id": self._sync_id}}
        return _SENTINEL_BYTE + _dump(body)

    @property
    def sync_deadline(self) -> float | None:
        """When the current sync attempt counts as unanswered; None once synced."""
        return self._sync_deadline if self.hunting and self._sync_id is not None else None

    def request(self, command: str, arguments: Mapping[str, Any] | None, now: float,
                timeout: float | None = None) -> tuple[int, bytes]:
        """One request: its id and its bytes.

        :param timeout: seconds until it expires; default :data:`COMMAND_TIMEOUTS`.
        :raise LocalProtocolError: While hunting (nothing but sync attempts may go
            out before qemu-ga has answered one).
        """
        if self.hunting:
            raise LocalProtocolError(f"{command} sent before qemu-ga answered guest-sync")
        request_id = self._next_id
        self._next_id += 1
        wait = COMMAND_TIMEOUTS.get(command, DEFAULT_TIMEOUT) if timeout is None else timeout
        self._pending[request_id] = _Pending(command, now + wait, wait,
                                             command not in NO_REPLY_COMMANDS)
        body: dict[str, Any] = {"execute": command}
        if arguments:
            body["arguments"] = dict(arguments)
        body["id"] = request_id
        return request_id, _dump(body)

    def forget(self, request_id: int) -> None:
        """Stop waiting for one request (its caller gave up); a reply later is dropped."""
        self._pending.pop(request_id, None)

    @property
    def pending(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._pending)

    # Section: time

    def next_deadline(self) -> float | None:
        """The earliest deadline of a pending request, if any."""
        return min((p.deadline for p in self._pending.values()), default=None)

    def expire(self, now: float) -> list[Expired]:
        """Every pending request whose deadline has passed, removed."""
        gone = [Expired(i, p.command, p.timeout)
                for i, p in self._pending.items() if p.deadline <= now]
        for event in gone:
            del self._pending[event.id]
        return gone

    # Section: receiving

    def feed(self, data: bytes | bytearray) -> list[Event]:
        """Take bytes from the channel; the events they complete, in order.

        :raise RemoteProtocolError: For a reply line longer than the limit.
        """
        events: list[Event] = []
        view = memoryview(data)
        pos, size = 0, len(data)
        while pos < size:
            sentinel = data.find(_SENTINEL_BYTE, pos)
            if self._skipping:
                if sentinel < 0:
                    break  # nothing of interest before a reply starts
                self._skipping = False
                pos = sentinel + 1
                continue
            if sentinel < 0:
                self._take(view[pos:], events)
                break
            # A sentinel starts a fresh reply: a line it interrupts was never whole.
            self._take(view[pos:sentinel], events)
            if self._line and not self._skipping:
                events.append(Stray(bytes(self._line[:200]), "cut off by a sentinel"))
            self._line.clear()
            self._scanned = 0
            self._skipping = False
            pos = sentinel + 1
        return events

    def _take(self, chunk: memoryview, events: list[Event]) -> None:
        if self._skipping:
            return
        self._line += chunk
        while True:
            end = self._line.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(self._line)
                if len(self._line) > self._max_line:
                    raise RemoteProtocolError(
                        f"qemu-ga sent a line of more than {self._max_line} bytes")
                return
            line = bytes(self._line[:end])
            del self._line[:end + 1]
            self._scanned = 0
            if line.strip():
                self._line_received(line, events)
            if self._skipping:
                # The hunt goes on after a stale reply: drop the rest up to a sentinel.
                self._line.clear()
                return

    def _line_received(self, line: bytes, events: list[Event]) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            events.append(Stray(line[:200], "not JSON"))
            return
        if not isinstance(message, dict):
            events.append(Stray(line[:200], "not a JSON object"))
            return
        if self.hunting:
            self._hunt(line, message, events)
            return
        request_id = message.get("id")
        pending = self._pending.get(request_id) if isinstance(request_id, int) else None
        if pending is None or not isinstance(request_id, int):
            why = "no id" if request_id is None else f"no pending request has id {request_id}"
            events.append(Stray(line[:200], why,
                                request_id if isinstance(request_id, int) else None))
            return
        self._settle_earlier(request_id, events)
        del self._pending[request_id]
        if "error" in message:
            error = message["error"] if isinstance(message["error"], dict) else {}
            events.append(ErrorReply(request_id, pending.command,
                                     str(error.get("class", "GenericError")),
                                     str(error.get("desc", message["error"]))))
        elif "return" in message:
            events.append(Reply(request_id, pending.command, message["return"]))
        else:
            events.append(ErrorReply(request_id, pending.command, "GenericError",
                                     f"a reply with neither return nor error: {line[:200]!r}"))

    def _settle_earlier(self, request_id: int, events: list[Event]) -> None:
        # Requests sent before this one and still pending are no-reply commands
        # that succeeded (an error of theirs would have come first), or requests
        # whose replies were lost with a stale line: those keep their deadlines.
        for earlier in list(self._pending):
            if earlier == request_id:
                return
            pending = self._pending[earlier]
            if not pending.reply:
                del self._pending[earlier]
                events.append(Reply(earlier, pending.command, None))

    def _hunt(self, line: bytes, message: dict[str, Any], events: list[Event]) -> None:
        if "return" in message and message.get("return") == self._sync_id:
            self.hunting = False
            self._sync_id = None
            events.append(Synced(int(message["return"])))
            return
        events.append(Stray(line[:200], "stale while hunting"))
        self._skipping = True


def _dump(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
