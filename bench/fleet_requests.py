"""A change for another host's VM, against the same change made on the VM's own host.

docs/fleet.md §1.5. Two host managers (hv1, hv2) on one real PostgreSQL
(a private cluster, as the tests start it: tests/support/postgres.py), one
guest agent whose VM hv1 owns, in one process. Each round disables or
enables VSS on that VM: through hv1 (the baseline: the store, then the
guest) and through hv2 with ``-ComputerName hv1`` (the same, plus the
request: written with its desired state in one transaction, NOTIFY, taken
and applied by hv1, its result written, NOTIFY back, read by hv2). Both
answer only once the guest has the change. Reads of another host's VMs
(Get-VM -ComputerName, from the owners' reports) are timed against the
owner's own Get-VM too.

    .venv/bin/python bench/fleet_requests.py [--rounds 40] [--vms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.pair import _start_agent
from support.postgres import running_cluster

from vmis.host.manager import HostManager
from vmis.host.store import Store


async def timed(rounds: int, call: Callable[[int], Awaitable[Any]]) -> list[float]:
    """Seconds each round took."""
    took = []
    for i in range(rounds):
        started = time.perf_counter()
        await call(i)
        took.append(time.perf_counter() - started)
    return took


def line(what: str, took: list[float], base: list[float] | None = None) -> str:
    median = statistics.median(took) * 1000
    text = f"{what:46} median {median:7.2f} ms   p90 {sorted(took)[len(took) * 9 // 10] * 1000:7.2f} ms"
    if base is not None:
        text += f"   {statistics.median(took) / statistics.median(base):5.2f}x"
    return text


async def run(url: str, rounds: int, vms: int, root: Path) -> None:
    agent, task = await _start_agent(root)
    hv1 = HostManager(Store(url), host_name="hv1")
    hv2 = HostManager(Store(url), host_name="hv2")
    await hv1.start()
    await hv2.start()
    try:
        hv1.add_vm("VM1", f"unix:{root / 'run/vmis/channel.sock'}")
        for i in range(vms - 1):  # more VMs to read back, without guests
            hv1.add_vm(f"Idle{i:03d}", f"unix:{root}/idle-{i}.sock")
        assert await hv1.session("VM1").wait_connected(15)
        assert hv2.fleet.listener is not None and hv1.fleet.listener is not None
        await asyncio.wait_for(hv1.fleet.listener.listening.wait(), 10)
        await asyncio.wait_for(hv2.fleet.listener.listening.wait(), 10)

        async def local(i: int) -> None:
            [entry] = await hv1.set_enabled(["VM1"], ["VSS"], i % 2 == 1)
            assert entry["Applied"], entry

        async def remote(i: int) -> None:
            [entry] = await hv2.set_enabled(["VM1"], ["VSS"], i % 2 == 1, ["hv1"])
            assert entry["Applied"] and entry["ComputerName"] == "hv1", entry

        await timed(4, local)
        await timed(4, remote)
        base = await timed(rounds, local)
        far = await timed(rounds, remote)
        await asyncio.sleep(1)  # the reports of the last change are written
        own = await timed(rounds, lambda i: hv1.get_vms(None))
        read = await timed(rounds, lambda i: hv2.get_vms(None, ["hv1"]))
        print(f"{rounds} rounds; PostgreSQL over a Unix socket; one guest agent (lab-style)")
        print(line("Disable/Enable VSS on the VM's own host", base))
        print(line("... from another host (-ComputerName)", far, base))
        print(f"{'   the request round trip adds':46} median "
              f"{(statistics.median(far) - statistics.median(base)) * 1000:7.2f} ms")
        print(line(f"Get-VM of {vms} VMs on their own host", own))
        print(line("... from another host (the owner's reports)", read, own))
    finally:
        await hv2.close()
        await hv1.close()
        agent.shutdown()
        await asyncio.wait_for(task, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--vms", type=int, default=50)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with running_cluster() as cluster, tempfile.TemporaryDirectory(prefix="vmis-",
                                                                   dir="/tmp") as tmp:
        asyncio.run(run(cluster.database(), args.rounds, args.vms, Path(tmp) / "g"))


if __name__ == "__main__":
    main()
