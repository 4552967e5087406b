"""The libvirt backend's pure parts: the state mapping, the XML it reads and writes, the
QEMU user check of ``vm create``."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmis.errors import ConfigError, StateError
from vmis.libvirt import states
from vmis.libvirt.domainxml import (
    NewDomain,
    cdrom_drive,
    cdrom_xml,
    disks,
    domain_xml,
    snapshot_xml,
)
from vmis.libvirt.machines import qemu_user, unreachable_directory
from vmis.qemu.cmdline import BootSpec

LIVE = """<domain type='qemu' id='3'><name>web1</name><devices>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
    <source file='/vm/web1/disk.qcow2' index='2'/><target dev='vda' bus='virtio'/></disk>
  <disk type='file' device='disk'><source file='/vm/web1/data.qcow2'/>
    <target dev='vdb' bus='virtio'/><readonly/></disk>
  <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
    <source file='/iso/old.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
</devices></domain>"""


def test_the_state_numbers_are_libvirts():
    libvirt = pytest.importorskip("libvirt")
    assert (states.RUNNING, states.PAUSED, states.SHUTOFF, states.CRASHED,
            states.PMSUSPENDED, states.SHUTDOWN, states.BLOCKED) == (
        libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_SHUTOFF,
        libvirt.VIR_DOMAIN_CRASHED, libvirt.VIR_DOMAIN_PMSUSPENDED,
        libvirt.VIR_DOMAIN_SHUTDOWN, libvirt.VIR_DOMAIN_BLOCKED)
    assert (states.PAUSED_STARTING_UP, states.PAUSED_IOERROR, states.PAUSED_WATCHDOG,
            states.PAUSED_SAVE, states.PAUSED_MIGRATION, states.PAUSED_CRASHED,
            states.PAUSED_POSTCOPY_FAILED, states.PAUSED_API_ERROR) == (
        libvirt.VIR_DOMAIN_PAUSED_STARTING_UP, libvirt.VIR_DOMAIN_PAUSED_IOERROR,
        libvirt.VIR_DOMAIN_PAUSED_WATCHDOG, libvirt.VIR_DOMAIN_PAUSED_SAVE,
        libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_CRASHED,
        libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED,
        getattr(libvirt, "VIR_DOMAIN_PAUSED_API_ERROR", 14))  # since libvirt 9.2


@pytest.mark.parametrize(("state", "reason", "saved", "expected"), [
    (states.RUNNING, 1, False, "Running"),
    (states.BLOCKED, 0, False, "Running"),
    (states.PAUSED, 1, False, "Paused"),  # virsh suspend
    (states.PAUSED, states.PAUSED_STARTING_UP, False, "Starting"),
    (states.PAUSED, states.PAUSED_IOERROR, False, "PausedCritical"),
    (states.PAUSED, states.PAUSED_WATCHDOG, False, "PausedCritical"),
    (states.PAUSED, states.PAUSED_SAVE, False, "Saving"),
    (states.SHUTDOWN, 1, False, "Stopping"),
    (states.SHUTOFF, 2, False, "Off"),
    (states.SHUTOFF, 5, True, "Saved"),  # virsh managedsave
    (states.CRASHED, 1, False, "PausedCritical"),
    (states.PMSUSPENDED, 0, False, "Paused"),
    (0, 0, False, None),
])
def test_libvirt_states_in_hyperv_words(state, reason, saved, expected):
    assert states.hyperv_state(state, reason, managed_save=saved) == expected


def test_disks_and_the_cdrom_update():
    found = disks(LIVE)
    assert [(d.target, d.device, d.readonly, d.writable_disk) for d in found] == [
        ("vda", "disk", False, True), ("vdb", "disk", True, False), ("sda", "cdrom", True, False)]
    drive = cdrom_drive(LIVE, "web1")
    assert (drive.target, drive.bus, drive.source) == ("sda", "sata", Path("/iso/old.iso"))
    assert cdrom_xml(drive, Path("/setup/a b.iso")) == (
        '<disk type="file" device="cdrom"><driver name="qemu" type="raw" />'
        '<source file="/setup/a b.iso" /><target dev="sda" bus="sata" /><readonly /></disk>')
    assert "<source" not in cdrom_xml(drive, None)
    with pytest.raises(StateError, match="web2 has no CD-ROM drive"):
        cdrom_drive(LIVE.replace("device='cdrom'", "device='floppy'"), "web2")
    with pytest.raises(ConfigError, match="not a libvirt domain XML"):
        disks("<network/>")


def test_a_snapshot_takes_every_writable_disk_and_leaves_out_the_rest():
    xml, taken = snapshot_xml("5f0c9a6e-0d1b", "vmis checkpoint 'before'", disks(LIVE), "5f0c9a6e")
    assert [(d.target, overlay) for d, overlay in taken] == [
        ("vda", Path("/vm/web1/disk-5f0c9a6e.qcow2"))]
    root = ET.fromstring(xml)
    assert root.findtext("name") == "5f0c9a6e-0d1b"
    assert [(d.get("name"), d.get("snapshot")) for d in root.iterfind("disks/disk")] == [
        ("vda", "external"), ("vdb", "no"), ("sda", "no")]
    assert root.find("disks/disk/source").get("file") == "/vm/web1/disk-5f0c9a6e.qcow2"


def test_the_domain_vm_create_defines(tmp_path):
    boot = BootSpec(kernel=Path("/img/vmlinux"), initrd=Path("/img/initrd.img"),
                    append="console=ttyS0 root=/dev/vda", firmware=Path("/q/qboot.rom"),
                    disk=Path("/img/rootfs.ext4"))
    new = NewDomain(name="web<1>", boot=boot, disk=tmp_path / "disk.qcow2", transient_disk=True,
                    channel=tmp_path / "agent.sock", console=tmp_path / "console.log",
                    memory_mib=768, cpus=2, clock_offset=-3600.4)
    root = ET.fromstring(domain_xml(new))
    assert (root.get("type"), root.findtext("name")) == ("qemu", "web<1>")  # TCG; escaped
    assert (root.findtext("memory"), root.findtext("vcpu")) == ("768", "2")
    assert root.find("os/loader").text == "/q/qboot.rom"
    assert root.findtext("os/cmdline") == "console=ttyS0 root=/dev/vda"
    assert root.find("features/acpi") is not None
    assert root.find("clock").get("adjustment") == "-3600"
    vda = root.find("devices/disk[@device='disk']")
    assert vda.find("source").get("file") == str(tmp_path / "disk.qcow2")
    assert vda.find("transient") is not None
    channel = root.find("devices/channel")
    assert (channel.find("source").get("mode"), channel.find("source").get("path"),
            channel.find("target").get("name")) == ("bind", str(tmp_path / "agent.sock"),
                                                     "org.vmis.agent.0")
    assert root.find("devices/disk[@device='cdrom']/source") is None  # an empty drive
    assert root.find("devices/interface") is None


CAPS = """<capabilities><host><secmodel><model>apparmor</model></secmodel>
<secmodel><model>dac</model><doi>0</doi><baselabel type='kvm'>+64055:+108</baselabel>
<baselabel type='qemu'>+64055:+108</baselabel></secmodel></host></capabilities>"""


def test_vm_create_knows_which_user_runs_qemu_and_what_it_cannot_reach(short_tmp):
    assert qemu_user(CAPS) == (64055, 108)
    assert qemu_user("<capabilities><host/></capabilities>") is None
    private = short_tmp / "data"
    (private / "machines").mkdir(parents=True)
    private.chmod(0o700)
    short_tmp.chmod(0o755)  # /tmp/vmis-...: others may enter, as /var/lib does
    assert unreachable_directory(private / "machines" / "disk.qcow2", 64055, 108) == private
    assert unreachable_directory(private / "machines" / "disk.qcow2", 0, 0) is None
    private.chmod(0o711)
    assert unreachable_directory(private / "machines" / "disk.qcow2", 64055, 108) is None
