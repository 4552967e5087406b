"""``vmis`` with a qemu-ga VM, as an administrator types it.

The sandboxed qemu-ga (support/qga_sandbox.py) behind a lab's host manager.
"""

from __future__ import annotations

import json

from support.lab import run_vmis
from support.pair import eventually

from vmis.lab.lab import Lab

HEADER = [
    "VMName      Name                    Enabled PrimaryStatusDescription "
    "SecondaryStatusDescription",
    "------      ----                    ------- ------------------------ "
    "--------------------------",
]


def services(lab_dir) -> list[str]:
    result = run_vmis(lab_dir, "Get-VMIntegrationService", "-VMName", "QgaVM")
    assert result.code == 0, result.err
    return result.out.splitlines() + result.err.splitlines()


async def test_vm_add_guest_agent_qemu_ga_then_the_tables(lab_dir, qga_sandbox):
    Lab(lab_dir).ensure_host()
    added = run_vmis(lab_dir, "vm", "add", "QgaVM", "-Channel", qga_sandbox.channel,
                     "-GuestAgent", "qemu-ga", "-HeartbeatIntervalMs", "500")
    assert added.code == 0, added.err
    assert "guest agent qemu-ga" in added.out
    lines = await eventually(lambda: (out := services(lab_dir))[3].split()[-2:] == ["OK", "OK"]
                             and out, timeout=20)
    assert lines[:8] == [
        *HEADER,
        "QgaVM       Guest Service Interface False   OK",
        "QgaVM       Heartbeat               True    OK                       OK",
        "QgaVM       Key-Value Pair Exchange True    OK",
        "QgaVM       Shutdown                True    Error",
        "QgaVM       Time Synchronization    True    Error",
        "QgaVM       VSS                     True    Error",
    ]
    # every non-OK row says why, naming the agent's limit
    warnings = lines[8:]
    assert len(warnings) == 3 and all("blocks guest-" in w for w in warnings)

    vm = run_vmis(lab_dir, "Get-VM", "QgaVM").out.splitlines()
    assert vm[2].split()[:4] == ["QgaVM", "Running", "OkApplicationsHealthy", "qemu-ga"]
    assert vm[2].split()[4].startswith("7.")
    listed = json.loads(run_vmis(lab_dir, "vm", "list", "--json").out)
    assert [(v["Name"], v["GuestAgent"]) for v in listed] == [("QgaVM", "qemu-ga")]

    kvp = run_vmis(lab_dir, "Get-VMKvp", "QgaVM")
    assert "Auto" in kvp.out and "OSName" in kvp.out
    assert "WARNING: QgaVM: qemu-ga has only the guest's facts" in kvp.err
    written = run_vmis(lab_dir, "Set-VMKvp", "QgaVM", "role", "db")
    assert written.code == 1 and "keeps no key-value pools" in written.err
    assert len(written.err.splitlines()) == 1

    unknown = run_vmis(lab_dir, "vm", "add", "X", "-Channel", "unix:/x", "-GuestAgent", "spice")
    assert unknown.code == 2 and "GuestAgent" in unknown.err
