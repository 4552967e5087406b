"""A real guest under libvirt: ``vmis vm create`` defines a TCG domain from the project's
guest image (the vmis agent inside) in the tests' own libvirtd, and the host manager
drives it through libvirt only.

In order, as an administrator would type it: the domain is created (defined,
off), started through libvirt, reaches heartbeat OK over its agent channel,
takes the setup disk, is checkpointed with the guest frozen (a libvirt
snapshot between freeze and thaw; the frozen image is checked from outside
to be a cleanly frozen ext4, against an unfrozen one), turned off, and found
again by discovery once unregistered.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from support.lab import run_vmis
from vmis.libvirt.connection import load_libvirt

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]

VM = "LvVM"


def vmis_json(directory: Path, *args: str, timeout: float = 120) -> Any:
    result = run_vmis(directory, *args, "--json", timeout=timeout)
    assert result.code == 0, f"vmis {' '.join(args)}: {result.err}"
    return json.loads(result.out)


def get_vm(directory: Path) -> dict[str, Any]:
    (row,) = vmis_json(directory, "Get-VM", VM)
    return dict(row)


def superblock(image: Path, work: Path) -> str:
    """dumpe2fs -h of the ext4 in a qcow2 disk chain (converted to raw first)."""
    raw = work / f"{image.stem}.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(image), str(raw)],
                   check=True, timeout=300)
    dumpe2fs = shutil.which("dumpe2fs", path="/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    assert dumpe2fs is not None, "dumpe2fs (e2fsprogs) is needed"
    try:
        return subprocess.run([dumpe2fs, "-h", str(raw)], capture_output=True, text=True,
                              check=True, timeout=60).stdout
    finally:
        raw.unlink()


def test_a_guest_libvirt_runs_is_created_started_checkpointed_and_turned_off(
        manager, libvirtd, short_tmp):
    libvirt = load_libvirt()
    host = manager.dir
    conn = libvirt.open(libvirtd.uri)
    try:
        created = vmis_json(host, "vm", "create", VM, "-Persistent", timeout=1800)
        assert (created["Kind"], created["LibvirtUri"], created["State"]) == (
            "libvirt", libvirtd.uri, "Off")
        domain = conn.lookupByUUIDString(created["LibvirtDomain"])
        assert domain.name() == VM and not domain.isActive() and domain.isPersistent()
        workdir = Path(created["WorkDir"])
        assert created["Channel"] == f"unix:{workdir / 'agent.sock'}"
        assert get_vm(host)["State"] == "Off"

        begin = time.monotonic()
        (started,) = vmis_json(host, "Start-VM", VM)
        assert started["Action"] == "Started" and domain.isActive()
        deadline = time.monotonic() + 420
        while not str(get_vm(host)["Heartbeat"]).startswith("Ok"):
            assert time.monotonic() < deadline, (
                f"no heartbeat: {get_vm(host)}; console: "
                f"{(workdir / 'console.log').read_text(errors='replace')[-2000:]}")
            time.sleep(2)
        print(f"\n{VM}: heartbeat OK {time.monotonic() - begin:.1f} s after Start-VM")
        assert get_vm(host)["State"] == "Running"

        (inserted,) = vmis_json(host, "Insert-SetupDisk", VM)
        assert inserted["Device"] == "hdc" and f"<source file='{inserted['Path']}'" in \
            domain.XMLDesc(0)
        assert run_vmis(host, "Eject-SetupDisk", VM).out == f"{VM}: drive hdc is empty\n"

        # Production: the guest froze its file systems, libvirt took the snapshot, the
        # guest thawed. The frozen image is an ext4 that FIFREEZE left clean (no
        # needs_recovery); a Standard checkpoint's, taken unfrozen, is not.
        report = vmis_json(host, "Checkpoint-VM", "-Name", VM, "-SnapshotType",
                           "ProductionOnly")
        assert report["Status"] == "Completed", report
        assert (report["Consistency"], report["SnapshotStep"]) == ("application", "libvirt")
        assert report["FrozenFilesystems"] == ["/"]
        assert [s["Step"] for s in report["Steps"]] == ["freeze", "snapshot", "thaw"]
        (disk,) = report["Snapshot"]["Data"]["Disks"]
        assert disk["Frozen"] == str(workdir / "disk.qcow2")
        assert domain.snapshotListNames() == [report["Snapshot"]["Data"]["Snapshot"]]
        assert f"<source file='{disk['Active']}'" in domain.XMLDesc(
            libvirt.VIR_DOMAIN_XML_INACTIVE)  # the next boot uses the overlay
        assert vmis_json(host, "Get-VMVss", VM)["Guest"]["state"] == "thawed"
        assert "needs_recovery" not in superblock(Path(disk["Frozen"]), short_tmp)
        standard = vmis_json(host, "Checkpoint-VM", "-Name", VM, "-SnapshotType", "Standard")
        assert standard["Status"] == "Completed" and standard["FrozenFilesystems"] == []
        unfrozen = Path(standard["Snapshot"]["Data"]["Disks"][0]["Frozen"])
        assert "needs_recovery" in superblock(unfrozen, short_tmp)

        off = run_vmis(host, "Stop-VM", VM, "-TurnOff")
        assert off.code == 0 and off.out.startswith(f"{VM}: turned off"), off.err
        assert not domain.isActive() and get_vm(host)["State"] == "Off"

        # Unregistered, the domain is found again through libvirt, with its channel.
        assert run_vmis(host, "vm", "remove", VM).code == 0
        (found,) = vmis_json(host, "vm", "add", "-Libvirt", VM)
        assert (found["Name"], found["Channel"], found["LibvirtDomain"]) == (
            VM, created["Channel"], created["LibvirtDomain"])
        assert get_vm(host)["State"] == "Off"
    finally:
        for domain in conn.listAllDomains(0):
            if domain.isActive():
                domain.destroy()
            domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        conn.close()
