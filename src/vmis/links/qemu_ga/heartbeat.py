"""Heartbeat over qemu-ga: guest-ping on the heartbeat's cadence, answered pings made beats.

qemu-ga never speaks first, so liveness is the host asking: while the host
has Heartbeat enabled, the link sends guest-ping every ``interval_ms`` (the
VM's Interval, as SET_SERVICE's settings carry it) and turns each answer into
the BEAT notification a vmis guest would have sent. The Heartbeat host half
then keeps its states and its Lost Communication timing unchanged
(docs/status.md). Each ping's round trip is the beat's latency: the link
keeps the last and the worst of the last minute in the agent facts
(``beat_latency_ms``, ``beat_latency_max_ms``; ``vmis vm list --json``).

qemu-ga answers one command at a time, and the link sends one at a time
(vmis.links.qemu_ga.connection), so a ping waits behind the commands asked
before it: a copy's writes, which a guest's emulated CPU parses at well under
a MiB a second, or a freeze (a sync of every dirty page, then FIFREEZE), or a
clock step (qemu-ga runs hwclock before it answers). A ping that times out
still counts as a beat when qemu-ga answered anything else within the last
two intervals (it is alive, and busy), or when what holds it up is a freeze, a
thaw or a clock step younger than :data:`BUSY_GRACE` seconds (the VSS
translation bounds the freeze itself). Only silence is a missed beat.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from vmis.errors import ChannelError, ProtocolError, RemoteServiceError, RequestTimeout
from vmis.links.qemu_ga.translator import LinkContext, Translator
from vmis.services.catalog import by_key
from vmis.services.heartbeat import DEFAULT_INTERVAL_MS, HeartbeatOp, encode_beat

__all__ = ["BUSY_COMMANDS", "BUSY_GRACE", "HeartbeatTranslator", "busy_with"]

SPEC = by_key("heartbeat")
#: commands that keep qemu-ga from answering a ping for a while, by their nature
BUSY_COMMANDS = frozenset({"guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list",
                           "guest-fsfreeze-thaw", "guest-set-time"})
#: seconds such a command may hold pings up before the guest counts as silent
BUSY_GRACE = 60.0
#: beats whose latency the worst figure covers (a minute at the default interval)
_LATENCY_WINDOW = 30


def busy_with(link: LinkContext, within: float) -> str | None:
    """Why qemu-ga counts as alive though a ping got no answer, if it does.

    :param within: seconds: an answer to anything this recent is a sign of life.
    """
    if time.monotonic() - link.conn.last_heard < within:
        return "answering other commands"
    oldest = link.conn.oldest_pending()
    if oldest is None:
        return None
    command, sent = oldest
    if command in BUSY_COMMANDS and time.monotonic() - sent < BUSY_GRACE:
        return command
    return None


class HeartbeatTranslator(Translator):
    """Pings qemu-ga while Heartbeat is enabled on the host; answers become beats."""

    spec = SPEC

    def __init__(self, link: LinkContext, facts: dict[str, Any]) -> None:
        super().__init__(link)
        self.facts = facts
        self.interval_ms = DEFAULT_INTERVAL_MS
        self.seq = 0
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._task: asyncio.Task[Any] | None = None
        self.handler: Any = None

    def set_enabled(self, enabled: bool, settings: Mapping[str, Any]) -> None:
        interval = settings.get("interval_ms")
        if isinstance(interval, int) and interval > 0:
            self.interval_ms = interval
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if enabled:
            self._task = self.link.spawn(self._beat(), "qemu-ga heartbeat")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _beat(self) -> None:
        interval = self.interval_ms / 1000
        next_at = time.monotonic()
        while True:
            started = time.monotonic()
            alive = False
            try:
                # A ping slower than the interval is a missed beat, not a queue of pings.
                await self.link.call("guest-ping", timeout=max(interval, 0.5))
                alive = True
                self._record((time.monotonic() - started) * 1000)
            except RequestTimeout:
                busy = busy_with(self.link, 2 * max(interval, 0.5))
                if busy is not None:
                    self.link.log.debug("qemu-ga is busy (%s): counted as a beat", busy)
                    alive = True
            except (ChannelError, ProtocolError, RemoteServiceError) as exc:
                self.link.log.debug("heartbeat ping failed: %s", exc)
            if alive:
                self.seq += 1
                self.link.to_host(SPEC.id, HeartbeatOp.BEAT, encode_beat(self.seq, "ok"))
            next_at = max(next_at + interval, time.monotonic())
            await asyncio.sleep(next_at - time.monotonic())

    def _record(self, ms: float) -> None:
        self._latencies.append(ms)
        self.facts["beat_latency_ms"] = round(ms, 3)
        self.facts["beat_latency_max_ms"] = round(max(self._latencies), 3)
