"""Host manager side of Time Synchronization: one burst loop per VM session.

Each time a VM's session starts running (boot, resume, agent restart) its
loop starts with a SYNC burst, then sends a SAMPLE burst every
``IntervalMs`` (per VM, table ``timesync_settings``, default 10 s), longer
while the guest stays in step or slews (TimeSyncMonitor.next_wait_ms). A
CLOCK_EVENT from the guest (resume or jump detected inside it) makes the
next burst a SYNC and runs it at once. The loop ends with the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from typing import Any

import sqlalchemy as sa

from vmis.errors import (
    ChannelError,
    ConfigError,
    NotFoundError,
    ProtocolError,
    RemoteServiceError,
    ServiceUnavailable,
)
from vmis.host.manager import HostManager
from vmis.host.session import NotificationHook, VmSession
from vmis.host.store import metadata
from vmis.protocol import ServiceId, decode_json
from vmis.services.catalog import by_key
from vmis.services.timesync import DEFAULT_INTERVAL_MS, Flag, TimeSyncOp
from vmis.services.timesync.host import TimeSyncMonitor, sync_once

__all__ = ["HOOKS", "MAX_INTERVAL_MS", "MIN_INTERVAL_MS", "TimeSync", "monitor", "of", "setup"]

_log = logging.getLogger("vmis.host.timesync")

SPEC = by_key("timesync")
#: bounds of the per-VM interval
MIN_INTERVAL_MS = 200
MAX_INTERVAL_MS = 3_600_000
#: seconds one request of a burst may take before the burst is given up
REQUEST_TIMEOUT = 5.0

timesync_settings = sa.Table(
    "timesync_settings",
    metadata,
    sa.Column("vm_id", sa.String(36), sa.ForeignKey("vms.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("interval_ms", sa.Integer, nullable=False),
)


#: each manager's TimeSync, without adding attributes to HostManager
_BY_MANAGER: weakref.WeakKeyDictionary[HostManager, TimeSync] = weakref.WeakKeyDictionary()


def monitor(session: VmSession) -> TimeSyncMonitor:
    """The VM's time sync figures (created on first use)."""
    mon = session.extra.get("timesync")
    if not isinstance(mon, TimeSyncMonitor):
        mon = TimeSyncMonitor()
        session.extra["timesync"] = mon
    return mon


class TimeSync:
    """The time sync part of one host manager (``manager.timesync``)."""

    def __init__(self, manager: HostManager, clock: Any = time.time_ns) -> None:
        self.manager = manager
        #: the host's reference clock, ns since the epoch (the machine's clock)
        self.clock = clock
        timesync_settings.create(manager.store.engine, checkfirst=True)

    # Section: settings

    def interval_ms(self, vm_id: str) -> int:
        """The VM's interval, the default when none was set."""
        with self.manager.store.engine.begin() as conn:
            value = conn.execute(sa.select(timesync_settings.c.interval_ms)
                                 .where(timesync_settings.c.vm_id == vm_id)).scalar()
        return int(value) if value is not None else DEFAULT_INTERVAL_MS

    def set_interval(self, patterns: list[str], interval_ms: int) -> list[dict[str, Any]]:
        """Set-VMTimeSync: change the interval of matching VMs (saved, applied at once).

        :raise NotFoundError: When no VM matches.
        """
        if not MIN_INTERVAL_MS <= interval_ms <= MAX_INTERVAL_MS:
            raise ConfigError(f"the interval must be between {MIN_INTERVAL_MS / 1000:g} s and "
                            f"{MAX_INTERVAL_MS / 1000:g} s")
        sessions = self.manager.match(patterns)
        with self.manager.store.engine.begin() as conn:
            for s in sessions:
                updated = conn.execute(timesync_settings.update()
                                       .where(timesync_settings.c.vm_id == s.vm.id)
                                       .values(interval_ms=interval_ms))
                if updated.rowcount == 0:
                    conn.execute(timesync_settings.insert().values(vm_id=s.vm.id,
                                                                   interval_ms=interval_ms))
        for s in sessions:
            mon = monitor(s)
            mon.interval_ms = interval_ms
            mon.backoff = 1
            mon.slew_ms = 0
            mon.wake.set()  # the new cadence starts now, not after the old wait
        return self.rows(patterns)

    # Section: status

    def rows(self, patterns: list[str]) -> list[dict[str, Any]]:
        """Get-VMTimeSync records of matching VMs."""
        return [self.row(s) for s in self.manager.match(patterns)]

    def row(self, session: VmSession) -> dict[str, Any]:
        """One VM's record; the state says why there is no fresh sample, if there is none."""
        mon = monitor(session)
        override = None
        error = mon.error
        enabled = session.vm.enabled.get(SPEC.key, True)
        try:
            session.require(SPEC)
        except ServiceUnavailable as exc:
            override = ("Disabled" if not enabled else
                        "NoContact" if not session.connected else "Stopped")
            error = str(exc)
        row = mon.row(session.vm.name, override)
        row["Enabled"] = enabled
        row["Error"] = error
        if override is None and error:
            row["State"] = "Error"  # the last burst failed; the reason is in Error
        return row

    # Section: the loop

    async def on_running(self, session: VmSession) -> None:
        """A session started: SYNC at once, then sample every interval."""
        mon = monitor(session)
        mon.interval_ms = self.interval_ms(session.vm.id)
        if mon.task is not None:
            mon.task.cancel()
        channel = session.channel
        if channel is None:
            return
        mon.sync_pending = True
        mon.task = asyncio.create_task(self._loop(session, channel, mon),
                                       name=f"timesync:{session.vm.name}")

    async def _loop(self, session: VmSession, channel: Any, mon: TimeSyncMonitor) -> None:
        closed = asyncio.ensure_future(channel.wait_closed())
        # The end of the session wakes the wait below like a CLOCK_EVENT does,
        # so each wait is one timeout on one event (no extra task per burst).
        closed.add_done_callback(lambda _: mon.wake.set())
        try:
            while not closed.done() and session.channel is channel:
                # Cleared before the burst: a wake-up during it (a CLOCK_EVENT)
                # must run the next burst at once, not be lost.
                mon.wake.clear()
                await self.sync(session, mon)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(mon.next_wait_ms / 1000):
                        await mon.wake.wait()
        finally:
            closed.cancel()

    async def sync(self, session: VmSession, mon: TimeSyncMonitor) -> bool:
        """One burst and APPLY, if the service can answer; True when it completed."""
        try:
            session.require(SPEC)
        except ServiceUnavailable as exc:
            mon.error = str(exc)
            return False
        # Taken at the start: a SYNC asked for during this burst is for the next one.
        flag = Flag.SYNC if mon.sync_pending else Flag.SAMPLE
        mon.sync_pending = False

        async def request(op: int, payload: bytes) -> bytes:
            # Answers are a few bytes: bytes() of bytes is the same object.
            return bytes(await session.request(SPEC, op, payload, timeout=REQUEST_TIMEOUT))

        # A clock that stayed in step needs one sample to show it still is;
        # a burst takes more to find the best of a jittery channel.
        burst = 1 if flag is Flag.SAMPLE and mon.backoff > 1 else None
        try:
            sample, answer = await sync_once(request, flag, self.clock, burst, mon.verdict)
        except (ServiceUnavailable, ChannelError, RemoteServiceError, ProtocolError,
                ValueError) as exc:
            mon.error = str(exc)
            if flag is Flag.SYNC:
                mon.sync_pending = True
            mon.backoff = 1  # tried again after the interval, not the longest wait
            session.log.debug("time sync failed: %s", exc)
            return False
        mon.record(sample, flag, answer, self.clock())
        if answer.get("action") == "step":
            session.log.info("time sync (%s): guest stepped by %+.6f s", flag.value,
                             -sample.offset_ns / 1e9)
        return True


def _on_clock_event(session: VmSession, payload: bytes) -> None:
    try:
        body = decode_json(payload)
    except ProtocolError as exc:
        session.log.warning("bad time sync CLOCK_EVENT: %s", exc)
        return
    delta = body.get("delta_ns")
    session.log.info("guest reports a clock %s (%s s); syncing now", body.get("event"),
                     f"{delta / 1e9:+.3f}" if isinstance(delta, int) else "?")
    monitor(session).request_sync()


#: guest -> host notifications this service takes
HOOKS: dict[tuple[int, int], NotificationHook] = {
    (ServiceId.TIMESYNC, TimeSyncOp.CLOCK_EVENT): _on_clock_event,
}


def setup(manager: HostManager) -> None:
    """Attach time sync to a manager: the settings table and the per-session loop."""
    timesync = TimeSync(manager)
    _BY_MANAGER[manager] = timesync
    manager.on_running.append(timesync.on_running)


def of(manager: HostManager) -> TimeSync:
    """The manager's time sync part.

    :raise NotFoundError: When the plugin was not set up on this manager.
    """
    try:
        return _BY_MANAGER[manager]
    except KeyError:
        raise NotFoundError("time synchronization is not set up in this host manager") from None

