"""One stream of what changes on a host manager, for screens that follow it live.

Heartbeat transitions, service status changes, enable/disable, KVP changes,
copies, checkpoints and updates, VMs added and removed, the manager itself
coming up and going down: each is an :class:`Event` published on the
manager's :class:`EventHub`. Every event has an id, one more than the last,
so a client that lost its connection asks for what came after the last id
it saw (Server-Sent Events' ``Last-Event-ID``) and misses nothing the hub
still holds; the hub keeps the newest :data:`KEEP` events, and a client
that asks for older ones is told how many it missed. A manager's first id
is the time it started, in microseconds since the epoch
(:func:`first_id_now`), so ids keep rising across restarts of the manager and
a client resuming after one gets the new run's events, missing nothing: there
was nothing between the runs to miss.

Publishing is a dictionary and an append: it never waits, so a slow reader
cannot hold the manager up. Each subscriber has a bounded queue; a reader
that falls that far behind loses the events it could not take, and the next
thing it reads says how many (:attr:`Event.type` ``"dropped"``), as does
:attr:`EventHub.dropped` (a metric).
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmis.errors import ConfigError

__all__ = ["KEEP", "TYPES", "Event", "EventHub", "Subscription", "event_filter", "first_id_now"]

#: how many of the newest events the hub keeps for clients that reconnect
KEEP = 10_000
#: how many events one subscriber may have waiting before it starts losing them
QUEUE = 10_000
#: every event type, as the filters of the API and the command line name them
TYPES = ("host", "vm-added", "vm-removed", "heartbeat", "service", "settings", "kvp", "timesync",
         "copy", "checkpoint", "update", "dropped")


def first_id_now() -> int:
    """The first id of a manager starting now: the wall clock in microseconds.

    It exceeds every id of an earlier run unless that run published more than
    a million events a second on average.
    """
    return time.time_ns() // 1000


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
    """One reader's events, in order; an async iterator that ends when the hub closes."""

    def __init__(self, hub: EventHub, accept: Callable[[Event], bool]) -> None:
        self._hub = hub
        self._accept = accept
        # None: the hub closed (put only where a reader may wait on an empty queue)
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE)
        self._lost = 0
        self._ended = False

    def _offer(self, event: Event) -> None:
        if not self._accept(event):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._lost += 1
            self._hub.dropped += 1

    def _end(self) -> None:
        self._ended = True
        if self._queue.empty():
            self._queue.put_nowait(None)  # wakes a reader waiting for the next event

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    def get_nowait(self) -> Event | None:
        """The next event if one is waiting, else None (the stream drains its queue
        in one write)."""
        if self._lost and self._queue.empty():
            lost, self._lost = self._lost, 0
            return Event(self._hub.last_id, "dropped", time.time(), data={"Dropped": lost})
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def __anext__(self) -> Event:
        event = self.get_nowait()
        if event is None and not (self._ended and self._queue.empty()):
            event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        """Stop receiving events."""
        self._hub._subscribers.discard(self)


class EventHub:
    """The events of one host manager, kept and handed to subscribers.

    :param keep: how many of the newest events to keep for reconnecting clients.
    :param first: the first event's id (a manager passes :func:`first_id_now`).
    """

    def __init__(self, keep: int = KEEP, first: int = 1) -> None:
        self._ids = itertools.count(first)
        self._kept: deque[Event] = deque(maxlen=keep)
        self._subscribers: set[Subscription] = set()
        self._watchers: list[Callable[[Event], None]] = []
        #: the id of this hub's first event
        self.first_id = first
        #: the id of the newest event (``first - 1`` before the first)
        self.last_id = first - 1
        #: events subscribers lost because they fell behind (all subscribers, ever)
        self.dropped = 0
        #: set by :meth:`close`
        self.closed = False

    def publish(self, type: str, *, vm_name: str | None = None, vm_id: str | None = None,
                **data: Any) -> Event:
        """Record an event and hand it to every subscriber; never waits."""
        event = Event(next(self._ids), type, time.time(), vm_name, vm_id, data)
        self.last_id = event.id
        self._kept.append(event)
        for subscriber in list(self._subscribers):
            subscriber._offer(event)
        for watcher in self._watchers:
            watcher(event)
        return event

    def close(self) -> None:
        """End every subscription (the manager is going down): a reader gets what is
        queued, then the end of the stream; later subscriptions end at once."""
        self.closed = True
        for subscriber in self._subscribers:
            subscriber._end()
        self._subscribers.clear()

    def watch(self, watcher: Callable[[Event], None]) -> None:
        """Call *watcher* with every event as it is published, in the publisher's call.

        For tallies that must see every event (the metrics' copy and
        checkpoint totals): a watcher is never behind, so it never loses one.
        It must be quick and must not raise.
        """
        self._watchers.append(watcher)

    @property
    def subscribers(self) -> int:
        """How many readers follow the stream now."""
        return len(self._subscribers)

    def subscribe(self, after: int | None = None,
                  accept: Callable[[Event], bool] = lambda event: True) -> Subscription:
        """A subscription to the events after id *after* (None: from now on).

        Events the hub still keeps come first; when *after* is older than
        what it keeps, a ``dropped`` event says how many were missed. An
        *after* from an earlier run of the manager (below :attr:`first_id`)
        misses nothing of it; one this hub never reached (a client of
        another manager's) gets everything kept.
        """
        subscription = Subscription(self, accept)
        if after is not None:
            if after > self.last_id:
                after = self.first_id - 1
            kept = [e for e in self._kept if e.id > after]
            first = kept[0].id if kept else self.last_id + 1
            missed = first - max(after, self.first_id - 1) - 1
            if missed > 0:
                subscription._queue.put_nowait(Event(
                    first - 1, "dropped", time.time(), data={"Dropped": missed}))
            for event in kept:
                subscription._offer(event)
        if self.closed:
            subscription._end()
        else:
            self._subscribers.add(subscription)
        return subscription

    def recent(self, after: int = 0,
               accept: Callable[[Event], bool] = lambda event: True) -> list[Event]:
        """The kept events after id *after* that *accept* takes, oldest first."""
        return [e for e in self._kept if e.id > after and accept(e)]


def event_filter(vms: Sequence[str] = (), types: Sequence[str] = ()) -> Callable[[Event], bool]:
    """A subscription's filter: events of VMs matching *vms* (names, wildcards,
    case-insensitive) of the *types* named; empty means all. ``dropped`` always passes:
    a reader must know what it missed.

    :raise ConfigError: For a type that is not one of :data:`TYPES`.
    """
    wanted = {t.lower() for t in types}
    if unknown := sorted(wanted - set(TYPES)):
        raise ConfigError(f"no event type {', '.join(unknown)}; the types are "
                          f"{', '.join(TYPES)}")
    patterns = [p.lower() for p in vms]
    names: dict[str, bool] = {}

    def vm_matches(name: str | None) -> bool:
        if name is None:
            return False
        found = names.get(name)
        if found is None:
            lower = name.lower()
            found = names[name] = any(fnmatch.fnmatchcase(lower, p) for p in patterns)
        return found

    def accept(event: Event) -> bool:
        if event.type == "dropped":
            return True
        if wanted and event.type not in wanted:
            return False
        return not patterns or vm_matches(event.vm_name)

    return accept
