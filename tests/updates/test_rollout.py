"""Staged agent rollout in the lab: batches, health, and an unhealthy batch rolled back
with the rollout stopped (docs/updates.md, vmis.host.rollout). Real lab VMs."""

import json

from support.bundles import make_bundle
from support.lab import run_vmis, start_lab

import vmis

#: an agent that starts and confirms, but no longer offers VSS: a service worse than before
_NO_VSS = {"guest/services.py": ("        if half is not None:\n",
                                 "        if half is not None and spec.key != \"vss\":\n")}


def _rollout(lab_dir, *args):
    return run_vmis(lab_dir, "Update-VMIntegrationServices", "-VMName", "*",
                    "-HealthWaitSec", "2", *args, timeout=600)


def test_a_healthy_rollout_goes_batch_by_batch(lab_dir, short_tmp):
    start_lab(lab_dir, "VM1,VM2")
    healthy = make_bundle(short_tmp, "9.9.7")
    result = _rollout(lab_dir, "-BundlePath", str(healthy), "-BatchPercent", "50", "--json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert [(r["VMName"], r["Batch"], r["Result"], r["Healthy"]) for r in rows] == \
        [("VM1", 1, "updated", True), ("VM2", 2, "updated", True)]
    assert {r["Version"] for r in rows} == {"9.9.7"}
    events = [json.loads(line) for line in run_vmis(
        lab_dir, "Get-VMEvent", "-Type", "update", "--json").out.splitlines()]
    stages = [e["Stage"] for e in events if e.get("Rollout")]
    assert stages == ["batch", "healthy", "batch", "healthy", "done"]


def test_an_unhealthy_batch_is_rolled_back_and_stops_the_rollout(lab_dir, short_tmp):
    start_lab(lab_dir, "VM1,VM2,VM3")
    sick = make_bundle(short_tmp, "9.9.9", _NO_VSS)
    result = _rollout(lab_dir, "-BundlePath", str(sick), "-BatchPercent", "34")
    assert result.code == 1
    lines = result.out.splitlines()
    assert lines[0].split() == ["Batch", "VMName", "ComputerName", "From", "To", "Result",
                                "Version", "Healthy"]
    assert "batch 1/3: unhealthy" in result.err and "rollout stopped" in result.err
    assert "VM1: unhealthy: worse than before: VSS OK -> No Contact" in result.err
    rows = json.loads(run_vmis(lab_dir, "Get-VM", "--json").out)
    # the batch went back to the agent it had; the later ones were never touched
    assert {r["Name"]: r["IntegrationServicesVersion"] for r in rows} == \
        {"VM1": vmis.__version__, "VM2": vmis.__version__, "VM3": vmis.__version__}
    table = {line.split()[1]: line.split() for line in lines[2:]}
    assert table["VM1"][:6] == ["1", "VM1", table["VM1"][2], vmis.__version__, "9.9.9",
                                "rolledback"]
    assert table["VM1"][-1] == "False"
    # never started: no versions, no health
    assert table["VM2"][:3] == ["2", "VM2", table["VM1"][2]] and table["VM2"][-1] == "skipped"
    assert table["VM3"][0] == "3" and table["VM3"][-1] == "skipped"
    services = run_vmis(lab_dir, "Get-VMIntegrationService", "-VMName", "VM1", "-Name", "VSS")
    assert "OK" in services.out


def test_health_wait_without_batches_is_a_one_line_error(lab_dir):
    start_lab(lab_dir)
    result = run_vmis(lab_dir, "Update-VMIntegrationServices", "-VMName", "*",
                      "-HealthWaitSec", "5")
    assert result.code == 1 and result.err.strip() == (
        "Update-VMIntegrationServices: -HealthWaitSec goes with -BatchPercent")
