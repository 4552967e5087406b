"""Clocks that jump: the host's, and a lab VM's.

No real clock is touched. The host's time sync reference clock is a
function the time sync host half reads (``TimeSyncHost.clock``): in an
in-process pair it is replaced by this machine's clock plus a jump the test
sets. A lab VM's clock is the lab's VirtualClock, whose file another
process may rewrite: that is a jump of the guest's clock, which from the
guest's side is what a host clock jump looks like.

Either way nothing is lost: the guest follows the host's time within
seconds (not at the next periodic burst, up to 320 s away), heartbeats stay
OK throughout (liveness runs on monotonic clocks), a KVP write made at the
jump is delivered, and the session is not dropped.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from faultlab import FaultLab, wait_for
from support.pair import eventually, host_guest_pair

from vmis.guest.adapters import VirtualClock
from vmis.lab.lab import Lab
from vmis.services.kvp.host import KvpHost
from vmis.services.kvp.pool import KvpPool, Pool
from vmis.services.timesync.host import TimeSyncHost

pytestmark = pytest.mark.slow

S = 1_000_000_000
MS = 1_000_000
#: seconds within which the guest must follow a jump
FOLLOW = 5.0


async def test_the_host_clock_jumps_and_every_guest_follows_within_seconds(short_tmp):
    async with host_guest_pair(short_tmp, heartbeat_interval_ms=500) as pair:
        timesync = pair.manager.service(TimeSyncHost)
        jump = [0]
        timesync.clock = lambda: time.time_ns() + jump[0]
        guest_clock = VirtualClock(pair.root / "var/lib/vmis/clock.json")
        part = pair.session.part(TimeSyncHost)
        await eventually(lambda: part.monitor.syncs >= 1, timeout=15)
        link = pair.session.link
        contact: list[str] = []

        async def watch_heartbeat() -> None:
            while True:
                contact.append(pair.session.contact())
                await asyncio.sleep(0.1)

        watcher = asyncio.ensure_future(watch_heartbeat())
        try:
            for delta in (3600 * S, -7200 * S):  # forward an hour, then back two
                jump[0] += delta
                jumped = time.monotonic()
                kvp = asyncio.ensure_future(
                    pair.manager.service(KvpHost).set(["DemoVM"], "at", str(jump[0])))
                await eventually(lambda: abs(guest_clock.offset_ns() - jump[0]) < 5 * MS,
                                 timeout=FOLLOW + 10)
                followed = time.monotonic() - jumped
                print(f"the host jumped {delta / S:+.0f} s: the guest followed in "
                      f"{followed:.2f} s")
                assert followed < FOLLOW, f"the guest followed only after {followed:.1f} s"
                assert (await kvp)[0]["Delivered"]
            assert KvpPool(pair.root / "var/lib/hyperv", Pool.EXTERNAL).get("at") == \
                str(jump[0])
        finally:
            watcher.cancel()
        assert set(contact) == {"Ok"}, f"heartbeat went {sorted(set(contact))}"
        assert pair.session.link is link, "the session was dropped"


def test_a_lab_vm_clock_jumps_and_is_stepped_back_within_seconds(lab: Lab):
    faults = FaultLab(lab)
    clock_file = faults.root() / "var/lib/vmis/clock.json"
    wait_for(lambda: abs(VirtualClock(clock_file).offset_ns()) < 5 * MS, 30,
             "the first sync")

    # The lab VM's clock jumps an hour ahead (another process writes its clock file).
    tmp = clock_file.with_name("jump.tmp")
    tmp.write_text(json.dumps({"offset_ns": 3600 * S}))
    tmp.replace(clock_file)
    jumped = time.monotonic()
    heartbeats = []

    def back_in_step() -> bool:
        heartbeats.append(faults.heartbeat_ok())
        return abs(VirtualClock(clock_file).offset_ns()) < 5 * MS

    wait_for(back_in_step, FOLLOW + 10, "the guest to be stepped back", interval=0.1)
    followed = time.monotonic() - jumped
    print(f"the lab VM's clock jumped +3600 s: back in step in {followed:.2f} s")
    assert followed < FOLLOW
    assert all(heartbeats), "the heartbeat was not OK throughout"
    rows = faults.call("GET", "/timesync", vm=["DemoVM"])
    assert rows[0]["State"] in ("Synchronized", "Stepped"), rows
    faults.call("POST", "/kvp/set", {"vms": ["DemoVM"], "key": "after", "value": "jump"})
    assert dict(KvpPool(faults.root() / "var/lib/hyperv", Pool.EXTERNAL).items())["after"] \
        == "jump"
