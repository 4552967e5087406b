"""Hypervisor operations through QMP against a real QEMU that boots nothing (seconds, no guest).

The QEMU here is "someone else's VM": started by the test with ``-S``
(stopped before the first instruction), registered with ``vmis vm add
-FromPid``, and driven through the host manager of a real lab with the
command line: Get-VM's state, Start-VM, pause and resume, the setup disk,
a QMP snapshot transaction for Checkpoint-VM, and Stop-VM -TurnOff. The
end-to-end tests on a booted guest are in tests/e2e.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.lab import run_vmis
from vmis.api.server import data_dir_for
from vmis.lab.lab import Lab
from vmis.qemu.hypervisor import RUN_STATES
from vmis.qemu.monitor import QmpMonitor

pytestmark = pytest.mark.timeout(180)


def qemu_argv(work: Path) -> list[str]:
    """A QEMU with the devices of docs/real-vms.md, stopped at once (-S), booting nothing."""
    return [
        "qemu-system-x86_64", "-S", "-machine", "pc", "-accel", "tcg", "-m", "64",
        "-nodefaults", "-no-user-config", "-display", "none", "-name", "guest=ext1",
        "-qmp", f"unix:{work}/qmp.sock,server=on,wait=off",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=vmis0,path={work}/agent.sock,server=on,wait=off",
        "-device", "virtserialport,bus=vser0.0,chardev=vmis0,name=org.vmis.agent.0",
        "-drive", f"file={work}/disk.qcow2,format=qcow2,if=none,id=disk0",
        "-device", "virtio-blk-pci,drive=disk0",
        "-drive", "if=none,id=cd0,media=cdrom,readonly=on",
        "-device", "ide-cd,drive=cd0,id=cdrom0",
    ]  # fmt: skip


@pytest.fixture
def external_qemu(short_tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A running QEMU vmis did not start, with its work directory."""
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        pytest.skip("QEMU is not installed (apt-get install qemu-system-x86 qemu-utils)")
    work = short_tmp / "ext"
    work.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / "disk.qcow2"), "16M"],
                   check=True, timeout=30)
    proc = subprocess.Popen(qemu_argv(work), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (work / "qmp.sock").exists():
            assert proc.poll() is None, "QEMU exited at start"
            assert time.monotonic() < deadline, "QEMU did not create its QMP socket"
            time.sleep(0.05)
        yield proc, work
    finally:
        proc.kill()
        proc.wait(timeout=10)


def vmis_json(lab_dir: Path, *args: str) -> list[dict[str, object]]:
    result = run_vmis(lab_dir, *args, "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    return data if isinstance(data, list) else [data]


def state(lab_dir: Path, name: str) -> object:
    return vmis_json(lab_dir, "Get-VM", name)[0]["State"]


def test_an_external_qemu_is_driven_through_qmp(lab_dir, external_qemu):
    proc, work = external_qemu
    Lab(lab_dir).ensure_host()
    qmp = QmpMonitor(work / "qmp.sock")

    added = run_vmis(lab_dir, "vm", "add", "-FromPid", str(proc.pid), "--json")
    assert added.code == 0, added.err
    vm = json.loads(added.out)
    assert vm["Name"] == "ext1"  # the name comes from -name guest=ext1
    assert vm["Channel"] == f"unix:{work}/agent.sock" and vm["Qmp"] == f"{work}/qmp.sock"

    # -S: QEMU waits before the first instruction; Start-VM lets it run.
    assert state(lab_dir, "ext1") == "Starting"
    started = vmis_json(lab_dir, "Start-VM", "ext1")[0]
    assert started["Action"] == "Started" and started["State"] == "Running"
    assert asyncio.run(qmp.status()) == "running"
    # No agent answers: Get-VM's Uptime is the QEMU process's, found through its QMP socket.
    first = vmis_json(lab_dir, "Get-VM", "ext1")[0]["Uptime"]
    assert isinstance(first, int) and 0 <= first < 120, first
    time.sleep(2.2)
    assert vmis_json(lab_dir, "Get-VM", "ext1")[0]["Uptime"] >= first + 2

    asyncio.run(qmp.pause())
    assert state(lab_dir, "ext1") == "Paused"
    plain = run_vmis(lab_dir, "Start-VM", "-Name", "ext1")
    assert plain.code == 0 and plain.out == "ext1: resumed\n", plain.err
    assert asyncio.run(qmp.status()) == "running"
    assert run_vmis(lab_dir, "Start-VM", "ext1").out == "ext1: already running\n"

    # The setup disk is built in the manager's data directory and inserted.
    inserted = vmis_json(lab_dir, "Insert-SetupDisk", "-VMName", "ext1")[0]
    iso = Path(str(inserted["Path"]))
    assert iso.parent == data_dir_for(f"sqlite:///{lab_dir / 'host.db'}") / "setup"
    assert iso.name.startswith("vmis-setup-") and iso.is_file()
    assert asyncio.run(qmp.cdrom_media()) == str(iso)
    assert run_vmis(lab_dir, "Insert-SetupDisk", "ext1", "-Eject").out == \
        "ext1: drive cdrom0 is empty\n"
    assert asyncio.run(qmp.cdrom_media()) is None
    missing = run_vmis(lab_dir, "Insert-SetupDisk", "ext1", "-Path", str(work / "no.iso"))
    assert missing.code == 1 and missing.err == f"Insert-SetupDisk: no disc image {work}/no.iso\n"

    # A crash-consistent checkpoint snapshots the writable disk (not the CD-ROM) in one
    # QMP transaction; the old image becomes the backing file of the new one.
    report = vmis_json(lab_dir, "Checkpoint-VM", "-Name", "ext1", "-SnapshotType", "Standard")[0]
    assert report["Status"] == "Completed" and report["SnapshotStep"] == "qmp", report
    disks = report["Snapshot"]["Data"]["Disks"]
    assert [d["Frozen"] for d in disks] == [str(work / "disk.qcow2")]
    active = Path(disks[0]["Active"])
    assert active.parent == work and active.name.startswith("disk-")
    assert asyncio.run(qmp.active_image("disk0")) == str(active)
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(active)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["backing-filename"] == str(work / "disk.qcow2")

    # -TurnOff: QMP quit; QEMU is gone and Get-VM says Off.
    off = run_vmis(lab_dir, "Stop-VM", "ext1", "-TurnOff")
    assert off.code == 0 and off.out.startswith("ext1: turned off"), off.err
    assert proc.wait(timeout=10) == 0
    assert state(lab_dir, "ext1") == "Off"
    again = run_vmis(lab_dir, "Stop-VM", "ext1", "-TurnOff")
    assert again.code == 0 and again.out == "ext1: already off\n"
    # vmis did not start this QEMU, so it cannot start it again.
    refused = run_vmis(lab_dir, "Start-VM", "ext1")
    assert refused.code == 1 and len(refused.err.splitlines()) == 1
    assert "no QEMU listens on" in refused.err and "vmis did not start this VM" in refused.err


def test_hypervisor_operations_on_a_vm_without_qmp_are_one_clear_line(lab, lab_dir):
    for args in (("Start-VM", "DemoVM"), ("Insert-SetupDisk", "DemoVM"),
                 ("Eject-SetupDisk", "DemoVM"), ("Stop-VM", "DemoVM", "-TurnOff")):
        result = run_vmis(lab_dir, *args)
        assert result.code == 1 and result.out == "", (args, result.out)
        assert result.err.splitlines() == [
            f"{args[0]}: DemoVM: {args[-1] if args[-1] == '-TurnOff' else _what(args[0])} needs "
            "a hypervisor connection (QMP); DemoVM has none (vmis vm set DemoVM -Qmp PATH)"
        ]
    # nothing was built for a VM that cannot take a disc
    assert not (lab_dir / "setup").exists()
    assert vmis_json(lab_dir, "Get-VM", "DemoVM")[0]["State"] == "Running"


def _what(verb: str) -> str:
    return {"Start-VM": "Start-VM", "Insert-SetupDisk": "inserting the setup disk",
            "Eject-SetupDisk": "ejecting the setup disk"}[verb]


FAKE_QEMU = "import time; time.sleep(60)"


def test_vm_add_discovers_channel_and_qmp_or_says_why_not(lab_dir, short_tmp):
    Lab(lab_dir).ensure_host()
    # Discovery reads /proc/<pid>/cmdline: any process with QEMU's arguments will do.
    args = ["-name", "guest=web1", "-chardev", f"socket,id=c0,path={short_tmp}/a.sock,server=on",
            "-device", "virtserialport,chardev=c0,name=org.vmis.agent.0",
            "-qmp", f"unix:{short_tmp}/q.sock,server,nowait"]
    fake = subprocess.Popen([sys.executable, "-c", FAKE_QEMU, *args])
    try:
        added = run_vmis(lab_dir, "vm", "add", "web2", "-FromPid", str(fake.pid), "--json")
        assert added.code == 0, added.err
        vm = json.loads(added.out)
        assert (vm["Name"], vm["Channel"], vm["Qmp"]) == (
            "web2", f"unix:{short_tmp}/a.sock", f"{short_tmp}/q.sock")
    finally:
        fake.kill()
        fake.wait()
    cmdline = " ".join(["qemu-system-x86_64", *args]).replace("web1", "web3")
    added = run_vmis(lab_dir, "vm", "add", "-FromCmdline", cmdline)
    assert added.code == 0, added.err
    assert added.out.startswith(f"VM web3 registered (unix:{short_tmp}/a.sock, QMP "
                                f"{short_tmp}/q.sock, guest agent vmis), id ")
    # a VM with qemu-ga's port and no vmis port is offered as a qemu-ga guest
    qga = cmdline.replace("web3", "db1").replace("name=org.vmis.agent.0",
                                                 "name=org.qemu.guest_agent.0")
    added = run_vmis(lab_dir, "vm", "add", "-FromCmdline", qga, "--json")
    assert added.code == 0, added.err
    assert (json.loads(added.out)["GuestAgent"], json.loads(added.out)["Name"]) == (
        "qemu-ga", "db1")
    assert "using qemu-ga's port org.qemu.guest_agent.0" in added.err

    xml = short_tmp / "web4.xml"
    xml.write_text("<domain type='kvm' id='7'><name>web4</name><devices>"
                   "<channel type='unix'><source mode='bind' path='/run/w4.agent'/>"
                   "<target type='virtio' name='org.vmis.agent.0'/></channel>"
                   "</devices></domain>")
    added = run_vmis(lab_dir, "vm", "add", "-FromLibvirtXml", str(xml), "--json")
    assert added.code == 0, added.err
    vm = json.loads(added.out)
    assert (vm["Name"], vm["Channel"]) == ("web4", "unix:/run/w4.agent")
    assert vm["Qmp"] == "/var/lib/libvirt/qemu/domain-7-web4/monitor.sock"
    assert "libvirt keeps connected" in added.err  # the note, as a warning

    bare = run_vmis(lab_dir, "vm", "add", "x", "-FromCmdline", "qemu-system-x86_64 -m 64")
    assert bare.code == 1 and bare.err.splitlines() == [
        "vm: no guest agent channel (virtio-serial port org.vmis.agent.0, or qemu-ga's "
        "org.qemu.guest_agent.0, on a Unix socket) in the command line: no QMP monitor (-qmp "
        "or -mon mode=control) on the command line; no virtserialport named org.vmis.agent.0 "
        "on the command line"]
    both = run_vmis(lab_dir, "vm", "add", "x", "-FromPid", "1", "-FromCmdline", "qemu")
    assert both.code == 2 and "use one of -FromPid, -FromCmdline" in both.err
    nothing = run_vmis(lab_dir, "vm", "add", "x")
    assert nothing.code == 2 and "missing mandatory parameter -Channel" in nothing.err
    gone = run_vmis(lab_dir, "vm", "add", "-FromPid", "999999999")
    assert gone.code == 1 and gone.err.startswith("vm: no readable process 999999999")
    unreadable = run_vmis(lab_dir, "vm", "add", "-FromLibvirtXml", str(short_tmp / "no.xml"))
    assert unreadable.code == 1 and "cannot read" in unreadable.err
    alias = run_vmis(lab_dir, "vm", "add", "q1", "-Channel", "unix:/run/q1.agent",
                     "-QemuQmp", "/run/q1.qmp", "--json")
    assert alias.code == 0 and json.loads(alias.out)["Qmp"] == "/run/q1.qmp"


def test_every_qmp_run_state_has_a_hyperv_state():
    # QEMU 7.2's RunState enum (qapi/run-state.json)
    qemu_states = {"debug", "inmigrate", "internal-error", "io-error", "paused", "postmigrate",
                   "prelaunch", "finish-migrate", "restore-vm", "running", "save-vm",
                   "shutdown", "suspended", "watchdog", "guest-panicked", "colo"}
    assert set(RUN_STATES) == qemu_states
    assert set(RUN_STATES.values()) <= {"Running", "Off", "Paused", "Saved", "Starting",
                                        "Saving", "PausedCritical"}


FAKE_VIRSH = """#!/bin/sh
# a stand-in for libvirt's virsh: dumpxml of one known domain
if [ "$1" = dumpxml ] && [ "$2" = web5 ]; then
    cat <<XML
<domain type='kvm' id='3' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web5</name>
  <devices><channel type='unix'><source mode='bind'/>
    <target type='virtio' name='org.vmis.agent.0'/></channel></devices>
  <qemu:commandline><qemu:arg value='-qmp'/>
    <qemu:arg value='unix:/var/lib/libvirt/qemu/web5-vmis.qmp,server=on,wait=off'/>
  </qemu:commandline>
</domain>
XML
    exit 0
fi
echo "error: failed to get domain '$2'" >&2
exit 1
"""


def test_vm_add_from_a_libvirt_domain_runs_virsh_dumpxml(lab_dir, short_tmp, monkeypatch):
    Lab(lab_dir).ensure_host()
    bin_dir = short_tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "virsh").write_text(FAKE_VIRSH)
    (bin_dir / "virsh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    added = run_vmis(lab_dir, "vm", "add", "-Libvirt", "web5", "--json")
    assert added.code == 0, added.err
    vm = json.loads(added.out)
    assert vm["Name"] == "web5"
    # the path libvirt generates for a running domain's channel, and the extra QMP
    assert vm["Channel"] == ("unix:/var/lib/libvirt/qemu/channel/target/domain-3-web5/"
                             "org.vmis.agent.0")
    assert vm["Qmp"] == "/var/lib/libvirt/qemu/web5-vmis.qmp"
    assert added.err == ""  # the extra monitor needs no warning
    unknown = run_vmis(lab_dir, "vm", "add", "-Libvirt", "nosuch")
    assert unknown.code == 1 and unknown.err == (
        "vm: virsh dumpxml nosuch failed: error: failed to get domain 'nosuch'\n")
    monkeypatch.setenv("PATH", str(short_tmp / "empty"))
    missing = run_vmis(lab_dir, "vm", "add", "-Libvirt", "web5")
    assert missing.code == 1 and missing.err.startswith("vm: virsh is not installed")
