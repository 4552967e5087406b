"""Heartbeat: Hyper-V's timing rules (unit, fake clock) and the real thing end to end."""

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.pair import eventually, host_guest_pair

from vmis.services.catalog import by_key
from vmis.services.heartbeat.host import HeartbeatMonitor, HeartbeatSettings, HeartbeatState
from vmis.services.status import OperationalStatus

HB = by_key("heartbeat")


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_hyperv_defaults_and_lost_threshold():
    settings = HeartbeatSettings()
    assert (settings.interval_ms, settings.latency_ms, settings.error_threshold) == (2000, 1000, 2)
    # first miss at interval+latency after a beat, lost at the second miss
    assert settings.lost_after == 5.0


def test_no_contact_then_ok_then_lost_then_ok():
    clock = FakeClock()
    mon = HeartbeatMonitor(HeartbeatSettings(), clock)
    assert mon.state() == HeartbeatState.NO_CONTACT
    mon.beat(1, "ok")
    clock.now += 4.9
    assert mon.state() == HeartbeatState.OK
    clock.now += 0.2
    assert mon.state() == HeartbeatState.LOST
    mon.beat(2, "ok")
    assert mon.state() == HeartbeatState.OK
    mon.session_ended()
    assert mon.state() == HeartbeatState.LOST
    mon.new_session()
    mon.beat(1, "ok")
    assert mon.state() == HeartbeatState.OK


async def test_stopped_beats_turn_lost_and_recover(short_tmp):
    async with host_guest_pair(short_tmp, heartbeat_interval_ms=200) as pair:
        service = pair.agent.manager.services["heartbeat"]
        assert service.interval == 0.2  # the host's interval reached the guest
        # a hung guest: beats stop, but the channel stays open
        await service.stop()
        started = time.monotonic()
        await eventually(lambda: pair.session.status(HB).primary
                         is OperationalStatus.LOST_COMMUNICATION, timeout=10)
        # 2 intervals + 1 s latency, measured generously on a loaded machine
        assert time.monotonic() - started < 6
        await service.start()
        await eventually(lambda: pair.session.status(HB).primary is OperationalStatus.OK)


async def test_application_health_is_pushed_and_turns_secondary_critical(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        checks = pair.root / "etc/vmis/health.d"
        checks.mkdir(parents=True)
        good = checks / "10-web"
        good.write_text("#!/bin/sh\nexit 0\n")
        good.chmod(0o755)
        bad = checks / "20-db"
        bad.write_text("#!/bin/sh\nexit 3\n")
        bad.chmod(0o755)
        row = await eventually(
            lambda: (r := pair.session.status(HB)).secondary
            is OperationalStatus.APPLICATION_CRITICAL and r)
        assert row.primary is OperationalStatus.OK and "20-db" in row.reason
        assert row.to_json()["SecondaryStatusDescription"] == "Application Critical"
        bad.write_text("#!/bin/sh\nexit 0\n")
        await eventually(lambda: pair.session.status(HB).secondary is OperationalStatus.OK)


async def test_a_hung_health_check_counts_as_failed(short_tmp):
    from support.pair import quick_config

    async with host_guest_pair(short_tmp, config=quick_config(health_timeout=0.3)) as pair:
        checks = pair.root / "etc/vmis/health.d"
        checks.mkdir(parents=True)
        slow = checks / "slow"
        slow.write_text("#!/bin/sh\nsleep 30\n")
        slow.chmod(0o755)
        await eventually(lambda: pair.session.status(HB).secondary
                         is OperationalStatus.APPLICATION_CRITICAL, timeout=10)


async def test_lost_when_the_agent_goes_and_ok_when_it_returns(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        await pair._stop_agent()
        await eventually(lambda: pair.session.status(HB).primary
                         is OperationalStatus.LOST_COMMUNICATION)
        await pair.restart_agent()
        pair.session.reconnect_now()
        await eventually(lambda: pair.session.status(HB).primary is OperationalStatus.OK,
                         timeout=15)


def test_beat_payload_round_trips_and_rejects_garbage():
    import pytest

    from vmis.errors import RemoteProtocolError
    from vmis.services.heartbeat import decode_beat, encode_beat

    assert len(encode_beat(41, "critical")) == 9
    assert decode_beat(encode_beat(41, "critical")) == (41, "critical")
    assert decode_beat(encode_beat(2**64 + 5, "ok")) == (5, "ok")
    for bad in (b"", b"x" * 8, encode_beat(1, "ok")[:-1] + b"\x07"):
        with pytest.raises(RemoteProtocolError):
            decode_beat(bad)


def test_beats_fall_on_multiples_of_the_interval():
    from vmis.services.heartbeat import beat_delay

    ms = 1_000_000
    interval = 1000 * ms
    assert beat_delay(5000 * ms + 3 * ms, interval) == 997 * ms
    assert beat_delay(5000 * ms, interval) == interval
    # a timer that fired a little early does not beat twice
    assert beat_delay(4999 * ms, interval) == 1001 * ms
    assert beat_delay(4989 * ms, interval) == 11 * ms
    # after a beat off the grid (a session start) the next is on it
    assert beat_delay(5400 * ms, interval) == 600 * ms
    assert beat_delay(5600 * ms, interval) == 400 * ms
    # short intervals: an eighth of the interval counts as early
    assert beat_delay(199 * ms, 200 * ms) == 201 * ms
    assert beat_delay(170 * ms, 200 * ms) == 30 * ms


@given(now=st.integers(min_value=0, max_value=2**63), interval=st.integers(100, 10**12))
def test_a_beat_delay_is_on_the_grid_and_at_most_an_interval_and_10_ms(now, interval):
    from vmis.services.heartbeat import beat_delay

    early = min(interval // 8, 10_000_000)
    delay = beat_delay(now, interval)
    assert (now + delay) % interval == 0
    assert early <= delay <= interval + early


async def test_guests_beat_on_the_wall_clock_grid(short_tmp):
    async with host_guest_pair(short_tmp, heartbeat_interval_ms=200) as pair:
        service = pair.agent.manager.services["heartbeat"]
        phases: list[int] = []
        beat = service._beat

        def timed() -> None:
            phases.append(service._now_ns() % 200_000_000)
            beat()
        service._beat = timed
        await eventually(lambda: len(phases) >= 2, timeout=10)
        # a beat off the grid, half an interval out (what a new session or new
        # settings cause); on a loaded machine it may land late: try again
        for _ in range(5):
            await eventually(lambda: 90_000_000 < service._now_ns() % 200_000_000 < 110_000_000,
                             timeout=5, interval=0.002)
            off = len(phases)
            service._wake.set()
            await eventually(lambda: len(phases) > off, timeout=5, interval=0.002)
            if 60_000_000 < phases[off] < 160_000_000:
                break
        else:
            pytest.fail(f"no beat landed off the grid in 5 tries: {phases}")
        start = off + 1
        await eventually(lambda: len(phases) >= start + 6, timeout=10)
        # the beats after it are back on the grid: late by the loop's delay (tens of
        # ms on a loaded machine), never early by more than the clock's resolution;
        # had they kept the off-grid beat's pace they would be some 100 ms out
        late = sorted(p if p < 150_000_000 else p - 200_000_000 for p in phases[start:])
        assert late[len(late) // 2] < 50_000_000, phases
        assert late[0] > -5_000_000, phases
