"""Update-VMIntegrationServices in the lab: Update required -> Up to date, and rollback."""

import hashlib
import json
import zipfile

import pytest
from support.bundles import make_bundle
from support.lab import run_vmis, start_lab

import vmis
from vmis.errors import ServiceError
from vmis.guest.config import AgentConfig
from vmis.guest.update import apply_update
from vmis.services.guest_half import GuestContext


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
    kvp = run_vmis(lab_dir, "Set-VMKvp", "-VMName", "OldVM", "-Key", "role", "-Value", "db")
    assert kvp.code == 0, kvp.err

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
    # the KVP items the guest had are still there, read inside the guest
    got = run_vmis(lab_dir, "lab", "guest", "OldVM", "kvp", "get", "role", "--pool", "External")
    assert got.code == 0 and got.out.strip().endswith("db"), got.out + got.err
    again = json.loads(run_vmis(lab_dir, "update", "OldVM", "--json").out)
    assert again[0]["Result"] == "current"
    assert (again[0]["Version"], again[0]["Seconds"]) == (vmis.__version__, 0.0)


def test_the_readme_update_of_every_vm_prints_its_table(lab_dir):
    # README: vmis Update-VMIntegrationServices -VMName '*' (table mode) on a current lab VM
    start_lab(lab_dir, "DemoVM")
    result = run_vmis(lab_dir, "Update-VMIntegrationServices", "-VMName", "*")
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["VMName", "From", "To", "Result", "Version", "Seconds"]
    assert lines[2].split() == ["DemoVM", vmis.__version__, vmis.__version__, "current",
                                vmis.__version__, "0.0"]


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


def _damage(bundle, member: str) -> bytes:
    """The bundle with one byte flipped inside *member*'s compressed data."""
    data = bytearray(bundle.read_bytes())
    with zipfile.ZipFile(bundle) as zf:
        info = zf.getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    return bytes(data)


def test_a_corrupt_bundle_is_refused_before_anything_changes(lab_dir, short_tmp):
    start_lab(lab_dir, "DemoVM")
    bad = short_tmp / "bad.pyz"
    # a module the probe run (--version) never imports: only the CRC check finds it
    bad.write_bytes(_damage(make_bundle(short_tmp, "9.9.8"), "vmis/services/vss/guest.pyc"))
    result = run_vmis(lab_dir, "Update-VMIntegrationServices", "-VMName", "DemoVM",
                      "-BundlePath", str(bad), "--json")
    assert result.code == 1
    assert "vmis/services/vss/guest.pyc fails its CRC check" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert get_vm(lab_dir, "DemoVM")["IntegrationServicesVersion"] == vmis.__version__


def test_the_guest_refuses_a_damaged_bundle_that_matches_its_checksum(short_tmp):
    # damage on the host's side of the copy: the host's checksum covers it, the CRCs do not
    bad = _damage(make_bundle(short_tmp, "9.9.8"), "vmis/services/vss/guest.pyc")
    root = short_tmp / "root"
    (root / "var/tmp").mkdir(parents=True)
    (root / "var/tmp/bundle.pyz").write_bytes(bad)
    ctx = GuestContext(root=root, config=AgentConfig(), notify=lambda *a: None)
    body = {"bundle": "/var/tmp/bundle.pyz", "sha256": hashlib.sha256(bad).hexdigest(),
            "version": "9.9.8"}
    with pytest.raises(ServiceError, match="fails its CRC check"):
        apply_update(ctx, body)
    assert not (root / "usr/lib/vmis").exists()  # nothing installed


def test_an_older_guest_shows_what_it_lacks_and_operations_name_the_version_needed(
        lab_dir, short_tmp):
    # a previous release: no VSS in its agent, and KVP only in an older protocol
    old = make_bundle(short_tmp, "0.0.8", {
        "services/catalog.py": (
            '"Hyper-V Data Exchange Service", True, StartupType.AUTOMATIC, ((1, 0),),',
            '"Hyper-V Data Exchange Service", True, StartupType.AUTOMATIC, ((0, 9),),'),
    }, removed=("services/vss/guest.py",))
    start_lab(lab_dir, "OldVM", agent_bundle=old)
    result = run_vmis(lab_dir, "services", "OldVM")
    rows = {line[12:36].rstrip(): line[36:].split() for line in result.out.splitlines()[2:]}
    assert rows["VSS"] == ["True", "No", "Contact"]
    assert rows["Key-Value Pair Exchange"] == ["True", "Protocol", "Mismatch"]
    assert rows["Heartbeat"] == ["True", "OK", "OK"]
    assert "does not offer VSS; update its integration services to vmis 0.1.0 or newer" \
        in result.err
    assert "speaks no version of Key-Value Pair Exchange this host speaks (1.0) " \
           "(it speaks 0.9)" in result.err
    refused = run_vmis(lab_dir, "Checkpoint-VM", "-Name", "OldVM", "-SnapshotType",
                       "ProductionOnly", "-SnapshotCommand", "true")
    assert refused.code == 1 and "vmis 0.1.0 or newer" in refused.err
    assert len(refused.err.strip().splitlines()) == 1

    done = run_vmis(lab_dir, "Update-VMIntegrationServices", "-VMName", "OldVM", "--json")
    assert done.code == 0, done.err
    after = json.loads(run_vmis(lab_dir, "services", "OldVM", "--json").out)
    assert {r["Name"]: r["PrimaryStatusDescription"] for r in after if r["Enabled"]} == {
        "Heartbeat": "OK", "Key-Value Pair Exchange": "OK", "Shutdown": "OK",
        "Time Synchronization": "OK", "VSS": "OK"}
