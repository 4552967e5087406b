"""The fleet's store, leases, ownership and requests, with host managers in this process.

docs/fleet.md. Real PostgreSQL (tests/support/postgres.py); the managers are
real HostManagers, each with its own LISTEN connection, sharing one event
loop so a test can look into either. tests/fleet/test_fleet_lab.py runs
them as separate processes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from support.fleet import guest, host
from support.pair import eventually

from vmis.errors import ConfigError, NotFoundError, StateError
from vmis.host.fleet.hosts import (
    HostIdentity,
    HostRegistry,
    check_host_name,
    default_host_name,
)
from vmis.host.fleet.tables import hosts
from vmis.host.manager import HostManager
from vmis.host.session import VmSession
from vmis.host.store import Store, vms
from vmis.services.heartbeat.host import HeartbeatHost


@asynccontextmanager
async def vm_on_hv1(tmp: Path, url: str, heartbeat_ms: int = 200
                    ) -> AsyncIterator[tuple[HostManager, HostManager, VmSession]]:
    """Hosts hv1 and hv2; VM1 is hv1's, its guest connected: both, and VM1's session."""
    async with guest(tmp / "g") as channel, host(url, "hv1") as hv1, host(url, "hv2") as hv2:
        hv1.add_vm("VM1", channel, heartbeat_interval_ms=heartbeat_ms)
        session = hv1.session("VM1")
        assert await session.wait_connected(15)
        yield hv1, hv2, session


def lapse(url: str, name: str) -> None:
    """End a host's lease as if it had stopped renewing it long ago."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(hosts.update().where(hosts.c.name_key == name)
                     .values(lease_until=sa.func.now() - sa.text("interval '1 second'")))
    engine.dispose()


async def test_a_remote_change_reaches_its_owner_and_the_answer_comes_back(short_tmp,
                                                                           postgres_url):
    async with vm_on_hv1(short_tmp, postgres_url, 200) as (hv1, hv2, session):
        # only the owner runs the VM's session
        assert (list(hv1.sessions), list(hv2.sessions)) == ([session.vm.id], [])

        [entry] = await hv2.set_enabled(["VM1"], ["VSS"], False, ["hv1"])
        assert (entry["Applied"], entry["Enabled"], entry["ComputerName"]) == (True, False,
                                                                               "hv1")
        assert entry["Error"] is None and not entry.get("Pending")
        # the owner pushed what the store says, and its session's record says it too
        assert session.vm.enabled["vss"] is False
        assert session.guest["vss"].state == "stopped"
        [enabled] = await hv2.set_enabled(["VM1"], ["VSS"], True, ["*"])
        assert enabled["Applied"] is True and session.guest["vss"].state == "running"

        # reads come from what the owner published, and say where
        statuses = await eventually(lambda: _ok(hv2))
        assert {(r["ComputerName"], r["HostState"]) for r in statuses} == {("hv1",
                                                                             "Responding")}
        [write] = await hv2.fleet.across(
            "kvp", ["VM1"], ["hv1"], {}, local=_never,
            prepare=lambda conn, remote: {vm.id: {"writes": [
                {"Id": _enqueue(conn, vm.id), "Key": "k", "Value": "v"}]} for vm in remote})
        assert (write["Delivered"], write["Key"], write["ComputerName"]) == (True, "k", "hv1")


async def _never(names):
    raise AssertionError(f"no VM of this host was meant: {names}")


def _enqueue(conn, vm_id):
    from vmis.services.kvp.host import enqueue

    return enqueue(conn, vm_id, "k", "v")


async def _ok(manager):
    rows = await manager.services(["VM1"], ["Heartbeat"], ["hv1"])
    return rows if rows[0]["PrimaryStatusDescription"] == "OK" else None


async def test_a_request_for_a_host_that_is_down_waits_for_it_and_is_applied_at_start(
        short_tmp, postgres_url):
    async with guest(short_tmp / "g") as channel:
        async with host(postgres_url, "hv1") as hv1:
            hv1.add_vm("VM1", channel, heartbeat_interval_ms=200)
        async with host(postgres_url, "hv2") as hv2:
            started = asyncio.get_running_loop().time()
            [entry] = await hv2.set_enabled(["VM1"], ["Time Synchronization"], False, ["hv1"])
            assert asyncio.get_running_loop().time() - started < 3  # no wait for a stopped host
            assert entry["Pending"] is True and entry["Applied"] is False
            assert "host hv1 is not responding" in entry["PendingReason"]
            [row] = await hv2.services(["VM1"], ["Time Synchronization"], ["hv1"])
            assert (row["Enabled"], row["PrimaryStatusDescription"], row["HostState"]) == \
                (False, None, "Not Responding")
            assert "host hv1 is not responding" in row["Reason"]
            async with host(postgres_url, "hv1") as hv1:
                session = hv1.session("VM1")
                assert await session.wait_connected(15)
                await eventually(lambda: session.guest["timesync"].state == "stopped")
                await eventually(lambda: _states(hv1) == ["done"])


def _states(manager: HostManager) -> list[str]:
    with manager.engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT state FROM host_requests")).scalars())


async def test_a_name_belongs_to_one_running_manager(postgres_url):
    engine = sa.create_engine(postgres_url)
    Store(postgres_url)
    first = HostRegistry(engine, HostIdentity("hv1", machine="machine-a/boot"))
    first.register()
    elsewhere = HostRegistry(engine, HostIdentity("HV1", machine="machine-b/boot"))
    with pytest.raises(StateError, match=r"a host manager named hv1 is running \(on "):
        elsewhere.register()
    assert first.renew()
    lapse(postgres_url, "hv1")
    elsewhere.register()  # its lease lapsed: the name is free
    assert not first.renew()  # and the first one learns it lost it
    # on the same machine a restart takes over at once once the old process is gone
    gone = HostRegistry(engine, HostIdentity("hv2", machine="m/b", pid=2 ** 22 + 7))
    gone.register()
    HostRegistry(engine, HostIdentity("hv2", machine="m/b")).register()
    engine.dispose()


def test_of_many_claims_of_one_vm_exactly_one_wins(postgres_url):
    store = Store(postgres_url)
    vm = store.add_vm("Contested", "unix:/tmp/x.sock")  # no owner: a VM from before fleets
    engine = store.engine
    registries = [HostRegistry(engine, HostIdentity(f"hv{i}")) for i in range(8)]
    for registry in registries:
        registry.register()
    barrier = threading.Barrier(len(registries))
    won: list[str] = []

    def claim(registry: HostRegistry) -> None:
        barrier.wait()
        with engine.begin() as conn:
            if registry.move(conn, vm.id, None, registry.me.key, {}):
                won.append(registry.me.key)

    threads = [threading.Thread(target=claim, args=(r,)) for r in registries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(vms.c.host)).scalar() == won[0]


async def test_computer_names_on_sqlite_are_this_hosts(tmp_path):
    async with host(f"sqlite:///{tmp_path / 'host.db'}", "hv1") as hv1:
        for name in ("hv1", "HV1", "localhost", ".", "*", "h*"):
            assert hv1.fleet.resolve([name]) == (True, []), name
        assert hv1.fleet.resolve(["x*"]) == (False, [])
        with pytest.raises(ConfigError, match="needs a fleet on a shared PostgreSQL store"):
            hv1.fleet.resolve(["hv2"])
        with pytest.raises(NotFoundError, match="no VM matches"):
            hv1.fleet.targets(["*"], ["*"])


async def test_a_request_made_while_the_owner_reconnects_is_caught_up(short_tmp, postgres_url):
    async with vm_on_hv1(short_tmp, postgres_url, 200) as (hv1, hv2, session):
        listener = hv1.fleet.listener
        assert listener is not None
        await asyncio.wait_for(listener.listening.wait(), 10)
        # the server drops hv1's LISTEN connection; the change is made before it is back
        with hv2.engine.begin() as conn:
            assert conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'vmis host hv1: notifications'")).scalar()
        await eventually(lambda: not listener.listening.is_set())
        [entry] = await hv2.set_enabled(["VM1"], ["VSS"], False, ["hv1"])
        # hv1 heard nothing; on reconnecting it caught up and applied it
        assert listener.connects == 2
        assert (entry["Applied"], entry.get("Pending")) == (True, None)
        assert session.guest["vss"].state == "stopped"


async def test_owners_publish_changes_not_beats(short_tmp, postgres_url):
    async with vm_on_hv1(short_tmp, postgres_url, 100) as (hv1, hv2, session):
        await eventually(lambda: _ok(hv2))
        await asyncio.sleep(1.5)  # the sweep's first look (at most a second) is published too
        written = hv1.fleet.reporter.written
        monitor = session.part(HeartbeatHost).monitor
        beats = monitor.seq
        await asyncio.sleep(2)
        assert monitor.seq >= beats + 10  # about 20 beats meanwhile
        assert hv1.fleet.reporter.written == written  # and not one report for them
        # a change is published at once
        await hv1.set_enabled(["VM1"], ["Heartbeat"], False)
        await eventually(lambda: _heartbeat_of(hv2, "Disabled"), timeout=5)
        await eventually(lambda: hv1.fleet.reporter.written > written, timeout=1)


async def _heartbeat_of(manager, state):
    [row] = await manager.get_vms(["VM1"], ["hv1"])
    return row["Heartbeat"] == state and row["ComputerName"] == "hv1"


def test_host_names(monkeypatch):
    for bad in ("", "-x", "a b", "x" * 254, "localhost", ".", "*"):
        with pytest.raises(ConfigError, match="invalid host name"):
            check_host_name(bad)
    assert check_host_name("hv-01.example_lab") == "hv-01.example_lab"
    monkeypatch.setattr("socket.gethostname", lambda: "hv07.example.org")
    assert HostIdentity.named(None).name == "hv07"
    monkeypatch.setattr("socket.gethostname", lambda: "localhost")
    made = HostIdentity.named(None).name
    assert made.startswith("host-") and made == default_host_name()  # the same every time


async def test_a_rollback_for_another_hosts_vm_reaches_its_owner_who_says_what_it_can_give(
        short_tmp, postgres_url):
    # a staged rollout's unhealthy batch on another host (vmis.host.rollout): the owner
    # puts its VM back with its own agent, so it refuses a version it does not have
    import vmis

    async with vm_on_hv1(short_tmp, postgres_url) as (hv1, hv2, session):
        [entry] = await hv2.fleet.requests.run(
            "rollback", hv2.fleet.targets(["VM1"], ["hv1"]).remote,
            {"timeout": 30, "version": "0.0.1"})
        assert entry["VMName"] == "VM1" and entry["ComputerName"] == "hv1"
        assert entry["Result"] != "updated"
        assert entry["Error"] == (f"VM1: cannot roll back to 0.0.1: host hv1 has the agent "
                                  f"{vmis.__version__} only"), entry
        assert session.connected  # nothing was done to the guest
