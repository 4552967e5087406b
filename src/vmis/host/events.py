"""One stream of what changes on a host manager, for screens that follow it live.

Heartbeat transitions, service status changes, enable/disable, KVP changes,
copies, checkpoints and updates, VMs added and removed, the manager itself
coming up and going down: each is an :class:`Event` published on the
manager's :class:`EventHub`. Every event has an id, one more than the last,
so a client that lost its connection asks for what came after the last id
it saw (Server-Sent Events' ``Last-Event-ID``) and misses nothing the hub
still holds; the hub keeps the newest :data:`KEEP` events, and a client
that asks for older ones is told how many it missed.

Publishing is a dictionary and an append: it never waits, so a slow reader
cannot hold the manager up. Each subscriber has a bounded queue; a reader
that falls that far behind loses the events it could not take, and the next
thing it reads says how many (:attr:`Event.type` ``"dropped"``), as does
:attr:`EventHub.dropped` (a metric).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KEEP", "Event", "EventHub", "Subscription"]

#: how many of the newest events the hub keeps for clients that reconnect
KEEP = 10_000
#: how many events one subscriber may have waiting before it starts losing them
QUEUE = 10_000


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that changed."""

    #: one more than the previous event's, per manager
    id: int
    #: ``heartbeat``, ``service``, ``settings``, ``vm-added``, ``vm-removed``, ``kvp``,
    #: ``copy``, ``checkpoint``, ``update``, ``host``, ``dropped``
    type: str
    #: wall-clock time, seconds since the epoch
    time: float
    #: the VM it concerns, if one
    vm_name: str | None = None
    vm_id: str | None = None
    #: what changed (PascalCase members, as the API's)
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"Id": self.id, "Type": self.type, "Time": self.time, "VMName": self.vm_name,
                "VMId": self.vm_id, **self.data}


class Subscription:
    """One reader's events, in order; an async iterator."""

    def __init__(self, hub: EventHub, accept: Callable[[Event], bool]) -> None:
        self._hub = hub
        self._accept = accept
        self._queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE)
        self._lost = 0

    def _offer(self, event: Event) -> None:
        if not self._accept(event):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._lost += 1
            self._hub.dropped += 1

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        if self._lost and self._queue.empty():
            lost, self._lost = self._lost, 0
            return Event(self._hub.last_id, "dropped", time.time(), data={"Dropped": lost})
        return await self._queue.get()

    def close(self) -> None:
        """Stop receiving events."""
        self._hub._subscribers.discard(self)


class EventHub:
    """The events of one host manager, kept and handed to subscribers.

    :param keep: how many of the newest events to keep for reconnecting clients.
    """

    def __init__(self, keep: int = KEEP) -> None:
        self._ids = itertools.count(1)
        self._kept: deque[Event] = deque(maxlen=keep)
        self._subscribers: set[Subscription] = set()
        #: the id of the newest event (0 before the first)
        self.last_id = 0
        #: events subscribers lost because they fell behind (all subscribers, ever)
        self.dropped = 0

    def publish(self, type: str, *, vm_name: str | None = None, vm_id: str | None = None,
                **data: Any) -> Event:
        """Record an event and hand it to every subscriber; never waits."""
        event = Event(next(self._ids), type, time.time(), vm_name, vm_id, data)
        self.last_id = event.id
        self._kept.append(event)
        for subscriber in list(self._subscribers):
            subscriber._offer(event)
        return event

    def subscribe(self, after: int | None = None,
                  accept: Callable[[Event], bool] = lambda event: True) -> Subscription:
        """A subscription to the events after id *after* (None: from now on).

        Events the hub still keeps come first; when *after* is older than
        what it keeps, a ``dropped`` event says how many were missed.
        """
        subscription = Subscription(self, accept)
        if after is not None:
            kept = [e for e in self._kept if e.id > after]
            first = kept[0].id if kept else self.last_id + 1
            if first > after + 1:
                subscription._queue.put_nowait(Event(
                    first - 1, "dropped", time.time(), data={"Dropped": first - after - 1}))
            for event in kept:
                subscription._offer(event)
        self._subscribers.add(subscription)
        return subscription

    def recent(self, after: int = 0) -> list[Event]:
        """The kept events after id *after*, oldest first."""
        return [e for e in self._kept if e.id > after]
