"""The host's burst logic against a fake guest: filtering, flags, and SYNC requests mid-burst."""

from __future__ import annotations

import logging

import pytest
from support.logs import kept_records

from vmis.errors import RequestTimeout
from vmis.host.manager import HostManager
from vmis.host.store import Store
from vmis.protocol import decode_json, encode_json
from vmis.services.timesync import Action, Flag, Sample, TimeSyncOp
from vmis.services.timesync.burst import measure, sync_once, without_apply
from vmis.services.timesync.host import TimeSyncHost

S = 1_000_000_000


class FakeGuest:
    """Answers SAMPLE with a clock *ahead* ns ahead, after scripted one-way delays."""

    def __init__(self, ahead: int, delays: list[tuple[int, int]],
                 mode: str | None = None) -> None:
        self.ahead = ahead
        #: what the SAMPLE answer says of who owns the clock (None: an older guest, silent)
        self.mode = mode
        self.pending = False
        self.samples: list[dict] = []
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
            self.samples.append(decode_json(payload))
            extra = {} if self.mode is None else {"mode": self.mode, "pending": self.pending}
            return encode_json({"t2": t2, "t3": t3, **extra})
        assert op == TimeSyncOp.APPLY
        if self.fail_apply:
            raise RequestTimeout("no answer within 5 s")
        body = decode_json(payload)
        self.applied.append(body)
        return encode_json({"state": "Stepped", "action": "step", "daemon": "none here",
                            "mode": self.mode or "own",
                            "last_step_ns": 42})


async def test_measure_keeps_the_quickest_of_the_burst():
    guest = FakeGuest(ahead=2 * S, delays=[(900_000, 100_000), (50_000, 60_000),
                                           (3_000_000, 10)] + [(400_000, 400_000)] * 5)
    sample, used, last = await measure(guest.request, guest.clock)
    assert used == 8 and last["t2"] - last["t3"] == -500
    assert sample.rtt_ns == 110_000
    assert sample.offset_ns == 2 * S - 5_000  # half the 10 us asymmetry


class FakeSession:
    def __init__(self, guest: FakeGuest) -> None:
        self.guest = guest
        self.log = logging.getLogger("test.timesync")
        self.events: list[tuple[str, dict]] = []

    def require(self, spec) -> None:
        pass

    def publish(self, type: str, **data) -> None:
        self.events.append((type, data))

    async def request(self, spec, op, payload, timeout=None) -> bytes:
        return await self.guest.request(op, payload)


async def test_a_sync_asked_for_during_a_burst_is_kept_for_the_next(tmp_path):
    manager = HostManager(Store(f"sqlite:///{tmp_path / 'h.db'}"))
    guest = FakeGuest(ahead=S, delays=[])
    timesync = TimeSyncHost(manager, clock=guest.clock)
    part = timesync.new_part(FakeSession(guest))
    mon = part.monitor
    assert await part.sync()  # the session's first burst
    assert guest.applied[-1]["flag"] == "sync" and not mon.sync_pending
    # a CLOCK_EVENT arrives while the next (SAMPLE) burst runs
    guest.during_sample = mon.request_sync
    mon.wake.clear()
    assert await part.sync()
    assert guest.applied[-1]["flag"] == "sample"
    assert mon.sync_pending and mon.wake.is_set()
    assert await part.sync()
    assert guest.applied[-1]["flag"] == "sync" and not mon.sync_pending
    assert mon.syncs == 3 and mon.last_flag == Flag.SYNC.value


async def test_a_failed_sync_burst_stays_pending_and_is_said_once(tmp_path):
    manager = HostManager(Store(f"sqlite:///{tmp_path / 'h.db'}"))
    guest = FakeGuest(ahead=S, delays=[])
    timesync = TimeSyncHost(manager, clock=guest.clock)
    session = FakeSession(guest)
    with kept_records(session.log, logging.DEBUG) as lines:
        part = timesync.new_part(session)
        mon = part.monitor
        guest.fail_apply = True
        for _ in range(3):  # three intervals of the same failure: one warning
            assert not await part.sync()
        assert mon.sync_pending and "no answer" in mon.error
        assert lines.messages(logging.WARNING) == [
            "time sync failed (tried again every interval): no answer within 5 s"]
        assert len(lines.messages(logging.DEBUG)) == 2
        guest.fail_apply = False
        assert await part.sync()
        assert guest.applied[-1]["flag"] == "sync" and mon.error == ""
        assert lines.messages(logging.INFO)[0] == \
            "time sync works again (it failed: no answer within 5 s)"
    row = mon.row("DemoVM")
    assert row["OffsetNs"] == S and row["RoundTripNs"] == 2000 and row["Flag"] == "sync"


MS = 1_000_000


def sample(offset_ns: int, rtt_ns: int) -> Sample:
    return Sample(t1=0, t2=rtt_ns // 2 + offset_ns, t3=rtt_ns // 2 + offset_ns, t4=rtt_ns)


@pytest.mark.parametrize("offset, rtt, flag, guest, expected", [
    # within the sample's own uncertainty (half its round trip): the guest would do nothing
    (400_000, MS, Flag.SAMPLE, {"mode": "own", "pending": False}, Action.NONE),
    (-500_000, MS, Flag.SAMPLE, {"mode": "own", "pending": False}, Action.NONE),
    # beyond it: a slew, which only the guest makes
    (600_000, MS, Flag.SAMPLE, {"mode": "own", "pending": False}, None),
    (200 * MS, MS, Flag.SAMPLE, {"mode": "own", "pending": False}, None),
    # another NTP daemon owns the clock: the guest would defer to it
    (5 * MS, MS, Flag.SAMPLE, {"mode": "ntp", "pending": False}, Action.DEFER),
    # chronyd takes every sample
    (0, MS, Flag.SAMPLE, {"mode": "chrony", "pending": False}, None),
    # a SYNC, or a guest waiting to step, always gets its APPLY
    (0, MS, Flag.SYNC, {"mode": "own", "pending": False}, None),
    (0, MS, Flag.SAMPLE, {"mode": "own", "pending": True}, None),
    (0, MS, Flag.SAMPLE, {"mode": "own"}, None),
    # an older guest does not say who owns its clock
    (0, MS, Flag.SAMPLE, {}, None),
    (0, MS, Flag.SAMPLE, {"mode": "sundial", "pending": False}, None),
])
def test_the_apply_is_left_out_only_when_the_guest_would_do_nothing(offset, rtt, flag, guest,
                                                                      expected):
    assert without_apply(sample(offset, rtt), flag, guest) is expected


async def test_an_in_step_guest_costs_one_round_trip_and_hears_the_verdict_next_time(tmp_path):
    manager = HostManager(Store(f"sqlite:///{tmp_path / 'h.db'}"))
    guest = FakeGuest(ahead=0, delays=[], mode="own")
    timesync = TimeSyncHost(manager, clock=guest.clock)
    session = FakeSession(guest)
    part = timesync.new_part(session)
    mon = part.monitor
    assert await part.sync()  # the SYNC burst: 8 samples and the APPLY
    assert len(guest.samples) == 8 and len(guest.applied) == 1 and mon.backoff == 1
    # Stepped is not in step; the next burst takes 2 samples and, finding the clock
    # in step, no APPLY
    assert await part.sync()
    assert len(guest.samples) == 10 and len(guest.applied) == 1
    row = mon.row("DemoVM")
    assert (row["State"], row["Action"], row["Mode"], row["OffsetNs"]) == \
        ("Synchronized", "none", "own", 0)
    # what only the guest knows is kept from its last APPLY answer
    assert row["Daemon"] == "none here" and row["LastStep"] is not None
    assert mon.backoff == 2
    # each burst is an event: the web console's offset plot (docs/events.md)
    assert [(t, d["OffsetNs"], d["Action"]) for t, d in session.events][-1] == \
        ("timesync", 0, "none")
    assert len(session.events) == 2 and session.events[0][1]["RoundTripNs"] > 0
    # in step: one sample per burst, carrying the verdict on the last one
    assert await part.sync()
    assert len(guest.samples) == 11 and len(guest.applied) == 1
    prev = guest.samples[-1]["prev"]
    assert prev == {"state": "Synchronized", "action": "none", "offset_ns": 0, "rtt_ns": 2000,
                    "sample_ns": prev["sample_ns"]}
    assert isinstance(prev["sample_ns"], int)
    # the guest drifted off: an APPLY again, and the wait back to the interval
    guest.ahead = 3 * MS
    assert await part.sync()
    assert len(guest.applied) == 2 and guest.applied[-1]["flag"] == "sample"
    assert "prev" not in guest.samples[-1] or guest.samples[-1]["prev"]["offset_ns"] == 0
    assert mon.verdict is None


async def test_an_older_guest_gets_every_apply(tmp_path):
    manager = HostManager(Store(f"sqlite:///{tmp_path / 'h.db'}"))
    guest = FakeGuest(ahead=0, delays=[])
    timesync = TimeSyncHost(manager, clock=guest.clock)
    part = timesync.new_part(FakeSession(guest))
    for _ in range(3):
        assert await part.sync()
    assert len(guest.applied) == 3 and all("prev" not in s for s in guest.samples)


async def test_sync_once_reports_a_left_out_apply():
    guest = FakeGuest(ahead=100_000, delays=[(500_000, 500_000)], mode="ntp")
    found, answer = await sync_once(guest.request, Flag.SAMPLE, guest.clock, burst=1)
    assert found.offset_ns == 100_000 and guest.applied == []
    assert answer == {"state": "NtpDaemon", "action": "defer", "mode": "ntp",
                      "offset_ns": 100_000, "rtt_ns": 1_000_000, "sample_ns": found.t2,
                      "applied": False}
