"""Policies across a fleet: two host managers on a real PostgreSQL converge the VMs they
own when a policy or a tag changes on either, promptly (NOTIFY, not polling); a host
that was down converges when it returns; compliance across hosts (docs/fleet.md §5)."""

from __future__ import annotations

import asyncio

import pytest
from support.fleet import guest, host
from support.pair import _start_agent, eventually

from vmis.errors import StateError
from vmis.host.fleet.compliance import compliance
from vmis.services.catalog import StartupType, by_key


async def test_a_policy_set_on_one_host_converges_the_other_hosts_vms(short_tmp, postgres_url,
                                                                    monkeypatch):
    # no lease renewal (nor its look at the store) within the test: only the
    # notification can bring the policy to hv1
    monkeypatch.setattr("vmis.host.fleet.fleet.RENEW_SECONDS", 3600.0)
    async with guest(short_tmp / "g1") as ch1, guest(short_tmp / "g2") as ch2, \
            host(postgres_url, "hv1") as hv1, host(postgres_url, "hv2") as hv2:
        hv1.add_vm("VM1", ch1, heartbeat_interval_ms=200)
        hv2.add_vm("VM2", ch2, heartbeat_interval_ms=200)
        vm1, vm2 = hv1.session("VM1"), hv2.session("VM2")
        assert await vm1.wait_connected(15) and await vm2.wait_connected(15)
        runs = hv1.policies.runs

        # set on hv2, for hv1's VMs only: hv1 hears of it and converges VM1
        saved = await hv2.policies.set_policy("hv1-nobackup", computer="hv1", disable=["VSS"])
        assert saved["VMs"] == 1
        await eventually(lambda: vm1.guest["vss"].state == "stopped", timeout=10)
        assert hv1.policies.runs > runs
        assert vm1.vm.enabled["vss"] is False and vm2.vm.enabled["vss"] is True
        assert hv2.store.get_vm("VM1").enabled["vss"] is False

        # hv2's explicit Enable for hv1's VM is refused: the policy's word wins
        with pytest.raises(StateError, match="policy 'hv1-nobackup'"):
            await hv2.set_enabled(["VM1"], ["VSS"], True, ["hv1"])

        # a tag set on hv1 for hv2's VM: hv2 converges it
        await hv2.policies.set_policy("db", tags=["role=db"], disable=["Guest Service Interface"])
        await hv1.policies.set_policy("db", tags=["role=db"], enable=["Guest Service Interface"])
        [tagged] = await hv1.policies.set_vm_tags(["VM2"], ["role=db"], [])
        assert tagged["ComputerName"] == "hv2"
        await eventually(lambda: vm2.vm.enabled["fcopy"] is True, timeout=10)
        await eventually(lambda: vm2.guest["fcopy"].state == "running", timeout=10)

        # compliance of both hosts, read on one (hv1's from its reports)
        async def both():
            rows = await compliance(hv2, None, ["*"])
            vss = [r for r in rows if r["VMName"] == "VM1" and r["Name"] == "VSS"]
            return rows if vss and vss[0]["Actual"] == "Stopped" else None

        rows = await eventually(both, timeout=10)
        assert {r["ComputerName"] for r in rows} == {"hv1", "hv2"}
        [vss] = [r for r in rows if r["VMName"] == "VM1" and r["Name"] == "VSS"]
        assert (vss["Desired"], vss["Compliant"], vss["Policy"]) == ("Disabled", True,
                                                                      "hv1-nobackup")


async def test_a_host_that_was_down_converges_when_it_returns(short_tmp, postgres_url):
    async with guest(short_tmp / "g1") as ch1:
        async with host(postgres_url, "hv1") as hv1:
            hv1.add_vm("VM1", ch1, heartbeat_interval_ms=200)
        async with host(postgres_url, "hv2") as hv2:
            # hv1 is down: the policy waits in the store
            await hv2.policies.set_policy("base", disable=["VSS"], minimum_version="999")
            rows = await compliance(hv2, ["VM1"], ["*"])
            [vss] = [r for r in rows if r["Name"] == "VSS"]
            # its host is not responding: Unknown, never a stale Compliant
            assert (vss["Actual"], vss["Compliant"]) == ("Unknown", False)
            assert "not responding" in vss["Reason"]
        async with host(postgres_url, "hv1") as hv1:
            session = hv1.session("VM1")
            assert session.vm.enabled["vss"] is False  # converged before its session started
            assert await session.wait_connected(15)
            await eventually(lambda: session.guest["vss"].state == "stopped")


async def test_compliance_across_hosts_names_a_service_the_guest_disabled(short_tmp,
                                                                          postgres_url):
    root = short_tmp / "g1"
    agent, task = await _start_agent(root)
    try:
        async with host(postgres_url, "hv1") as hv1, host(postgres_url, "hv2") as hv2:
            hv1.add_vm("VM1", f"unix:{root / 'run/vmis/channel.sock'}",
                       heartbeat_interval_ms=200)
            session = hv1.session("VM1")
            assert await session.wait_connected(15)
            await hv2.policies.set_policy("base", enable=["Shutdown"])
            await agent.manager.guest_set_startup(by_key("shutdown"), StartupType.DISABLED)

            async def drifted():
                rows = await compliance(hv2, ["VM1"], ["hv1"])
                [row] = [r for r in rows if r["Name"] == "Shutdown"]
                return row if row["Actual"] == "Disabled in guest" else None

            row = await eventually(drifted, timeout=10)
            assert (row["ComputerName"], row["Compliant"], row["Policy"]) == ("hv1", False,
                                                                               "base")
            assert "disabled in the guest" in row["Reason"] and row["Since"]
    finally:
        agent.shutdown()
        await asyncio.wait_for(task, 10)
