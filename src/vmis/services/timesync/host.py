"""Host half of Time Synchronization: one burst loop per VM session.

Each time a VM's session starts running (boot, resume, agent restart) its
loop starts with a SYNC burst, then sends a SAMPLE burst every
``IntervalMs`` (per VM, table ``timesync_settings``, default 10 s), longer
while the guest stays in step or slews (TimeSyncMonitor.next_wait_ms). A
CLOCK_EVENT from the guest (resume or jump detected inside it) makes the
next burst a SYNC and runs it at once, and so does a jump of the host's own
clock, for every guest. The loop ends with the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from vmis.errors import (
    ChannelError,
    ConfigError,
    ProtocolError,
    RemoteServiceError,
    RequestTimeout,
    ServiceUnavailable,
)
from vmis.services.catalog import by_key
from vmis.services.host_half import HostContext, HostService, VmContext, VmPart, metadata
from vmis.services.link import GuestLink, NotificationHandler
from vmis.services.timesync import DEFAULT_INTERVAL_MS, DEFAULT_STEP_THRESHOLD, Flag, TimeSyncOp
from vmis.services.timesync.burst import TimeSyncMonitor, sync_once
from vmis.services.timesync.jumps import JumpDetector

__all__ = ["MAX_INTERVAL_MS", "MIN_INTERVAL_MS", "SERVICE", "TimeSyncHost", "VmTimeSync"]

SPEC = by_key("timesync")
#: bounds of the per-VM interval
MIN_INTERVAL_MS = 200
MAX_INTERVAL_MS = 3_600_000
#: seconds one request of a burst may take before the burst is given up
REQUEST_TIMEOUT = 5.0
#: seconds between two looks at the host's own clock for a jump
CLOCK_WATCH_INTERVAL = 1.0

timesync_settings = sa.Table(
    "timesync_settings",
    metadata,
    sa.Column("vm_id", sa.String(36), sa.ForeignKey("vms.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("interval_ms", sa.Integer, nullable=False),
)


class VmTimeSync(VmPart):
    """One VM's time sync: its figures (:attr:`monitor`) and its burst loop."""

    def __init__(self, vm: VmContext, timesync: TimeSyncHost) -> None:
        super().__init__(vm)
        self.timesync = timesync
        self.monitor = TimeSyncMonitor()

    def handlers(self) -> Mapping[int, NotificationHandler]:
        return {TimeSyncOp.CLOCK_EVENT: self._on_clock_event}

    def request_sync(self) -> None:
        """Run a SYNC burst now (the guest resumed, or its clock jumped)."""
        self.monitor.request_sync()

    async def on_running(self) -> None:
        """A session started: SYNC at once, then sample every interval."""
        mon = self.monitor
        mon.interval_ms = self.timesync.interval_ms(self.vm.vm.id)
        if mon.task is not None:
            mon.task.cancel()
        link = self.vm.link
        if link is None:
            return
        mon.sync_pending = True
        mon.task = asyncio.create_task(self._loop(link), name=f"timesync:{self.vm.vm.name}")

    async def close(self) -> None:
        if self.monitor.task is not None:
            self.monitor.task.cancel()

    async def _loop(self, link: GuestLink) -> None:
        mon = self.monitor
        closed = asyncio.ensure_future(link.wait_closed())
        # The end of the session wakes the wait below like a CLOCK_EVENT does,
        # so each wait is one timeout on one event (no extra task per burst).
        closed.add_done_callback(lambda _: mon.wake.set())
        try:
            while not closed.done() and self.vm.link is link:
                # Cleared before the burst: a wake-up during it (a CLOCK_EVENT)
                # must run the next burst at once, not be lost.
                mon.wake.clear()
                await self.sync()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(mon.next_wait_ms / 1000):
                        await mon.wake.wait()
        finally:
            closed.cancel()

    async def sync(self) -> bool:
        """One burst and APPLY, if the service can answer; True when it completed."""
        mon = self.monitor
        session = self.vm
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
        clock = self.timesync.clock
        try:
            sample, answer = await sync_once(request, flag, clock, burst, mon.verdict)
        except (ServiceUnavailable, ChannelError, RemoteServiceError, ProtocolError,
                ValueError) as exc:
            # Said once per new failure: a guest that refuses or garbles every
            # burst would otherwise fill the log each interval. A lost session
            # is the session's own warning, not time sync's.
            lost = isinstance(exc, ServiceUnavailable) or (
                isinstance(exc, ChannelError) and not isinstance(exc, RequestTimeout))
            if str(exc) != mon.error and not lost:
                session.log.warning("time sync failed (tried again every interval): %s", exc)
                mon.warned = True
            else:
                session.log.debug("time sync failed: %s", exc)
            mon.error = str(exc)
            if flag is Flag.SYNC:
                mon.sync_pending = True
            mon.backoff = 1  # tried again after the interval, not the longest wait
            return False
        if mon.warned:
            session.log.info("time sync works again (it failed: %s)", mon.error)
            mon.warned = False
        mon.record(sample, flag, answer, clock())
        # the console's offset plot, and anyone watching a guest's clock
        session.publish("timesync", OffsetNs=sample.offset_ns, RoundTripNs=sample.rtt_ns,
                        Action=str(answer.get("action") or "none"))
        if answer.get("action") == "step":
            session.log.info("time sync (%s): guest stepped by %+.6f s", flag.value,
                             -sample.offset_ns / 1e9)
        return True

    def _on_clock_event(self, payload: bytes) -> None:
        body = self.json_body(payload, "time sync CLOCK_EVENT")
        if body is None:
            return
        delta = body.get("delta_ns")
        # nanoseconds of a clock: anything past 64 bits is not one (nor a float)
        self.vm.log.info("guest reports a clock %s (%s s); syncing now", body.get("event"),
                         f"{delta / 1e9:+.3f}" if isinstance(delta, int)
                         and abs(delta) < 2**63 else "?")
        self.request_sync()


class TimeSyncHost(HostService[VmTimeSync]):
    """Time Synchronization on the host: the per-VM interval, Get-/Set-VMTimeSync.

    :param clock: the host's reference clock, ns since the epoch (the machine's clock).
    """

    spec = SPEC
    tables = (timesync_settings,)
    needs = frozenset({TimeSyncOp.SAMPLE, TimeSyncOp.APPLY})

    def __init__(self, host: HostContext, clock: Any = time.time_ns) -> None:
        super().__init__(host)
        self.clock = clock
        self._watch: asyncio.Task[None] | None = None

    def new_part(self, vm: VmContext) -> VmTimeSync:
        return VmTimeSync(vm, self)

    async def start(self) -> None:
        self._watch = asyncio.create_task(self._watch_clock(), name="timesync:host-clock")

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()

    def _now(self) -> int:
        # self.clock read at each call: whatever clock the half has now
        return int(self.clock())

    async def _watch_clock(self) -> None:
        """Sync every guest at once when this host's clock jumps (or the host resumed).

        Otherwise a guest would follow at its next burst, up to 32 intervals
        (320 s) away for one whose clock kept still.
        """
        detector = JumpDetector(self._now, int(DEFAULT_STEP_THRESHOLD * 1e9))
        while True:
            await asyncio.sleep(CLOCK_WATCH_INTERVAL)
            event = detector.check()
            if event is None:
                continue
            kind, delta = event
            sessions = self.host.match(["*"])
            self.log.warning("the host's clock %s (%+.3f s): syncing %d guests now",
                             "jumped" if kind == "jump" else "resumed", delta / 1e9,
                             len(sessions))
            for session in sessions:
                session.part(TimeSyncHost).request_sync()

    # Section: settings

    def interval_ms(self, vm_id: str) -> int:
        """The VM's interval, the default when none was set."""
        with self.host.engine.begin() as conn:
            value = conn.execute(sa.select(timesync_settings.c.interval_ms)
                                 .where(timesync_settings.c.vm_id == vm_id)).scalar()
        return int(value) if value is not None else DEFAULT_INTERVAL_MS

    def set_interval(self, patterns: Sequence[str], interval_ms: int) -> list[dict[str, Any]]:
        """Set-VMTimeSync: change the interval of matching VMs (saved, applied at once).

        :raise NotFoundError: When no VM matches.
        """
        if not MIN_INTERVAL_MS <= interval_ms <= MAX_INTERVAL_MS:
            raise ConfigError(f"the interval must be between {MIN_INTERVAL_MS / 1000:g} s and "
                            f"{MAX_INTERVAL_MS / 1000:g} s")
        sessions = self.host.match(patterns)
        with self.host.engine.begin() as conn:
            for s in sessions:
                updated = conn.execute(timesync_settings.update()
                                       .where(timesync_settings.c.vm_id == s.vm.id)
                                       .values(interval_ms=interval_ms))
                if updated.rowcount == 0:
                    conn.execute(timesync_settings.insert().values(vm_id=s.vm.id,
                                                                   interval_ms=interval_ms))
        for s in sessions:
            mon = s.part(TimeSyncHost).monitor
            mon.interval_ms = interval_ms
            mon.backoff = 1
            mon.slew_ms = 0
            mon.wake.set()  # the new cadence starts now, not after the old wait
        return self.rows(patterns)

    # Section: status

    def rows(self, patterns: Sequence[str]) -> list[dict[str, Any]]:
        """Get-VMTimeSync records of matching VMs."""
        return [self.row(s) for s in self.host.match(patterns)]

    def row(self, session: VmContext) -> dict[str, Any]:
        """One VM's record; the state says why there is no fresh sample, if there is none."""
        mon = session.part(TimeSyncHost).monitor
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


SERVICE = TimeSyncHost
