"""The host's burst logic against a fake guest: filtering, flags, and SYNC requests mid-burst."""

from __future__ import annotations

import logging

from vmis.errors import RequestTimeout
from vmis.host.manager import HostManager
from vmis.host.plugins.timesync import TimeSync, monitor
from vmis.host.store import Store
from vmis.protocol import decode_json, encode_json
from vmis.services.timesync import Flag, TimeSyncOp
from vmis.services.timesync.host import measure

S = 1_000_000_000


class FakeGuest:
    """Answers SAMPLE with a clock *ahead* ns ahead, after scripted one-way delays."""

    def __init__(self, ahead: int, delays: list[tuple[int, int]]) -> None:
        self.ahead = ahead
        self.delays = list(delays)
        self.host_now = 1_700_000_000 * S
        self.applied: list[dict] = []
        self.during_sample = None
        self.fail_apply = False

    def clock(self) -> int:
        return self.host_now

    async def request(self, op: int, payload: bytes) -> bytes:
        if op == TimeSyncOp.SAMPLE:
            if self.during_sample is not None:
                self.during_sample()
                self.during_sample = None
            d_out, d_back = self.delays.pop(0) if self.delays else (1000, 1000)
            self.host_now += d_out
            t2 = self.host_now + self.ahead
            self.host_now += 500  # the guest's own work
            t3 = self.host_now + self.ahead
            self.host_now += d_back
            return encode_json({"t2": t2, "t3": t3})
        assert op == TimeSyncOp.APPLY
        if self.fail_apply:
            raise RequestTimeout("no answer within 5 s")
        body = decode_json(payload)
        self.applied.append(body)
        return encode_json({"state": "Stepped", "action": "step"})


async def test_measure_keeps_the_quickest_of_the_burst():
    guest = FakeGuest(ahead=2 * S, delays=[(900_000, 100_000), (50_000, 60_000),
                                           (3_000_000, 10)] + [(400_000, 400_000)] * 5)
    sample, used = await measure(guest.request, guest.clock)
    assert used == 8
    assert sample.rtt_ns == 110_000
    assert sample.offset_ns == 2 * S - 5_000  # half the 10 us asymmetry


class FakeSession:
    def __init__(self, guest: FakeGuest) -> None:
        self.guest = guest
        self.extra: dict = {}
        self.log = logging.getLogger("test.timesync")

    def require(self, spec) -> None:
        pass

    async def request(self, spec, op, payload, timeout=None) -> bytes:
        return await self.guest.request(op, payload)


async def test_a_sync_asked_for_during_a_burst_is_kept_for_the_next(tmp_path):
    manager = HostManager(Store(f"sqlite:///{tmp_path / 'h.db'}"))
    guest = FakeGuest(ahead=S, delays=[])
    timesync = TimeSync(manager, clock=guest.clock)
    session = FakeSession(guest)
    mon = monitor(session)
    assert await timesync.sync(session, mon)  # the session's first burst
    assert guest.applied[-1]["flag"] == "sync" and not mon.sync_pending
    # a CLOCK_EVENT arrives while the next (SAMPLE) burst runs
    guest.during_sample = mon.request_sync
    mon.wake.clear()
    assert await timesync.sync(session, mon)
    assert guest.applied[-1]["flag"] == "sample"
    assert mon.sync_pending and mon.wake.is_set()
    assert await timesync.sync(session, mon)
    assert guest.applied[-1]["flag"] == "sync" and not mon.sync_pending
    assert mon.syncs == 3 and mon.last_flag == Flag.SYNC.value


async def test_a_failed_sync_burst_stays_pending(tmp_path):
    manager = HostManager(Store(f"sqlite:///{tmp_path / 'h.db'}"))
    guest = FakeGuest(ahead=S, delays=[])
    timesync = TimeSync(manager, clock=guest.clock)
    session = FakeSession(guest)
    mon = monitor(session)
    guest.fail_apply = True
    assert not await timesync.sync(session, mon)
    assert mon.sync_pending and "no answer" in mon.error
    guest.fail_apply = False
    assert await timesync.sync(session, mon)
    assert guest.applied[-1]["flag"] == "sync" and mon.error == ""
    row = mon.row("DemoVM")
    assert row["OffsetNs"] == S and row["RoundTripNs"] == 2000 and row["Flag"] == "sync"
