"""Integration service policies on one host (SQLite): convergence, precedence,
compliance with its reasons (docs/fleet.md §5). A real guest agent in this process."""

from __future__ import annotations

import pytest
from support.pair import eventually, host_guest_pair

from vmis.errors import ConfigError, NotFoundError, StateError
from vmis.services.catalog import StartupType, by_key

SHUTDOWN = by_key("shutdown")


def _row(rows, vm, name):
    [row] = [r for r in rows if r["VMName"] == vm and r["Name"] == name]
    return row


async def test_a_policy_converges_the_vm_and_wins_over_an_explicit_setting(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        manager, session = pair.manager, pair.session
        # an explicit setting first: the policy that comes after it wins
        await manager.set_enabled(["DemoVM"], ["VSS"], True)
        saved = await manager.policies.set_policy("nobackup", vm_name="Demo*",
                                                  disable=["VSS"])
        assert (saved["Name"], saved["Disable"], saved["VMs"]) == ("nobackup", ["VSS"], 1)
        assert session.vm.enabled["vss"] is False
        await eventually(lambda: session.guest["vss"].state == "stopped")
        assert manager.store.get_vm("DemoVM").enabled["vss"] is False

        # an explicit change against it is refused, naming the policy; nothing changes
        with pytest.raises(StateError, match="VSS of DemoVM is disabled by policy 'nobackup'"):
            await manager.set_enabled(["DemoVM"], ["VSS"], True)
        assert manager.store.get_vm("DemoVM").enabled["vss"] is False
        # what agrees with it, and what it does not name, stay the VM's own to set
        await manager.set_enabled(["DemoVM"], ["VSS"], False)
        [entry] = await manager.set_enabled(["DemoVM"], ["Guest Service Interface"], True)
        assert entry["Applied"] is True

        # policies in name order: the later name wins where two name one service
        await manager.policies.set_policy("zz-backup", vm_name="*", enable=["VSS"])
        assert session.vm.enabled["vss"] is True
        await eventually(lambda: session.guest["vss"].state == "running")
        rows = await _compliance(manager)
        assert _row(rows, "DemoVM", "VSS")["Policy"] == "zz-backup"

        # removing the policies leaves the VM as it is, and the VM its own again
        assert [p["Name"] for p in await manager.policies.remove_policies(["*"])] == \
            ["nobackup", "zz-backup"]
        assert session.vm.enabled["vss"] is True
        await manager.set_enabled(["DemoVM"], ["VSS"], False)


async def test_tags_select_vms_and_a_tag_change_converges_them(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        manager, session = pair.manager, pair.session
        await manager.policies.set_policy("db", tags=["role=db"], disable=["VSS"])
        assert session.vm.enabled["vss"] is True  # not tagged yet
        [tagged] = await manager.policies.set_vm_tags(["demo*"], ["Role=db", "tier=1"], [])
        assert tagged["Tag"] == {"role": "db", "tier": "1"}
        assert session.vm.enabled["vss"] is False
        [untagged] = await manager.policies.set_vm_tags(["DemoVM"], [], ["tier"])
        assert untagged["Tag"] == {"role": "db"}
        with pytest.raises(NotFoundError, match="no VM named 'nope'"):
            await manager.policies.set_vm_tags(["nope"], ["a=b"], [])
        with pytest.raises(ConfigError, match="use key=value"):
            await manager.policies.set_vm_tags(["DemoVM"], ["novalue"], [])


async def test_bad_policies_are_one_line_errors(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        policies = pair.manager.policies
        with pytest.raises(ConfigError, match="needs -Enable, -Disable or -MinimumVersion"):
            await policies.set_policy("empty")
        with pytest.raises(ConfigError, match="VSS: both enabled and disabled"):
            await policies.set_policy("both", enable=["VSS"], disable=["V*"])
        with pytest.raises(ConfigError, match="at most 255 characters"):
            await policies.set_policy("x" * 300, enable=["VSS"])
        with pytest.raises(ConfigError, match="invalid version 'new'"):
            await policies.set_policy("v", minimum_version="new")
        with pytest.raises(NotFoundError):
            await policies.set_policy("x", enable=["NoSuchService"])
        with pytest.raises(ConfigError, match="SQLite"):
            await policies.set_policy("x", computer="hv9", enable=["VSS"])
        with pytest.raises(NotFoundError, match="no integration service policy named 'x'"):
            await policies.remove_policies(["x"])
        assert policies.get_policies() == []


async def _compliance(manager, computers=None):
    from vmis.host.fleet.compliance import compliance

    return await compliance(manager, None, computers)


async def test_compliance_names_a_service_disabled_in_the_guest_and_an_old_agent(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        manager = pair.manager
        await manager.policies.set_policy("base", enable=["Shutdown", "Heartbeat"],
                                          disable=["VSS"], minimum_version="999.0")
        await eventually(lambda: pair.session.guest["vss"].state == "stopped")
        rows = await _compliance(manager)
        assert _row(rows, "DemoVM", "Heartbeat")["Compliant"] is True
        vss = _row(rows, "DemoVM", "VSS")
        assert (vss["Desired"], vss["Actual"], vss["Compliant"], vss["Policy"]) == \
            ("Disabled", "Stopped", True, "base")
        assert vss["Since"] is not None
        # a VM's own setting where no policy speaks: compliant while the guest runs it
        kvp = _row(rows, "DemoVM", "Key-Value Pair Exchange")
        assert (kvp["Desired"], kvp["Compliant"], kvp["Policy"]) == ("Enabled", True, None)
        agent = _row(rows, "DemoVM", "Agent")
        assert (agent["Desired"], agent["Compliant"]) == (">= 999.0", False)
        assert "is older than 999.0, which policy 'base' asks" in agent["Reason"]

        # the guest disables Shutdown on its side: drift, with the reason
        await pair.agent.manager.guest_set_startup(SHUTDOWN, StartupType.DISABLED)
        await eventually(lambda: pair.session.guest["shutdown"].startup == "disabled")
        shutdown = _row(await _compliance(manager), "DemoVM", "Shutdown")
        assert (shutdown["Desired"], shutdown["Actual"], shutdown["Compliant"]) == \
            ("Enabled", "Disabled in guest", False)
        assert "disabled in the guest" in shutdown["Reason"]
        assert set(shutdown) >= {"ComputerName", "VMName", "Name", "Desired", "Actual",
                                 "Compliant", "Since", "Reason"}

        # the agent's version meets a lower minimum
        await manager.policies.set_policy("base", minimum_version="0.0.1")
        assert _row(await _compliance(manager), "DemoVM", "Agent")["Compliant"] is True
