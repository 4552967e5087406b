"""The libvirt backend against a real libvirtd (the tests' own), on domains that boot nothing.

A domain here is "someone else's VM": defined by the test through libvirt
with the agent channel of docs/real-vms.md, a qcow2 disk and an empty CD-ROM
drive, and started paused (QEMU runs, no guest code does). The host manager
(``vmis host serve -Hypervisor URI``) is driven with the command line as an
administrator would, and every effect is checked in libvirt itself:
discovery, Get-VM's State, Start-VM, the setup disk, a libvirt snapshot for
Checkpoint-VM, Stop-VM -TurnOff, a managed save. A booted guest with the
agent inside is tests/libvirt/test_libvirt_vm.py's.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.hostserve import serve, stop
from support.lab import run_vmis
from support.libvirtd import libvirtd_missing, start_libvirtd
from vmis.libvirt.connection import load_libvirt

pytestmark = pytest.mark.timeout(240)


def domain_xml(name: str, work: Path, *, channel: bool = True) -> str:
    agent = (f"<channel type='unix'><source mode='bind' path='{work}/agent.sock'/>"
             "<target type='virtio' name='org.vmis.agent.0'/></channel>") if channel else ""
    return f"""<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{work}/disk.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
      <target dev='hdc' bus='ide'/><readonly/></disk>
    {agent}
    <controller type='usb' model='none'/><memballoon model='none'/>
  </devices>
</domain>"""


@pytest.fixture
def conn(libvirtd) -> Iterator[Any]:
    libvirt = load_libvirt()
    connection = libvirt.open(libvirtd.uri)
    yield connection
    for domain in connection.listAllDomains(0):  # what this test defined
        if domain.isActive():
            domain.destroy()
        domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                             | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    connection.close()


def define(conn: Any, name: str, work: Path, *, channel: bool = True) -> Any:
    work.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / "disk.qcow2"), "16M"],
                   check=True, timeout=30)
    return conn.defineXML(domain_xml(name, work, channel=channel))


def vmis_json(directory: Path, *args: str) -> list[Any]:
    """A command's --json answer, as a list (one object, or many)."""
    result = run_vmis(directory, *args, "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    return data if isinstance(data, list) else [data]


def state(directory: Path, name: str) -> str:
    return str(vmis_json(directory, "Get-VM", name)[0]["State"])


def test_a_libvirt_domain_is_discovered_and_driven_through_libvirt(manager, conn, short_tmp):
    libvirt = load_libvirt()
    host = manager.dir
    work = short_tmp / "ext"
    domain = define(conn, "lvext", work)
    define(conn, "lvnochan", short_tmp / "nochan", channel=False)
    domain.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)

    # A name libvirt does not know is one line; '*' registers what has an agent channel
    # and says why it skipped the rest.
    missing = run_vmis(host, "vm", "add", "-Libvirt", "nope")
    assert missing.code == 1 and missing.err.splitlines() == [
        f"vm: no libvirt domain named 'nope' at {manager.uri}"]
    added = run_vmis(host, "vm", "add", "-Libvirt", "*")
    assert added.code == 0, added.err
    assert added.out.startswith(f"VM lvext registered (libvirt domain lvext at {manager.uri}, "
                                f"unix:{work}/agent.sock), id ")
    assert added.err == ("WARNING: lvnochan: skipped: no vmis agent channel: no <channel> "
                         "with target name org.vmis.agent.0\n")
    (vm,) = vmis_json(host, "vm", "list")
    assert (vm["Name"], vm["Kind"], vm["Channel"], vm["Qmp"]) == (
        "lvext", "libvirt", f"unix:{work}/agent.sock", None)
    assert (vm["LibvirtUri"], vm["LibvirtDomain"]) == (manager.uri, domain.UUIDString())
    again = vmis_json(host, "vm", "add", "-Libvirt", "lv*")
    assert [(r["Domain"], r["Registered"], r["Note"]) for r in again] == [
        ("lvext", False, "already registered as lvext"),
        ("lvnochan", False, "no vmis agent channel: no <channel> with target name "
                            "org.vmis.agent.0")]
    refused = run_vmis(host, "vm", "add", "-Libvirt", "lvnochan")
    assert refused.code == 1 and "no vmis agent channel" in refused.err

    # Started paused: Get-VM says Paused; Start-VM resumes it through libvirt.
    assert state(host, "lvext") == "Paused"
    (started,) = vmis_json(host, "Start-VM", "lvext")
    assert (started["Action"], started["State"]) == ("Resumed", "Running")
    assert domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert run_vmis(host, "Start-VM", "lvext").out == "lvext: already running\n"
    domain.suspend()
    assert state(host, "lvext") == "Paused"
    assert run_vmis(host, "Start-VM", "-Name", "lvext").out == "lvext: resumed\n"

    # The setup disk goes into the CD-ROM drive through updateDeviceFlags, and out again.
    (inserted,) = vmis_json(host, "Insert-SetupDisk", "-VMName", "lvext")
    iso = Path(inserted["Path"])
    assert (inserted["Device"], inserted["Live"]) == ("hdc", True) and iso.is_file()
    assert f"<source file='{iso}'" in domain.XMLDesc(0)
    ejected = run_vmis(host, "Eject-SetupDisk", "lvext")
    assert ejected.out == "lvext: drive hdc is empty\n", ejected.err
    assert str(iso) not in domain.XMLDesc(0)

    # A crash-consistent checkpoint is a libvirt snapshot: disk-only, named by the
    # checkpoint's id; the domain (live and defined) writes to the new overlay.
    (report,) = vmis_json(host, "Checkpoint-VM", "-Name", "lvext", "-SnapshotType", "Standard")
    assert report["Status"] == "Completed" and report["SnapshotStep"] == "libvirt", report
    data = report["Snapshot"]["Data"]
    assert domain.snapshotListNames() == [data["Snapshot"]]
    (disk,) = data["Disks"]
    assert (disk["Device"], disk["Frozen"]) == ("vda", str(work / "disk.qcow2"))
    active = Path(disk["Active"])
    assert active.parent == work and active.is_file()
    assert f"<source file='{active}'" in domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(active)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["backing-filename"] == str(work / "disk.qcow2")

    # -TurnOff: libvirt destroys the domain; libvirt and Get-VM agree it is off.
    off = run_vmis(host, "Stop-VM", "lvext", "-TurnOff")
    assert off.code == 0 and off.out.startswith("lvext: turned off"), off.err
    assert domain.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    assert state(host, "lvext") == "Off"
    assert run_vmis(host, "Stop-VM", "lvext", "-TurnOff").out == "lvext: already off\n"

    # A shut-off domain is started through libvirt (here it boots into the firmware),
    # then saved (virsh managedsave): Saved, and Start-VM restores it.
    (started,) = vmis_json(host, "Start-VM", "lvext")
    assert (started["Action"], started["Restored"], started["State"]) == (
        "Started", False, "Running")
    domain.managedSave()
    assert state(host, "lvext") == "Saved"
    (restored,) = vmis_json(host, "Start-VM", "lvext")
    assert (restored["Action"], restored["Restored"]) == ("Started", True)
    assert domain.isActive() and not domain.hasManagedSaveImage()

    # A domain libvirt no longer has is Off, and Start-VM says why in one line.
    domain.destroy()
    domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    assert state(host, "lvext") == "Off"
    gone = run_vmis(host, "Start-VM", "lvext")
    assert gone.code == 1 and gone.err.splitlines() == [
        f"Start-VM: lvext: libvirt at {manager.uri} has no domain {vm['LibvirtDomain']} any "
        "more (undefined, or a transient domain that stopped)"]


def test_a_libvirt_vm_on_a_manager_without_that_connection_is_one_clear_line(
        manager, libvirtd, conn, short_tmp):
    domain = define(conn, "lvother", short_tmp / "other")
    assert run_vmis(manager.dir, "vm", "add", "-Libvirt", "lvother").code == 0
    stop_and_serve_without_libvirt = manager.restart()
    for args in (("Start-VM", "lvother"), ("Stop-VM", "lvother", "-TurnOff")):
        result = run_vmis(stop_and_serve_without_libvirt, *args)
        assert result.code == 1 and result.err.splitlines() == [
            f"{args[0]}: lvother: {args[-1] if args[-1] == '-TurnOff' else 'Start-VM'} needs a "
            f"hypervisor connection (libvirt); lvother is a domain of libvirt at "
            f"{libvirtd.uri}, which this host manager does not connect to (vmis host serve "
            f"-Hypervisor {libvirtd.uri})"], result.err
    assert not domain.isActive()
    # and without one, vm add -Libvirt with wildcards says what it needs
    wild = run_vmis(stop_and_serve_without_libvirt, "vm", "add", "-Libvirt", "lv*")
    assert wild.code == 2 and "need the host manager's libvirt connection" in wild.err


def test_the_manager_connects_again_after_libvirtd_restarts(short_tmp):
    """A libvirtd of this test's own, restarted under a running host manager."""

    if (why := libvirtd_missing()) is not None:
        pytest.skip(why)
    libvirt = load_libvirt()
    daemon = start_libvirtd(short_tmp / "lv")
    running = None
    try:
        conn = libvirt.open(daemon.uri)
        domain = define(conn, "lvagain", short_tmp / "again")
        domain.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        conn.close()
        running = serve(short_tmp / "host", daemon.uri)
        assert run_vmis(running.dir, "vm", "add", "-Libvirt", "lvagain").code == 0
        assert state(running.dir, "lvagain") == "Paused"
        daemon.restart()  # the domain keeps running; the manager's connection is dead
        assert state(running.dir, "lvagain") == "Paused"
        (started,) = vmis_json(running.dir, "Start-VM", "lvagain")
        assert started["Action"] == "Resumed"
    finally:
        if running is not None:
            stop(running)
        daemon.stop()
