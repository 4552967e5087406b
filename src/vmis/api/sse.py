"""Server-Sent Events, both ways: the event stream's wire format (docs/events.md §2).

One event is ``id: <Id>``, ``event: <Type>``, ``data: <the event's JSON on one line>``
and a blank line, as the WHATWG HTML standard's ``text/event-stream``
defines it; a ``dropped`` event has no id (it is no event of the hub's, so a
client resuming after it asks again for what it missed). A comment line
(``: keepalive``) keeps proxies from closing a quiet stream. The server
encodes with :func:`encode_event`; the command line decodes with
:class:`SseDecoder`, line by line. Standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vmis.host.events import Event

__all__ = ["KEEPALIVE", "KEEPALIVE_COMMENT", "RETRY_MS", "EncodedEvents", "SseDecoder",
           "SseEvent", "encode_event", "retry_field"]

#: seconds between two keepalive comments of a quiet stream (proxies close idle
#: connections after 30 to 60 s by default)
KEEPALIVE = 15.0
#: what a browser's EventSource waits before it reconnects, milliseconds
RETRY_MS = 2000
KEEPALIVE_COMMENT = b": keepalive\n\n"


def encode_event(event: Event) -> bytes:
    """One event as a ``text/event-stream`` block."""
    data = json.dumps(event.to_json(), separators=(",", ":"))
    head = "" if event.type == "dropped" else f"id: {event.id}\n"
    return f"{head}event: {event.type}\ndata: {data}\n\n".encode()


class EncodedEvents:
    """Each event encoded once for all the streams that send it (twenty consoles
    following a thousand VMs' burst would otherwise encode it twenty times).

    :param size: how many of the newest events to keep encoded.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        # id -> (the event, its block): the event is kept to tell it from another
        # hub's event of the same id
        self._blocks: dict[int, tuple[Event, bytes]] = {}

    def __call__(self, event: Event) -> bytes:
        found = self._blocks.get(event.id)
        if found is not None and found[0] is event:
            return found[1]
        block = encode_event(event)
        if event.type != "dropped":  # made per reader: never shared
            if len(self._blocks) >= self._size:
                del self._blocks[next(iter(self._blocks))]
            self._blocks[event.id] = (event, block)
        return block


def retry_field(ms: int = RETRY_MS) -> bytes:
    """The stream's first block: how long a browser waits before it reconnects."""
    return f"retry: {ms}\n\n".encode()


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One decoded event."""

    #: the ``event`` field (``message`` when there was none)
    type: str
    #: the ``data`` lines, joined by newlines
    data: str
    #: the ``id`` field of this event, or None when it had none
    id: str | None

    def json(self) -> Any:
        """The data as JSON."""
        return json.loads(self.data)


class SseDecoder:
    """Turns the lines of a ``text/event-stream`` into events (the standard's
    "interpret an event stream", minus ``retry``, which a command line ignores)."""

    def __init__(self) -> None:
        self._type = ""
        self._data: list[str] = []
        self._id: str | None = None
        #: the last event id seen, kept across events as the standard says
        self.last_id: str | None = None

    def feed(self, line: str) -> SseEvent | None:
        """One line without its end; an event when the line is the blank one ending it."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = self.last_id = value
        return None

    def _dispatch(self) -> SseEvent | None:
        event_id, self._id = self._id, None
        event_type, self._type = self._type or "message", ""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return SseEvent(event_type, data, event_id)
