"""Time sync end to end through the real channel: host manager and agent in one loop.

The guest's clock is the lab VirtualClock in the pair's root; every reading
below goes through its file, as another process would read it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

from support.pair import eventually, host_guest_pair

from vmis.guest.adapters import VirtualClock
from vmis.services.timesync import SOCK_MAGIC, SOCK_SAMPLE, TimeSyncOp
from vmis.services.timesync.burst import MAX_RESYNCS
from vmis.services.timesync.host import TimeSyncHost

S = 1_000_000_000
MS = 1_000_000


def clock_file(tmp: Path) -> Path:
    return tmp / "guest/var/lib/vmis/clock.json"


def set_offset(tmp: Path, offset_ns: int) -> Path:
    path = clock_file(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"offset_ns": offset_ns}))
    return path


def guest_offset(path: Path) -> int:
    """The lab VM's clock minus the host's, read from its file like another process would."""
    return VirtualClock(path).offset_ns()


async def row(pair) -> dict:
    response = await pair.api.get("/v1/timesync", params={"vm": "DemoVM"})
    assert response.status_code == 200, response.text
    [record] = response.json()
    return record


async def synced(pair, more_than: int) -> dict:
    mon = pair.session.part(TimeSyncHost).monitor
    await eventually(lambda: mon.syncs > more_than, timeout=15)
    return await row(pair)


async def test_an_hour_off_guest_is_within_a_millisecond_after_the_first_sync(short_tmp):
    path = set_offset(short_tmp, 3600 * S)
    async with host_guest_pair(short_tmp) as pair:
        first = await synced(pair, 0)
        assert first["Flag"] == "sync" and first["Action"] == "step"
        assert first["State"] == "Stepped" and first["LastStep"] is not None
        assert abs(first["OffsetNs"] - 3600 * S) < 10 * MS
        assert 0 < first["RoundTripNs"] < 100 * MS
        assert abs(guest_offset(path)) < MS
        # the next sample finds it synchronized and only slews the residue
        pair.manager.service(TimeSyncHost).set_interval(["DemoVM"], 300)
        second = await synced(pair, first["Syncs"])
        for _ in range(MAX_RESYNCS):  # a loaded machine: a SYNC through a slow channel
            if second["Flag"] == "sample":  # is repeated (at most MAX_RESYNCS times)
                break
            second = await synced(pair, second["Syncs"])
        assert second["Flag"] == "sample" and second["Action"] in ("slew", "none")
        assert second["State"] == "Synchronized" and abs(second["OffsetNs"]) < MS
        assert abs(guest_offset(path)) < MS


async def test_a_small_offset_is_slewed_not_stepped(short_tmp):
    path = set_offset(short_tmp, 0)
    async with host_guest_pair(short_tmp) as pair:
        done = (await synced(pair, 0))["Syncs"]
        VirtualClock(path).step(40 * MS)  # below the 128 ms step threshold, and no jump
        pair.manager.service(TimeSyncHost).set_interval(["DemoVM"], 300)
        record = await synced(pair, done)
        assert record["Action"] == "slew" and record["State"] == "Slewing"
        assert abs(record["OffsetNs"] - 40 * MS) < 5 * MS
        clock = VirtualClock(path)
        # still about 40 ms ahead (500 ppm takes 80 s to remove it), slewing back
        assert 30 * MS < clock.offset_ns() <= 40 * MS + MS
        assert -41 * MS < clock.slew_remaining_ns() < -30 * MS


async def test_a_clock_jump_in_the_guest_is_stepped_at_once(short_tmp):
    path = set_offset(short_tmp, 0)
    async with host_guest_pair(short_tmp) as pair:
        first = await synced(pair, 0)
        # a long interval: only the guest's CLOCK_EVENT can explain a quick sync
        pair.manager.service(TimeSyncHost).set_interval(["DemoVM"], 600_000)
        done = (await synced(pair, first["Syncs"]))["Syncs"]  # the one the change wakes
        await asyncio.sleep(0.3)
        VirtualClock(path).step(30 * S)  # someone set the guest's clock
        record = await synced(pair, done)
        assert record["Flag"] == "sync" and record["Action"] == "step"
        assert abs(record["OffsetNs"] - 30 * S) < 10 * MS
        assert abs(guest_offset(path)) < MS


async def test_an_agent_restart_steps_even_a_small_offset(short_tmp):
    path = set_offset(short_tmp, 0)
    async with host_guest_pair(short_tmp) as pair:
        first = await synced(pair, 0)
        pair.manager.service(TimeSyncHost).set_interval(["DemoVM"], 600_000)
        done = (await synced(pair, first["Syncs"]))["Syncs"]
        await pair._stop_agent()
        VirtualClock(path).step(20 * MS)  # drifted while the agent was away
        await pair.restart_agent()
        # the new session starts with a SYNC, which steps whatever the size
        record = await synced(pair, done)
        assert record["Flag"] == "sync" and record["Action"] == "step"
        assert abs(record["OffsetNs"] - 20 * MS) < 5 * MS
        assert abs(guest_offset(path)) < MS


async def test_chrony_gets_refclock_samples_and_the_clock_is_left_alone(short_tmp):
    path = set_offset(short_tmp, 2 * S)
    sock_path = short_tmp / "guest/run/chrony.vmis.sock"
    sock_path.parent.mkdir(parents=True, exist_ok=True)
    chrony = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # what chronyd binds
    chrony.bind(str(sock_path))
    chrony.setblocking(False)
    try:
        async with host_guest_pair(short_tmp) as pair:
            record = await synced(pair, 0)
            assert record["State"] == "Chrony" and record["Mode"] == "chrony"
            assert record["Action"] == "chrony"
            data = chrony.recv(100)
            assert len(data) == SOCK_SAMPLE.size
            sec, usec, offset, pulse, leap, _pad, magic = SOCK_SAMPLE.unpack(data)
            assert magic == SOCK_MAGIC and pulse == 0 and leap == 0
            assert abs(offset - (-2.0)) < 0.005  # the true time is 2 s behind the guest's
            assert abs(guest_offset(path) - 2 * S) < MS  # never touched
    finally:
        chrony.close()


async def test_another_ntp_daemon_gets_one_step_then_is_left_alone(short_tmp):
    path = set_offset(short_tmp, 10 * S)
    comm = short_tmp / "guest/proc/321/comm"
    comm.parent.mkdir(parents=True)
    comm.write_text("ntpd\n")
    async with host_guest_pair(short_tmp) as pair:
        first = await synced(pair, 0)
        assert first["Action"] == "step" and first["Daemon"] == "ntpd"
        assert abs(guest_offset(path)) < MS
        VirtualClock(path).step(50 * MS)
        pair.manager.service(TimeSyncHost).set_interval(["DemoVM"], 300)
        record = await synced(pair, first["Syncs"])
        assert record["Action"] == "defer" and record["State"] == "NtpDaemon"
        assert abs(guest_offset(path) - 50 * MS) < MS  # left to ntpd


async def test_disabled_on_the_host_sends_no_samples(short_tmp):
    set_offset(short_tmp, 0)
    async with host_guest_pair(short_tmp) as pair:
        await synced(pair, 0)
        await pair.manager.set_enabled(["DemoVM"], ["Time Synchronization"], False)
        pair.manager.service(TimeSyncHost).set_interval(["DemoVM"], 200)
        before = pair.session.part(TimeSyncHost).monitor.syncs
        await asyncio.sleep(1.0)
        record = await row(pair)
        assert record["State"] == "Disabled" and record["Enabled"] is False
        assert "disabled on the host" in record["Error"]
        assert pair.session.part(TimeSyncHost).monitor.syncs == before
        await pair.manager.set_enabled(["DemoVM"], ["Time Synchronization"], True)
        assert (await synced(pair, before))["State"] in ("Stepped", "Synchronized")


async def test_an_in_step_guest_is_sampled_once_per_burst_without_apply(short_tmp):
    set_offset(short_tmp, 0)
    async with host_guest_pair(short_tmp) as pair:
        first = await synced(pair, 0)
        service = pair.agent.manager.services["timesync"]
        ops: list[tuple[float, int]] = []
        for op, handler in list(service.handlers.items()):
            async def counted(request, op=op, handler=handler):
                ops.append((time.monotonic(), op))
                return await handler(request)
            service.handlers[op] = counted
        pair.manager.service(TimeSyncHost).set_interval(["DemoVM"], 200)

        def three_lone_samples() -> bool:
            # three bursts in a row (a burst's requests follow each other within
            # milliseconds, bursts are at least 200 ms apart) of one SAMPLE each and
            # no APPLY; with every APPLY sent, no two bursts would look like that
            tail = ops[-3:]
            return (len(tail) == 3 and all(op == TimeSyncOp.SAMPLE for _, op in tail)
                    and all(b[0] - a[0] > 0.1 for a, b in zip(tail, tail[1:])))
        async def left_alone() -> dict | None:
            # the row read at once, before another burst can change it
            record = await row(pair)
            return record if three_lone_samples() and record["Action"] == "none" else None
        record = await eventually(left_alone, timeout=20)
        assert record["State"] == "Synchronized" and record["Mode"] == "own"
        assert record["Syncs"] > first["Syncs"]
        # the guest's own status carries the host's verdict on the samples it was not sent
        status = service.status
        assert status.state == "Synchronized" and status.action == "none"
        assert status.offset_ns is not None and abs(status.offset_ns) < MS
