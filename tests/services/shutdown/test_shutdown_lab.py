"""Stop-VM and Restart-VM with the real CLI against a real lab (separate processes)."""

from __future__ import annotations

import json
import time

from support.lab import run_vmis
from vmis.guest.adapters import LAB_INHIBIT_DIR


def power_note(vm) -> dict:
    return json.loads((vm.root / "var/lib/vmis/power.json").read_text())


def test_stop_vm_ends_the_lab_vm(lab, lab_dir):
    vm = lab.vm("DemoVM")
    assert vm.pid is not None
    result = run_vmis(lab_dir, "Stop-VM", "-Name", "DemoVM")
    assert result.code == 0, result.err
    assert result.out.startswith("DemoVM: shut down (guest gone after ")
    assert result.out.rstrip().endswith("; lab VM process ended)")
    assert vm.pid is None  # the lab VM's process has ended
    note = power_note(vm)
    assert note["action"] == "poweroff" and note["reason"].startswith("Stop-VM by ")
    [row] = json.loads(run_vmis(lab_dir, "vm", "list", "--json").out)
    assert row["Connected"] is False


def test_an_off_vm_shows_no_status_as_hyper_v_does(lab, lab_dir):
    assert run_vmis(lab_dir, "Stop-VM", "-Name", "DemoVM").code == 0
    table = run_vmis(lab_dir, "Get-VMIntegrationService", "-VMName", "DemoVM")
    assert table.code == 0 and table.err == ""  # no Lost Communication warnings
    rows = [line.split() for line in table.out.splitlines()[2:]]
    assert [r[-1] for r in rows] == ["False", "True", "True", "True", "True", "True"]
    rows = json.loads(run_vmis(lab_dir, "services", "DemoVM", "--json").out)
    assert {(r["PrimaryStatusDescription"], r["Reason"]) for r in rows} == {(None, "")}
    [vm] = json.loads(run_vmis(lab_dir, "Get-VM", "--json").out)
    assert (vm["State"], vm["Status"], vm["Heartbeat"]) == ("Off", "", None)


def test_stop_vm_with_shutdown_disabled_fails_with_a_clear_error(lab, lab_dir):
    vm = lab.vm("DemoVM")
    disable = run_vmis(lab_dir, "Disable-VMIntegrationService", "-VMName", "DemoVM",
                       "-Name", "Shutdown")
    assert disable.code == 0, disable.err
    result = run_vmis(lab_dir, "Stop-VM", "DemoVM")
    assert result.code == 1 and result.out == ""
    assert result.err == ('Stop-VM: DemoVM: the Shutdown integration service is disabled on '
                          'the host (Enable-VMIntegrationService -VMName DemoVM -Name '
                          '"Shutdown")\n')
    as_json = run_vmis(lab_dir, "Stop-VM", "DemoVM", "--json")
    assert as_json.code == 1
    assert "disabled on the host" in json.loads(as_json.out)[0]["Error"]
    turn_off = run_vmis(lab_dir, "Stop-VM", "DemoVM", "-TurnOff")
    assert turn_off.code == 1 and len(turn_off.err.splitlines()) == 1
    assert "-TurnOff needs a hypervisor connection (QMP)" in turn_off.err
    assert vm.pid is not None  # still running


def test_a_blocked_lab_vm_refuses_until_forced(lab, lab_dir):
    vm = lab.vm("DemoVM")
    inhibit = vm.root / LAB_INHIBIT_DIR
    inhibit.mkdir(parents=True)
    (inhibit / "backup").write_text("nightly backup running")
    refused = run_vmis(lab_dir, "Stop-VM", "DemoVM", "-Reason", "maintenance")
    assert refused.code == 1
    assert refused.err == ("Stop-VM: DemoVM: the guest refuses to shut down: blocked by "
                           "backup: nightly backup running (use -Force to shut down "
                           "anyway)\n")
    assert vm.pid is not None
    forced = run_vmis(lab_dir, "Stop-VM", "DemoVM", "-Force", "-Reason", "maintenance")
    assert forced.code == 0, forced.err
    assert vm.pid is None
    assert power_note(vm)["reason"] == "maintenance"


def test_restart_vm_brings_the_lab_vm_back(lab, lab_dir):
    vm = lab.vm("DemoVM")
    pid = vm.pid
    [before] = json.loads(run_vmis(lab_dir, "vm", "list", "--json").out)
    result = run_vmis(lab_dir, "Restart-VM", "DemoVM", "--json")
    assert result.code == 0, result.err
    [record] = json.loads(result.out)
    assert record["State"] == "Running" and record["Error"] is None
    assert record["DownAfter"] <= record["Seconds"]
    # the same lab VM (process) with a fresh agent, heartbeat back
    assert vm.pid == pid
    assert power_note(vm)["action"] == "reboot"
    deadline = time.monotonic() + 20
    while True:
        [after] = json.loads(run_vmis(lab_dir, "vm", "list", "--json").out)
        if after["Heartbeat"] == "Ok" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert after["Connected"] and after["Heartbeat"] == "Ok"
    assert before["Connected"]
    assert "lab VM restarting: exec" in vm.log.read_text()
    # and it still shuts down afterwards
    assert run_vmis(lab_dir, "Stop-VM", "DemoVM").code == 0
    assert vm.pid is None
