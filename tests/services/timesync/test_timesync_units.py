"""Time sync arithmetic and decisions, with no channel: offsets, filters, steps, jumps, chrony."""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmis.errors import RemoteProtocolError
from vmis.guest.adapters import SLEW_RATE, VirtualClock
from vmis.services.timesync import (
    SOCK_MAGIC,
    SOCK_SAMPLE,
    Action,
    Mode,
    Sample,
    best_of,
    decide,
    sock_sample,
)
from vmis.services.timesync.guest import JumpDetector, find_ntp_daemon

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S


def exchange(theta: int, d_out: int, d_back: int, work: int = 0, t1: int = T0) -> Sample:
    """The timestamps of one exchange with a guest *theta* ns ahead."""
    t2 = t1 + d_out + theta
    t3 = t2 + work
    return Sample(t1, t2, t3, t3 - theta + d_back)


# Section: offset and round trip


def test_symmetric_delays_give_the_exact_offset_and_round_trip():
    s = exchange(theta=3600 * S, d_out=150_000, d_back=150_000, work=40_000)
    assert s.offset_ns == 3600 * S
    assert s.rtt_ns == 300_000


def test_guest_behind_gives_a_negative_offset():
    assert exchange(theta=-2 * S, d_out=10, d_back=10).offset_ns == -2 * S


@given(theta=st.integers(-10**12, 10**12), d_out=st.integers(0, 10**8),
       d_back=st.integers(0, 10**8), work=st.integers(0, 10**8))
def test_offset_error_is_half_the_asymmetry_and_bounded_by_half_the_round_trip(
        theta, d_out, d_back, work):
    s = exchange(theta, d_out, d_back, work)
    assert s.rtt_ns == d_out + d_back
    error = s.offset_ns - theta
    assert abs(error - (d_out - d_back) / 2) <= 1  # integer halving
    assert abs(error) <= s.rtt_ns / 2 + 1


def test_sample_json_round_trip_and_rejects():
    s = exchange(5, 7, 9, 11)
    assert Sample.from_json(s.to_json()) == s
    with pytest.raises(RemoteProtocolError, match="t3"):
        Sample.from_json({"t1": 1, "t2": 2, "t3": "3", "t4": 4})
    with pytest.raises(RemoteProtocolError, match="t4"):
        Sample.from_json({"t1": 1, "t2": 2, "t3": 3, "t4": True})


def test_best_of_keeps_the_shortest_round_trip():
    theta = 40 * MS
    slow = exchange(theta, d_out=5 * MS, d_back=100_000)  # 2.45 ms wrong
    quick = exchange(theta, d_out=120_000, d_back=100_000)  # 10 us wrong
    medium = exchange(theta, d_out=900_000, d_back=100_000)
    best = best_of([slow, medium, quick])
    assert best is quick
    assert abs(best.offset_ns - theta) <= 10_000


def test_best_of_drops_impossible_samples_and_needs_one():
    jumped = Sample(T0, T0 + 10, T0 + 5 * S, T0 + 20)  # guest clock jumped mid-exchange
    assert jumped.rtt_ns < 0
    good = exchange(0, 100, 100)
    assert best_of([jumped, good]) is good
    with pytest.raises(ValueError, match="no usable"):
        best_of([jumped])


# Section: slew or step


THRESHOLD = 128 * MS


@pytest.mark.parametrize(("offset", "mode", "sync", "action"), [
    (3600 * S, Mode.OWN, False, Action.STEP),         # large: step
    (-THRESHOLD, Mode.OWN, False, Action.STEP),       # the threshold itself steps
    (THRESHOLD - 1, Mode.OWN, False, Action.SLEW),    # just below: slew
    (-300_000, Mode.OWN, False, Action.SLEW),
    (0, Mode.OWN, False, Action.NONE),
    (50 * MS, Mode.OWN, True, Action.STEP),           # SYNC steps even small offsets
    (0, Mode.OWN, True, Action.NONE),
    (50 * MS, Mode.NTP, False, Action.DEFER),         # never slew against an NTP daemon
    (3600 * S, Mode.NTP, False, Action.DEFER),
    (3600 * S, Mode.NTP, True, Action.STEP),          # ... but the one-shot SYNC steps
    (3600 * S, Mode.CHRONY, True, Action.CHRONY),     # chrony owns the clock, always
    (5 * MS, Mode.CHRONY, False, Action.CHRONY),
])
def test_decide(offset, mode, sync, action):
    assert decide(offset, mode=mode, sync=sync, step_threshold_ns=THRESHOLD) is action


# Section: resume and jump detection


class FakeClocks:
    """REALTIME, MONOTONIC and BOOTTIME of a pretend guest, moved by hand."""

    def __init__(self) -> None:
        self.mono = 1_000 * S
        self.boot = 1_000 * S
        self.real = T0

    def run(self, ns: int, slew_rate: float = 0.0) -> None:
        self.mono += ns
        self.boot += ns
        self.real += ns + int(ns * slew_rate)

    def detector(self, threshold: int = THRESHOLD) -> JumpDetector:
        return JumpDetector(lambda: self.real, threshold, lambda: self.mono, lambda: self.boot)


def test_steady_and_slewing_clocks_raise_nothing():
    c = FakeClocks()
    d = c.detector()
    for _ in range(100):
        c.run(S, slew_rate=SLEW_RATE)
        assert d.check() is None


def test_a_wall_clock_jump_is_detected_once():
    c = FakeClocks()
    d = c.detector()
    c.run(S)
    c.real += 30 * S  # someone set the clock
    assert d.check() == ("jump", 30 * S)
    c.run(S)
    assert d.check() is None


def test_a_backwards_jump_is_detected():
    c = FakeClocks()
    d = c.detector()
    c.run(S)
    c.real -= 5 * S
    assert d.check() == ("jump", -5 * S)


def test_a_resume_from_suspend_is_detected_by_boottime():
    c = FakeClocks()
    d = c.detector()
    c.run(S)
    # suspended for an hour: BOOTTIME and the wall clock ran on, MONOTONIC did not
    c.boot += 3600 * S
    c.real += 3600 * S
    assert d.check() == ("resume", 3600 * S)
    c.run(S)
    assert d.check() is None


def test_our_own_step_is_not_a_jump_after_rebase():
    c = FakeClocks()
    d = c.detector()
    c.run(S)
    c.real -= 3600 * S  # the service stepped
    d.rebase()
    c.run(S)
    assert d.check() is None


def test_the_detector_on_the_real_clocks_of_this_machine_sees_nothing():
    d = JumpDetector(time.time_ns, THRESHOLD)
    time.sleep(0.05)
    assert d.check() is None


# Section: NTP daemons and chrony


def test_find_ntp_daemon(tmp_path):
    proc = tmp_path / "proc"
    for pid, comm in ((1, "systemd"), (77, "sshd"), (4242, "chronyd")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(comm + "\n")
    (proc / "self").mkdir()
    assert find_ntp_daemon(proc) == "chronyd"
    (proc / "4242" / "comm").write_text("systemd-timesyn\n")  # comm is cut at 15 characters
    assert find_ntp_daemon(proc) == "systemd-timesyn"
    (proc / "4242" / "comm").write_text("bash\n")
    assert find_ntp_daemon(proc) is None
    assert find_ntp_daemon(tmp_path / "none") is None


@pytest.mark.skipif(struct.calcsize("l") != 8 or sys.byteorder != "little",
                    reason="the exact bytes are those of 64-bit little-endian Linux")
def test_chrony_sock_sample_bytes():
    # 2023-11-14T22:13:20.123456Z, guest 250 us ahead of the host
    data = sock_sample(1_700_000_000_123_456_789, 250_000)
    assert len(data) == 40 == SOCK_SAMPLE.size
    expected = (
        (1_700_000_000).to_bytes(8, "little")          # tv.tv_sec
        + (123_456).to_bytes(8, "little")               # tv.tv_usec
        + struct.pack("<d", -0.00025)                   # offset: true time - system time
        + (0).to_bytes(4, "little")                     # pulse
        + (0).to_bytes(4, "little")                     # leap
        + (0).to_bytes(4, "little")                     # _pad
        + (0x534F434B).to_bytes(4, "little")            # magic "SOCK"
    )
    assert data == expected
    assert data[36:40] == b"KCOS"


def test_chrony_sock_sample_fields_and_leap():
    sec, usec, offset, pulse, leap, pad, magic = SOCK_SAMPLE.unpack(
        sock_sample(T0 + 999_999_999, -2 * S, leap=1))
    assert (sec, usec) == (T0 // S, 999_999)
    assert offset == 2.0  # guest 2 s behind: the true time is 2 s later
    assert (pulse, leap, pad, magic) == (0, 1, 0, SOCK_MAGIC)


# Section: the lab's virtual clock


def test_virtual_clock_steps_and_persists(tmp_path):
    path = tmp_path / "clock.json"
    path.write_text(json.dumps({"offset_ns": 3600 * S}))
    clock = VirtualClock(path)
    assert abs(clock.now_ns() - time.time_ns() - 3600 * S) < 50 * MS
    clock.step(-3600 * S)
    assert VirtualClock(path).offset_ns() == 0


def test_virtual_clock_slew_is_visible_from_another_reader(tmp_path):
    path = tmp_path / "clock.json"
    clock = VirtualClock(path)
    clock.slew(-10 * MS)
    time.sleep(0.2)
    other = VirtualClock(path)  # another process reading the file
    moved = -other.offset_ns()
    # 0.2 s at 500 ppm is 100 us (generous bounds for a loaded machine)
    assert 90_000 <= moved <= 2_000_000
    # what is left shrinks on as the reader reads, never faster than the slew rate
    assert -10 * MS + moved <= other.slew_remaining_ns() <= -10 * MS + moved + MS


def test_virtual_clock_takes_up_an_external_change_as_a_jump(tmp_path):
    path = tmp_path / "clock.json"
    clock = VirtualClock(path)
    assert abs(clock.offset_ns()) < MS
    tmp = tmp_path / "new.json"
    tmp.write_text(json.dumps({"offset_ns": 30 * S}))
    os.replace(tmp, path)
    assert clock.offset_ns() == 30 * S
    # a half-written file is read again later, not an error
    path.write_text('{"offset_')
    assert clock.offset_ns() == 30 * S


def test_virtual_clock_never_reads_back_more_than_it_was_given(tmp_path):
    clock = VirtualClock(Path(tmp_path / "c.json"))
    clock.slew(1000)
    time.sleep(0.05)
    assert clock.offset_ns() == 1000 and clock.slew_remaining_ns() == 0


def test_the_wait_between_bursts_grows_while_in_step_and_resets_otherwise():
    from vmis.services.timesync import Flag
    from vmis.services.timesync.burst import MAX_BACKOFF, TimeSyncMonitor

    mon = TimeSyncMonitor(interval_ms=10_000)
    sample = None
    waits = []
    for _ in range(7):
        mon.record(sample, Flag.SAMPLE, {"state": "Synchronized"}, 0)  # type: ignore[arg-type]
        waits.append(mon.next_wait_ms)
    assert waits == [20_000, 40_000, 80_000, 160_000, 320_000, 320_000, 320_000]
    assert MAX_BACKOFF == 32
    mon.record(sample, Flag.SAMPLE, {"state": "Slewing"}, 0)  # type: ignore[arg-type]
    assert mon.next_wait_ms == 10_000
    mon.record(sample, Flag.SAMPLE, {"state": "Synchronized"}, 0)  # type: ignore[arg-type]
    mon.request_sync()
    assert mon.next_wait_ms == 10_000 and mon.sync_pending


def test_a_slewing_guest_is_looked_at_again_when_its_slew_should_be_done():
    from vmis.services.timesync import SLEW_RATE, Flag
    from vmis.services.timesync.burst import TimeSyncMonitor

    mon = TimeSyncMonitor(interval_ms=10_000)

    def found(offset_ns: int, state: str = "Slewing", action: str = "slew") -> int:
        mon.record(None, Flag.SAMPLE, {"state": state, "action": action,  # type: ignore[arg-type]
                                       "offset_ns": offset_ns}, 0)
        return mon.next_wait_ms

    # 20 ms at adjtime's 0.5 ms/s: 40 s
    assert found(-20_000_000) == int(0.02 / SLEW_RATE * 1000) == 40_000 and mon.backoff == 1
    # the wait follows the slew up to the longest wait, 320 s
    assert found(100_000_000) == 200_000
    assert found(127_000_000) == 254_000
    assert found(1_000_000_000) == 320_000
    # a short slew does not wait less than the interval
    assert found(2_000_000) == 10_000
    # done and in step: the usual doubling; a clock event: at once, the interval after
    assert found(300_000, "Synchronized", "none") == 20_000
    found(30_000_000)
    mon.request_sync()
    assert mon.next_wait_ms == 10_000 and mon.wake.is_set()


def test_a_slew_within_the_poll_gate_counts_as_in_step():
    from vmis.services.timesync import Flag, Sample
    from vmis.services.timesync.burst import PGATE, TimeSyncMonitor

    mon = TimeSyncMonitor(interval_ms=10_000)
    ms = 1_000_000
    # a 3 ms offset measured through a 4 ms round trip (±2 ms): within 4 x 2 ms, jitter
    noisy = Sample(t1=0, t2=5 * ms, t3=5 * ms, t4=4 * ms)
    assert (noisy.offset_ns, noisy.rtt_ns) == (3 * ms, 4 * ms) and PGATE == 4
    mon.record(noisy, Flag.SAMPLE, {"state": "Slewing", "action": "slew",
                                    "offset_ns": noisy.offset_ns}, 0)
    assert mon.backoff == 2 and mon.next_wait_ms == 20_000
    # the same offset through a clean 0.2 ms round trip: the clock is off; back to the interval
    clean = Sample(t1=0, t2=3_100_000, t3=3_100_000, t4=200_000)
    assert clean.offset_ns == 3 * ms
    mon.record(clean, Flag.SAMPLE, {"state": "Slewing", "action": "slew",
                                    "offset_ns": clean.offset_ns}, 0)
    assert mon.backoff == 1 and mon.next_wait_ms == 10_000
    # a step is never jitter
    mon.record(noisy, Flag.SAMPLE, {"state": "Stepped", "action": "step",
                                    "offset_ns": noisy.offset_ns}, 0)
    assert mon.backoff == 1


def _in_step_at(mon, t_s: float, offset_ns: int, rtt_ns: int = 20_000) -> int:
    """Record a burst at host time *t_s* that found *offset_ns* and left the clock alone."""
    from vmis.services.timesync import Flag, Sample

    t1 = int(t_s * 1e9)
    sample = Sample(t1=t1, t2=t1 + rtt_ns // 2 + offset_ns, t3=t1 + rtt_ns // 2 + offset_ns,
                    t4=t1 + rtt_ns)
    assert (sample.offset_ns, sample.rtt_ns) == (offset_ns, rtt_ns)
    mon.record(sample, Flag.SAMPLE, {"state": "Synchronized", "action": "none",
                                     "offset_ns": offset_ns, "applied": False}, sample.t4)
    return mon.next_wait_ms


def test_a_clock_that_keeps_still_is_looked_at_every_320_s_and_a_drifting_one_sooner():
    from vmis.services.timesync.burst import TimeSyncMonitor

    still = TimeSyncMonitor(interval_ms=10_000)
    t, waits = 0.0, []
    for jitter in (0, 8_000, -5_000, 9_000, -9_000, 3_000, 0):  # within the round trips
        waits.append(_in_step_at(still, t, jitter))
        t += waits[-1] / 1000
    assert waits == [20_000, 40_000, 80_000, 160_000, 320_000, 320_000, 320_000]

    # 10 ppm: 100 us per 10 s. Doubling the 20 s wait to 40 s would carry the
    # 200 us offset to 600 us, over the 500 us budget: the wait stays at 20 s;
    # at 400 us even 20 s more is too long: back to the interval.
    drifting = TimeSyncMonitor(interval_ms=10_000)
    assert _in_step_at(drifting, 0, 0) == 20_000
    assert _in_step_at(drifting, 20, 200_000) == 20_000
    assert _in_step_at(drifting, 40, 400_000) == 10_000
    # 1 ppm fits 80 s (50 us + 1 ppm x 80 s = 130 us) but not 320 s (...+ 320 us x ...)
    slow = TimeSyncMonitor(interval_ms=10_000)
    t, waits = 0.0, []
    for _ in range(6):
        waits.append(_in_step_at(slow, t, int(t * 1000)))
        t += waits[-1] / 1000
    assert waits[:4] == [20_000, 40_000, 80_000, 160_000] and max(waits) < 320_000


def test_a_correction_between_two_bursts_is_not_taken_for_drift():
    from vmis.services.timesync import Flag, Sample
    from vmis.services.timesync.burst import TimeSyncMonitor

    mon = TimeSyncMonitor(interval_ms=10_000)
    assert _in_step_at(mon, 0, 0) == 20_000
    # a slew of 300 us within the poll gate of a noisy sample: in step, no drift reference
    noisy = Sample(t1=20 * 10**9, t2=20 * 10**9 + 1_300_000, t3=20 * 10**9 + 1_300_000,
                   t4=20 * 10**9 + 2_000_000)
    mon.record(noisy, Flag.SAMPLE, {"state": "Slewing", "action": "slew",
                                    "offset_ns": noisy.offset_ns}, noisy.t4)
    assert mon.backoff == 4
    # the slew took the offset away: 300 us -> 0 is a correction, not a drift to project
    assert _in_step_at(mon, 60, 0) == 80_000


def test_a_sync_through_a_busy_channel_is_repeated_while_the_channel_gets_quicker():
    from vmis.services.timesync import Flag, Sample
    from vmis.services.timesync.burst import MAX_RESYNCS, RESYNC_RTT_NS, TimeSyncMonitor

    def through(rtt_ns: int) -> Sample:
        return Sample(t1=0, t2=rtt_ns // 2, t3=rtt_ns // 2, t4=rtt_ns)

    def sync(mon: TimeSyncMonitor, rtt_ns: int, mode: str = "own") -> bool:
        mon.sync_pending = False  # what the burst does as it starts
        mon.record(through(rtt_ns), Flag.SYNC, {"state": "Stepped", "action": "step",
                                                "mode": mode}, 0)
        return mon.sync_pending

    ms = 1_000_000
    assert RESYNC_RTT_NS == 2 * ms and MAX_RESYNCS == 3
    # a boot storm calming down: 80, 40, 20 ms round trips are each followed by
    # another SYNC (after the interval), the fourth in a row is not
    mon = TimeSyncMonitor(interval_ms=10_000)
    assert [sync(mon, rtt) for rtt in (80 * ms, 40 * ms, 20 * ms, 10 * ms)] == \
        [True, True, True, False]
    assert mon.next_wait_ms == 10_000
    # a clean SYNC ends a series at once
    mon = TimeSyncMonitor(interval_ms=10_000)
    assert [sync(mon, rtt) for rtt in (80 * ms, ms)] == [True, False]
    assert mon.resyncs == 0
    # a channel that is always slow gets one more SYNC, not three steps by its noise
    mon = TimeSyncMonitor(interval_ms=10_000)
    assert [sync(mon, rtt) for rtt in (5 * ms, 5 * ms, 5 * ms)] == [True, False, True]
    # another NTP daemon owns the clock: it gets its one step and no more
    mon = TimeSyncMonitor(interval_ms=10_000)
    assert not sync(mon, 80 * ms, mode="ntp")
    # a clock event starts a new series
    mon = TimeSyncMonitor(interval_ms=10_000)
    assert sync(mon, 80 * ms) and sync(mon, 30 * ms)
    mon.request_sync()
    assert mon.resyncs == 0 and sync(mon, 30 * ms)
    # periodic samples never turn into SYNCs however slow
    mon.sync_pending = False
    mon.record(through(80 * ms), Flag.SAMPLE, {"state": "Synchronized", "action": "none"}, 0)
    assert not mon.sync_pending


def test_a_guest_corrected_at_every_burst_is_still_judged_by_its_drift():
    from vmis.services.timesync import Flag, Sample
    from vmis.services.timesync.burst import TimeSyncMonitor

    # 10 ppm, every burst slews the offset it finds (under 1 ms: Synchronized)
    mon = TimeSyncMonitor(interval_ms=10_000)
    t_ns, waits = 0, []
    for _ in range(8):
        offset = mon.next_wait_ms * 10 if waits else 0  # 10 ppm of the wait, in ns
        t_ns += mon.next_wait_ms * 1_000_000 if waits else 0
        sample = Sample(t1=t_ns, t2=t_ns + 10_000 + offset, t3=t_ns + 10_000 + offset,
                        t4=t_ns + 20_000)
        mon.record(sample, Flag.SAMPLE, {"state": "Synchronized", "action": "slew",
                                         "offset_ns": offset}, sample.t4)
        waits.append(mon.next_wait_ms)
    assert max(waits) == 20_000, waits

    # a clock that kept still for long starts to drift: the wait comes back down
    still = TimeSyncMonitor(interval_ms=10_000)
    t = 0.0
    for _ in range(7):
        _in_step_at(still, t, 0)
        t += still.next_wait_ms / 1000
    assert still.next_wait_ms == 320_000
    # 300 us after 320 s (0.9 ppm beyond the jitter): another 320 s would end near
    # 580 us, over the 500 us budget; 160 s ends near 440 us
    assert _in_step_at(still, t, 300_000) == 160_000


def test_a_left_out_apply_keeps_what_only_the_guest_knows_unless_the_clock_changed_hands():
    from vmis.services.timesync import Flag, Sample
    from vmis.services.timesync.burst import TimeSyncMonitor

    mon = TimeSyncMonitor(interval_ms=10_000)
    sample = Sample(t1=0, t2=10_000, t3=10_000, t4=20_000)
    mon.record(sample, Flag.SYNC, {"state": "Stepped", "action": "step", "mode": "ntp",
                                   "daemon": "chronyd", "note": "add the refclock line",
                                   "last_step_ns": 7}, 0)
    verdict = {"state": "NtpDaemon", "action": "defer", "mode": "ntp", "offset_ns": 0,
               "rtt_ns": 20_000, "sample_ns": 10_000, "applied": False}
    mon.record(sample, Flag.SAMPLE, dict(verdict), 0)
    assert (mon.last["daemon"], mon.last["note"], mon.last["last_step_ns"]) == \
        ("chronyd", "add the refclock line", 7)
    # the daemon went away: the guest owns its clock now, and says so in its SAMPLE answer
    mon.record(sample, Flag.SAMPLE, {**verdict, "state": "Synchronized", "action": "none",
                                     "mode": "own"}, 0)
    assert (mon.last["daemon"], mon.last["note"], mon.last["last_step_ns"]) == (None, "", 7)
