"""A fleet at scale: 10 host managers' worth of VMs (10 x 1024) on one PostgreSQL,
against the same run on one host.

docs/fleet.md §6. Real PostgreSQL (a private cluster, as the tests start it:
tests/support/postgres.py), real HostManagers with their real store traffic
(leases, LISTEN/NOTIFY, reports, policy convergence); the guests are
simulated (a GuestKind whose links answer at once, in this process), since
10,240 guest agents do not fit a 2-core machine. The managers share this
process's one event loop, so every figure of the fleet run includes ten
managers' work on one core: a real fleet has a machine per host.

Measured, for the fleet (``--hosts``, default 10) and for one host with the
same number of VMs per host (the baseline, in the same run):

- ``Get-VM -ComputerName '*'`` on one host (through its API, JSON included,
  and the manager's call alone): median and p90;
- a policy change made on one host until every owning host has it (has
  heard of it, written its VMs' desired state and given it to their
  sessions), and until every guest has it (the pushes done): the slowest
  host;
- each host's steady-state store writes per second (INSERT/UPDATE/DELETE
  statements of its engine), with ``--churn`` guest-side service changes per
  second per host (each one a status change its owner publishes);
- the CPU of PostgreSQL (all its processes) in the steady state, % of one core.

    .venv/bin/python bench/fleet_scale.py [--hosts 10] [--vms 1024] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import httpx
import sqlalchemy as sa
from support.postgres import running_cluster

import vmis
from vmis.api.access import on_unix_socket
from vmis.api.app import create_app
from vmis.errors import RemoteServiceError
from vmis.host.manager import HostManager
from vmis.host.store import Store, service_settings, vms
from vmis.protocol import Payload
from vmis.services.catalog import CATALOG
from vmis.services.host_half import VmRecord
from vmis.services.link import LinkEvents, LinkHello, ServiceOffer

TICK = os.sysconf("SC_CLK_TCK")
#: what a simulated guest offers: the services vmis has no periodic requests for
OFFERED = ("heartbeat", "shutdown", "vss", "fcopy")


class SimLink:
    """A guest that answers at once: the host side runs as with a real guest."""

    kind = "vmis"
    max_payload = peer_max_payload = 65536

    def __init__(self, events: LinkEvents) -> None:
        self.events = events
        self.hello = LinkHello(
            {"version": vmis.__version__, "boot_id": str(uuid.uuid4()), "kind": "vmis"},
            {key: ServiceOffer((1, 0), "running", "automatic") for key in OFFERED})
        self._closed = asyncio.Event()

    @property
    def running(self) -> bool:
        return not self._closed.is_set()

    @property
    def lost_reason(self) -> str:
        return "closed" if self._closed.is_set() else ""

    async def request(self, service: int, op: int, payload: Payload = b"",
                      timeout: float | None = 30.0) -> Any:
        raise RemoteServiceError("unknown-op", "a simulated guest")

    def notify(self, service: int, op: int, payload: Payload = b"") -> None:
        pass

    async def set_service(self, key: str, enabled: bool, settings: Mapping[str, Any],
                          timeout: float) -> dict[str, Any]:
        offer = self.hello.services.get(key)
        if offer is None:
            raise RemoteServiceError("not-found", f"a simulated guest has no {key}")
        offer.state = "running" if enabled else "stopped"
        return {"state": offer.state, "startup": offer.startup}

    async def ping(self, timeout: float) -> None:
        pass

    async def install_agent(self, bundle: str, sha256: str, version: str,
                            timeout: float) -> dict[str, Any]:
        raise RemoteServiceError("unknown-op", "a simulated guest")

    def close(self) -> None:
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def churn(self) -> None:
        """The guest stops or starts VSS on its own: a status change its owner publishes."""
        offer = self.hello.services["vss"]
        offer.state = "stopped" if offer.state == "running" else "running"
        self.events.service_state("vss", offer.state, offer.startup)


class SimKind:
    name = "vmis"

    def __init__(self) -> None:
        self.links: list[SimLink] = []

    async def open(self, vm: VmRecord, events: LinkEvents) -> SimLink:
        link = SimLink(events)
        self.links.append(link)
        return link


def populate(url: str, hosts: int, per_host: int) -> None:
    """Register the VMs straight into the store (each host's, as add_vm would)."""
    engine = Store(url).engine
    now = datetime.now(UTC)
    rows, settings = [], []
    for h in range(hosts):
        for i in range(per_host):
            vm_id = str(uuid.uuid4())
            name = f"h{h:02d}-vm{i:04d}"
            rows.append({"id": vm_id, "name": name, "name_key": name, "channel": "unix:/sim",
                         "kind": "external", "guest_agent": "vmis", "created": now,
                         "host": f"hv{h:02d}", "heartbeat_interval_ms": 60_000})
            settings += [{"vm_id": vm_id, "service": s.key, "enabled": s.default_enabled}
                         for s in CATALOG.host_services]
    with engine.begin() as conn:
        conn.execute(vms.insert(), rows)
        conn.execute(service_settings.insert(), settings)
    engine.dispose()


class Writes:
    """Counts the write statements of one manager's engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        sa.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            self.count += 1


def postgres_ticks(data_dir: Path) -> int:
    """CPU ticks of the cluster's processes: the postmaster and its children."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(entry) == postmaster or int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total


def timing(took: list[float]) -> str:
    return (f"median {statistics.median(took) * 1000:7.1f} ms   "
            f"p90 {sorted(took)[len(took) * 9 // 10] * 1000:7.1f} ms")


async def settle(managers: list[HostManager], writes: list[Writes], quiet: float) -> None:
    """Wait until a burst is over: no host has reports to write, and none wrote
    anything for *quiet* seconds."""
    last = [-1] * len(writes)
    calm_since = time.monotonic()
    while time.monotonic() - calm_since < quiet:
        await asyncio.sleep(0.1)
        now = [w.count for w in writes]
        if now != last or any(m.fleet.reporter.busy for m in managers):
            last, calm_since = now, time.monotonic()


async def run(url: str, data_dir: Path, hosts: int, per_host: int, seconds: float,
              churn: float, rounds: int) -> dict[str, Any]:
    populate(url, hosts, per_host)
    kinds = [SimKind() for _ in range(hosts)]
    managers = [HostManager(Store(url), guest_kinds={"vmis": kinds[h]}, host_name=f"hv{h:02d}")
                for h in range(hosts)]
    writes = [Writes(m.engine) for m in managers]
    started = time.monotonic()
    for manager in managers:
        await manager.start()
    figures: dict[str, Any] = {}
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=on_unix_socket(
        create_app(managers[0]))), base_url="http://vmis", timeout=120)
    try:
        while sum(len(k.links) for k in kinds) < hosts * per_host:
            await asyncio.sleep(0.2)
        await settle(managers, writes, 3.0)
        figures["start"] = time.monotonic() - started
        print(f"{hosts} host(s) started in {figures['start']:.0f} s; measuring",
              file=sys.stderr)

        # the steady state, with guest-side changes at --churn per host per second
        async def churning() -> None:
            while True:
                await asyncio.sleep(1.0 / churn)
                for kind in kinds:
                    random.choice(kind.links).churn()

        churner = asyncio.create_task(churning()) if churn > 0 else None
        before_w = [w.count for w in writes]
        before_pg, before_me = postgres_ticks(data_dir), os.times()
        await asyncio.sleep(seconds)
        after_pg, after_me = postgres_ticks(data_dir), os.times()
        figures["writes"] = [(w.count - b) / seconds for w, b in zip(writes, before_w,
                                                                       strict=True)]
        figures["pg_cpu"] = (after_pg - before_pg) / TICK / seconds * 100
        figures["managers_cpu"] = ((after_me.user + after_me.system)
                                   - (before_me.user + before_me.system)) / seconds * 100
        if churner is not None:
            churner.cancel()

        # Get-VM -ComputerName '*' on one host: the API (JSON included), the call alone
        api_took, call_took = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            answer = await api.get("/v1/vm-status", params={"computer": "*"})
            api_took.append(time.perf_counter() - t0)
            assert answer.status_code == 200 and len(answer.json()) == hosts * per_host
            t0 = time.perf_counter()
            await managers[0].get_vms_json(None, ["*"])
            call_took.append(time.perf_counter() - t0)
        figures["getvm_api"], figures["getvm_call"] = api_took, call_took

        # a policy change until every owning host has converged its VMs
        reach, applied = [], []
        for i in range(rounds):
            await settle(managers, writes, 1.0)  # a change to a quiet fleet: reports written
            runs = [m.policies.runs for m in managers]
            t0 = time.monotonic()
            key = "enable" if i % 2 else "disable"
            await managers[0].policies.set_policy("bench", **{key: ["Guest Service Interface"]})
            while any(m.policies.runs == r or m.policies.converged_at < t0
                      for m, r in zip(managers, runs, strict=True)):
                await asyncio.sleep(0.005)
            reach.append(max(m.policies.reached_at for m in managers) - t0)
            applied.append(max(m.policies.converged_at for m in managers) - t0)
            changed = sum(1 for k in kinds for link in k.links
                          if link.hello.services["fcopy"].state == ("running" if i % 2
                                                                    else "stopped"))
            assert changed == hosts * per_host, (changed, i)
        figures["policy"], figures["applied"] = reach, applied
    finally:
        await api.aclose()
        for manager in managers:
            await manager.close()
    return figures


def report(name: str, f: dict[str, Any], hosts: int, per_host: int) -> None:
    writes = f["writes"]
    print(f"{name}: {hosts} host(s) x {per_host} VMs = {hosts * per_host} VMs "
          f"(started and published in {f['start']:.1f} s)")
    print(f"  Get-VM -ComputerName '*' (API, JSON)  {timing(f['getvm_api'])}")
    print(f"  ... the manager's call alone          {timing(f['getvm_call'])}")
    print(f"  policy change -> every host has it    {timing(f['policy'])}   "
          f"max {max(f['policy']) * 1000:7.1f} ms")
    print(f"  ... and every guest has it            {timing(f['applied'])}   "
          f"max {max(f['applied']) * 1000:7.1f} ms")
    print(f"  store writes/s per host (steady)      median {statistics.median(writes):6.2f}   "
          f"min {min(writes):6.2f}   max {max(writes):6.2f}")
    print(f"  PostgreSQL CPU (steady)               {f['pg_cpu']:6.1f} % of a core")
    print(f"  the managers' process CPU (steady)    {f['managers_cpu']:6.1f} % of a core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--vms", type=int, default=1024, help="VMs per host")
    parser.add_argument("--seconds", type=float, default=20.0, help="steady-state window")
    parser.add_argument("--churn", type=float, default=2.0,
                        help="guest-side service changes per second per host")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with running_cluster(options="-c max_connections=400") as cluster, \
            tempfile.TemporaryDirectory(prefix="vmis-", dir="/tmp"):
        data_dir = cluster.socket_dir.parent / "data"
        one = asyncio.run(run(cluster.database(), data_dir, 1, args.vms, args.seconds,
                              args.churn, args.rounds))
        fleet = asyncio.run(run(cluster.database(), data_dir, args.hosts, args.vms,
                                args.seconds, args.churn, args.rounds))
    print(f"PostgreSQL over a Unix socket; simulated guests; all managers in one process, "
          f"one event loop; churn {args.churn:g}/s per host")
    report("one host (baseline)", one, 1, args.vms)
    report("fleet", fleet, args.hosts, args.vms)
    print(f"  ratios fleet/one: Get-VM (API) "
          f"{statistics.median(fleet['getvm_api']) / statistics.median(one['getvm_api']):.1f}x, "
          f"policy reach {statistics.median(fleet['policy']) / statistics.median(one['policy']):.1f}x, "
          f"writes/s per host "
          f"{statistics.median(fleet['writes']) / max(statistics.median(one['writes']), 1e-9):.2f}x")


if __name__ == "__main__":
    main()
