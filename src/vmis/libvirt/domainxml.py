"""Reading and writing libvirt's XML: a domain's disks, the CD-ROM update, a disk-only
snapshot, and the domain ``vmis vm create`` defines. Pure functions: nothing here
talks to libvirt, so every document is unit-tested as text.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from vmis.errors import ConfigError, StateError
from vmis.qemu.cmdline import AGENT_PORT_NAME, BootSpec

__all__ = [
    "Disk",
    "NewDomain",
    "cdrom_drive",
    "cdrom_xml",
    "disks",
    "domain_xml",
    "snapshot_xml",
]


@dataclass(frozen=True, slots=True)
class Disk:
    """One ``<disk>`` of a domain."""

    #: the guest's device name (``vda``, ``hdc``): how libvirt names the disk in calls
    target: str
    #: ``ide``, ``virtio``, ``sata`` ...
    bus: str | None
    #: ``disk``, ``cdrom``, ``floppy`` or ``lun``
    device: str
    #: the image file, if the disk is a file with media in it
    source: Path | None
    readonly: bool
    #: writes are dropped when the domain stops (``<transient/>``)
    transient: bool

    @property
    def writable_disk(self) -> bool:
        """A hard disk the guest writes to: what a checkpoint snapshots."""
        return self.device == "disk" and not self.readonly


def _parse(xml: str) -> ET.Element:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise ConfigError(f"not a libvirt domain XML: {err}") from err
    if root.tag != "domain":
        raise ConfigError(f"not a libvirt domain XML: root element <{root.tag}>")
    return root


def disks(xml: str) -> list[Disk]:
    """The disks of a domain XML, in its order."""
    found = []
    for element in _parse(xml).iterfind("devices/disk"):
        target = element.find("target")
        if target is None or not target.get("dev"):
            continue
        source = element.find("source")
        path = source.get("file") if source is not None else None
        found.append(Disk(
            target=str(target.get("dev")), bus=target.get("bus"),
            device=element.get("device", "disk"),
            source=Path(path) if path else None,
            readonly=element.find("readonly") is not None,
            transient=element.find("transient") is not None,
        ))
    return found


def cdrom_drive(xml: str, vm_name: str) -> Disk:
    """The domain's first CD-ROM drive.

    :raise StateError: When it has none.
    """
    drive = next((d for d in disks(xml) if d.device == "cdrom"), None)
    if drive is None:
        raise StateError(f"{vm_name} has no CD-ROM drive (add one: virsh edit, docs/real-vms.md)")
    return drive


def cdrom_xml(drive: Disk, image: Path | None) -> str:
    """The ``<disk>`` that ``updateDeviceFlags`` takes to put *image* into *drive*
    (``None``: to empty it)."""
    disk = ET.Element("disk", type="file", device="cdrom")
    ET.SubElement(disk, "driver", name="qemu", type="raw")
    if image is not None:
        ET.SubElement(disk, "source", file=str(image))
    target = ET.SubElement(disk, "target", dev=drive.target)
    if drive.bus:
        target.set("bus", drive.bus)
    ET.SubElement(disk, "readonly")
    return ET.tostring(disk, encoding="unicode")


def snapshot_xml(name: str, description: str, domain: list[Disk],
                 suffix: str) -> tuple[str, list[tuple[Disk, Path]]]:
    """A disk-only external snapshot of every writable disk, each into a new qcow2
    overlay ``<image>-<suffix>.qcow2`` beside its image; other disks are left out.

    :return: the ``<domainsnapshot>`` document, and each snapshotted disk with the
        overlay the guest writes to from then on (its old image holds the checkpoint).
    """
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "description").text = description
    listed = ET.SubElement(root, "disks")
    taken = []
    for disk in domain:
        entry = ET.SubElement(listed, "disk", name=disk.target)
        if disk.writable_disk and disk.source is not None:
            overlay = disk.source.with_name(f"{disk.source.stem}-{suffix}.qcow2")
            entry.set("snapshot", "external")
            ET.SubElement(entry, "driver", type="qcow2")
            ET.SubElement(entry, "source", file=str(overlay))
            taken.append((disk, overlay))
        else:
            entry.set("snapshot", "no")
    return ET.tostring(root, encoding="unicode"), taken


@dataclass(frozen=True, slots=True, kw_only=True)
class NewDomain:
    """A domain ``vmis vm create`` defines: the project's guest image, TCG."""

    name: str
    boot: BootSpec
    #: the qcow2 overlay on the image that the guest writes to
    disk: Path
    #: drop the guest's writes when the domain stops (``vm create`` without -Persistent)
    transient_disk: bool
    #: the host end of the agent's virtio-serial port
    channel: Path
    #: the serial console, a file
    console: Path
    memory_mib: int = 512
    cpus: int = 1
    #: seconds the guest's clock runs ahead of the host's (negative: behind)
    clock_offset: float = 0.0


def domain_xml(new: NewDomain) -> str:
    """The libvirt XML of *new*: the same machine as vmis.qemu.cmdline's, minus QMP
    (libvirt owns the monitor) and the NIC (libvirt's user-mode network cannot be
    restricted as QEMU's ``restrict=on``; the agent needs no network)."""
    domain = ET.Element("domain", type="qemu")
    ET.SubElement(domain, "name").text = new.name
    ET.SubElement(domain, "memory", unit="MiB").text = str(new.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(new.cpus)
    os_ = ET.SubElement(domain, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
    if new.boot.firmware is not None:
        ET.SubElement(os_, "loader", type="rom", readonly="yes").text = str(new.boot.firmware)
    ET.SubElement(os_, "kernel").text = str(new.boot.kernel)
    if new.boot.initrd is not None:
        ET.SubElement(os_, "initrd").text = str(new.boot.initrd)
    ET.SubElement(os_, "cmdline").text = new.boot.append
    # ACPI: the power button (Stop-VM's fallback) and an orderly poweroff.
    ET.SubElement(ET.SubElement(domain, "features"), "acpi")
    ET.SubElement(domain, "clock", offset="variable", basis="utc",
                  adjustment=str(round(new.clock_offset)))
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"
    devices = ET.SubElement(domain, "devices")
    root = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(root, "driver", name="qemu", type="qcow2", discard="unmap")
    ET.SubElement(root, "source", file=str(new.disk))
    ET.SubElement(root, "target", dev="vda", bus="virtio")
    if new.transient_disk:
        ET.SubElement(root, "transient")
    cdrom = ET.SubElement(devices, "disk", type="file", device="cdrom")
    ET.SubElement(cdrom, "driver", name="qemu", type="raw")
    ET.SubElement(cdrom, "target", dev="hdc", bus="ide")
    ET.SubElement(cdrom, "readonly")
    channel = ET.SubElement(devices, "channel", type="unix")
    ET.SubElement(channel, "source", mode="bind", path=str(new.channel))
    ET.SubElement(channel, "target", type="virtio", name=AGENT_PORT_NAME)
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(new.console))
    ET.SubElement(serial, "target", port="0")
    # Entropy from the host: Python and systemd start without waiting for the pool.
    rng = ET.SubElement(devices, "rng", model="virtio")
    ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"
    ET.SubElement(devices, "controller", type="usb", model="none")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(domain, encoding="unicode")
