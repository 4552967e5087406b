"""Update-VMIntegrationServices in the lab: Update required -> Up to date, and rollback."""

import json

import vmis
from support.bundles import make_bundle
from support.lab import run_vmis, start_lab


def get_vm(lab_dir, name):
    result = run_vmis(lab_dir, "Get-VM", "-Name", name, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)[0]


def test_update_turns_update_required_to_up_to_date_and_keeps_settings(lab_dir, short_tmp):
    old = make_bundle(short_tmp, "0.0.9")
    start_lab(lab_dir, "OldVM", agent_bundle=old)
    vm = get_vm(lab_dir, "OldVM")
    assert (vm["IntegrationServicesVersion"], vm["IntegrationServicesState"]) == \
        ("0.0.9", "Update required")
    table = run_vmis(lab_dir, "Get-VM").out
    assert "OldVM" in table and "Update required" in table
    assert run_vmis(lab_dir, "Disable-VMIntegrationService", "-VMName", "OldVM", "-Name",
                    "VSS").code == 0

    result = run_vmis(lab_dir, "Update-VMIntegrationServices", "-VMName", "OldVM", "--json")
    assert result.code == 0, result.err
    [row] = json.loads(result.out)
    assert (row["From"], row["To"], row["Result"], row["Version"]) == \
        ("0.0.9", vmis.__version__, "updated", vmis.__version__)
    vm = get_vm(lab_dir, "OldVM")
    assert vm["IntegrationServicesState"] == "Up to date" and vm["Heartbeat"] == \
        "OkApplicationsHealthy"
    rows = json.loads(run_vmis(lab_dir, "services", "OldVM", "--json").out)
    enabled = {r["Name"]: r["Enabled"] for r in rows}
    # the update enabled the Guest Service Interface for the copy and disabled it again
    assert enabled["VSS"] is False and enabled["Guest Service Interface"] is False
    assert {r["PrimaryStatusDescription"] for r in rows} == {"OK"}
    again = json.loads(run_vmis(lab_dir, "update", "OldVM", "--json").out)
    assert again[0]["Result"] == "current"


def test_a_broken_bundle_rolls_back_and_the_vm_keeps_working(lab_dir, short_tmp):
    start_lab(lab_dir, "DemoVM")
    broken = make_bundle(short_tmp, "9.9.9", {
        "guest/agent.py": ('''        self.updates.on_start()''',
                           '''        raise RuntimeError("this agent is broken on purpose")'''),
    })
    result = run_vmis(lab_dir, "Update-VMIntegrationServices", "-VMName", "DemoVM",
                      "-BundlePath", str(broken), "--json")
    assert result.code == 1
    [row] = json.loads(result.out)
    assert row["Result"] == "rolledback" and row["Version"] == vmis.__version__
    assert "rolled back" in row["Error"]
    vm = get_vm(lab_dir, "DemoVM")
    assert (vm["IntegrationServicesVersion"], vm["IntegrationServicesState"]) == \
        (vmis.__version__, "Up to date")
    assert "OK" in run_vmis(lab_dir, "services", "DemoVM", "Heartbeat").out


def test_a_corrupt_bundle_is_refused_before_anything_changes(lab_dir, short_tmp):
    start_lab(lab_dir, "DemoVM")
    bad = short_tmp / "bad.pyz"
    data = bytearray(make_bundle(short_tmp, "9.9.8").read_bytes())
    data[len(data) // 2] ^= 0xFF  # the zip's CRC no longer matches
    bad.write_bytes(bytes(data))
    result = run_vmis(lab_dir, "Update-VMIntegrationServices", "-VMName", "DemoVM",
                      "-BundlePath", str(bad), "--json")
    assert result.code == 1
    [row] = json.loads(result.out)
    assert row["Result"] == "failed" and "refused the update" in row["Error"]
    assert get_vm(lab_dir, "DemoVM")["IntegrationServicesVersion"] == vmis.__version__
