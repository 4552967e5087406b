"""The policy commands as an administrator types them, against a lab host manager
(SQLite: one host): tables, --json, refusals, the WARNING stream (docs/fleet.md §5, §6)."""

from __future__ import annotations

import json

from support.lab import run_vmis


def test_policy_tags_and_compliance_on_the_command_line(lab, lab_dir):
    def vmis(*args):
        return run_vmis(lab_dir, *args)

    tagged = vmis("Set-VM", "-Name", "Demo*", "-Tag", "role=web,tier=1", "-Passthru")
    assert tagged.code == 0, tagged.err
    assert tagged.out.splitlines()[0].split() == ["VMName", "ComputerName", "Tag"]
    row = tagged.out.splitlines()[2].split()
    assert (row[0], row[-1]) == ("DemoVM", "role=web,tier=1")
    made = vmis("Set-VMIntegrationServicePolicy", "-Name", "web", "-Tag", "role=web",
                "-Disable", "VSS", "-MinimumVersion", "999.1", "--json")
    assert made.code == 0, made.err
    policy = json.loads(made.out)
    assert (policy["Disable"], policy["Tag"], policy["VMs"]) == (["VSS"], {"role": "web"}, 1)
    listed = vmis("Get-VMIntegrationServicePolicy").out.splitlines()
    assert listed[0].split() == ["Name", "ComputerName", "VMName", "Tag", "Enable", "Disable",
                                 "MinimumVersion"]
    assert listed[2].split() == ["web", "*", "*", "role=web", "VSS", "999.1"]

    refused = vmis("Enable-VMIntegrationService", "-VMName", "DemoVM", "-Name", "VSS")
    assert refused.code == 1
    assert refused.err.strip().splitlines() == [
        "Enable-VMIntegrationService: VSS of DemoVM is disabled by policy 'web': a policy's "
        "word wins over an explicit setting; change the policy "
        "(Set-VMIntegrationServicePolicy) or what selects the VM; nothing was changed"]

    table = vmis("Get-VMIntegrationServiceCompliance", "-VMName", "DemoVM")
    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert lines[0].split() == ["VMName", "Name", "Desired", "Actual", "Compliant", "Since"]
    agent = [line for line in lines if line.split()[1] == "Agent"]
    assert agent and agent[0].split()[2:4] == [">=", "999.1"] and "False" in agent[0].split()
    assert "WARNING: DemoVM: Agent: the guest agent" in table.err
    assert "older than 999.1, which policy 'web' asks" in table.err
    rows = json.loads(vmis("Get-VMIntegrationServiceCompliance", "--json").out)
    [vss] = [r for r in rows if r["Name"] == "VSS"]
    assert (vss["Desired"], vss["Actual"], vss["Policy"]) == ("Disabled", "Stopped", "web")

    # the tag goes: the policy selects nothing; the VM keeps what it has and is its own
    assert vmis("Set-VM", "-Name", "DemoVM", "-RemoveTag", "role").code == 0
    assert vmis("Enable-VMIntegrationService", "-VMName", "DemoVM", "-Name", "VSS").code == 0
    assert vmis("Remove-VMIntegrationServicePolicy", "-Name", "web").code == 0
    assert json.loads(vmis("Get-VMIntegrationServicePolicy", "--json").out) == []
    gone = vmis("Remove-VMIntegrationServicePolicy", "-Name", "web")
    assert gone.code == 1 and gone.err.strip() == (
        "Remove-VMIntegrationServicePolicy: no integration service policy named 'web' (see "
        "Get-VMIntegrationServicePolicy)")
    bad = vmis("Set-VMIntegrationServicePolicy", "-Name", "x", "-ComputerName", "hv9",
               "-Enable", "VSS")
    assert bad.code == 1 and "SQLite" in bad.err and len(bad.err.strip().splitlines()) == 1
