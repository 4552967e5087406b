"""libvirt as the host manager's hypervisor: state, power, disc, snapshots and new VMs.

:class:`LibvirtHypervisor` is a hypervisor backend
(:class:`vmis.services.hypervisor.Hypervisor`) for the VMs whose record names
its connection URI and a domain (by UUID, which survives a rename).
Everything goes through libvirt's API, so libvirt's own bookkeeping stays
right: a domain vmis turned off is shut off for ``virsh`` too, a snapshot is
one of ``virsh snapshot-list``'s and the domain's definition follows it to
the new overlay.

=====================  ============================================================
Get-VM's State         ``virDomainGetState`` (vmis.libvirt.states); a domain gone
                       from libvirt (a transient domain that stopped) is Off
Start-VM               shut off or saved: ``create``; paused: ``resume``;
                       suspended (S3): ``pMWakeup``
Stop-VM -TurnOff       ``destroy``: the power is cut, the guest is not asked
Insert-SetupDisk       ``updateDeviceFlags`` of the first CD-ROM drive, live when the
                       domain runs, else in its definition (the disc is there at boot)
Checkpoint-VM          ``snapshotCreateXML``, disk-only, external, atomic, without
                       quiesce: vmis freezes the guest itself (VSS) around it
vm create              ``defineXML`` of the project's guest image (vmis.libvirt.machines)
=====================  ============================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, TypeVar

from vmis.errors import NotFoundError, SnapshotError, StateError, VmisError
from vmis.libvirt import states
from vmis.libvirt.connection import LibvirtConnection, load_libvirt
from vmis.libvirt.domainxml import cdrom_drive, cdrom_xml, disks, snapshot_xml
from vmis.libvirt.machines import MachineMaker
from vmis.qemu.discovery import discover_from_libvirt_xml
from vmis.services.host_half import VmRecord
from vmis.services.hypervisor import (
    NewMachine,
    SnapshotRequest,
    SnapshotResult,
    wait_until_off,
)

__all__ = ["FoundDomain", "LibvirtHypervisor", "LibvirtSnapshot"]

T = TypeVar("T")

#: seconds between looks at a domain that is on its way off
_POLL = 0.2


@dataclass(frozen=True, slots=True)
class FoundDomain:
    """A domain discovery found, with what ``vmis vm add -Libvirt`` registers."""

    uri: str
    name: str
    uuid: str
    active: bool
    #: the host end of its agent channel, or None (then :attr:`why` says why)
    channel: Path | None
    why: str | None


def _agent_channel(xml: str) -> tuple[Path | None, str | None]:
    found = discover_from_libvirt_xml(xml)
    # Only what concerns the channel: the QMP socket is of no use here, libvirt is.
    why = "; ".join(note for note in found.notes if "channel" in note) or None
    return found.channel, why


def _has_wildcard(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class LibvirtHypervisor:
    """The VMs of one libvirtd (a :class:`~vmis.services.hypervisor.Hypervisor`).

    :param uri: the libvirt connection URI (``qemu:///system``).
    :param data_dir: the host manager's data directory: VMs ``vmis vm create``
        defines keep their disk and sockets in ``<data_dir>/machines/<name>``.
    """

    name = "libvirt"

    def __init__(self, uri: str, data_dir: Path | None = None) -> None:
        self.uri = uri
        self.connection = LibvirtConnection(uri)
        self.machines = MachineMaker(self.connection, data_dir)

    def handles(self, vm: VmRecord) -> bool:
        return vm.libvirt_uri == self.uri and bool(vm.libvirt_domain)

    async def on_domain(self, vm: VmRecord, work: Callable[[Any], T], what: str) -> T:
        """Run *work(domain)* on the VM's domain, on a worker thread.

        :raise NotFoundError: When libvirt no longer has the domain.
        """
        libvirt = load_libvirt()

        def run(conn: Any) -> T:
            try:
                domain = conn.lookupByUUIDString(vm.libvirt_domain)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                raise NotFoundError(
                    f"{vm.name}: libvirt at {self.uri} has no domain {vm.libvirt_domain} any "
                    "more (undefined, or a transient domain that stopped)") from None
            return work(domain)

        return await self.connection.call(run, f"{vm.name}: {what}")

    # Section: state and power

    async def state(self, vm: VmRecord) -> str | None:
        def read(domain: Any) -> str | None:
            state, reason = domain.state()
            saved = state == states.SHUTOFF and bool(domain.hasManagedSaveImage())
            return states.hyperv_state(state, reason, managed_save=saved)

        try:
            return await self.on_domain(vm, read, "state")
        except NotFoundError:
            return "Off"  # a domain libvirt does not know runs nowhere

    async def start(self, vm: VmRecord) -> dict[str, Any]:
        def start(domain: Any) -> dict[str, Any]:
            state, reason = domain.state()
            if state == states.SHUTOFF:
                saved = bool(domain.hasManagedSaveImage())
                domain.create()
                # A channel libvirt names per start (no path= in the XML) moved: say where.
                channel, _ = _agent_channel(domain.XMLDesc(0))
                facts: dict[str, Any] = {"Action": "Started", "Restored": saved}
                if channel is not None:
                    facts["Channel"] = f"unix:{channel}"
                return facts
            if state == states.PAUSED:
                domain.resume()
                return {"Action": "Resumed"}
            if state == states.PMSUSPENDED:
                domain.pMWakeup(0)
                return {"Action": "Resumed"}
            if state in (states.RUNNING, states.BLOCKED):
                return {"Action": None, "Note": "already running"}
            word = states.hyperv_state(state, reason)
            raise StateError(f"{vm.name}: libvirt reports the domain {word or 'in no state'}, "
                             "which Start-VM does not leave; turn it off first "
                             f"(vmis Stop-VM -Name {vm.name} -TurnOff)")

        return await self.on_domain(vm, start, "start")

    async def turn_off(self, vm: VmRecord, timeout: float) -> dict[str, Any]:
        def destroy(domain: Any) -> dict[str, Any]:
            if not domain.isActive():
                return {"AlreadyOff": True}
            domain.destroy()  # SIGTERM to QEMU, SIGKILL after libvirt's grace period
            return {"Exited": True}

        facts = await self.on_domain(vm, destroy, "turn off")
        if not await self.wait_off(vm, timeout):
            raise StateError(f"{vm.name}: libvirt destroyed the domain but it is not off "
                             f"after {timeout:g} s")
        return facts

    async def wait_off(self, vm: VmRecord, timeout: float) -> bool:
        return await wait_until_off(self, vm, timeout, _POLL)

    async def started_at(self, vm: VmRecord) -> float | None:
        # libvirt's API says nothing of when a domain started (virDomainGetInfo
        # has CPU time, not a start time), and its QEMU may run elsewhere.
        return None

    # Section: the CD-ROM drive

    async def _change_disc(self, vm: VmRecord, image: Path | None, what: str) -> dict[str, Any]:
        libvirt = load_libvirt()

        def change(domain: Any) -> dict[str, Any]:
            live = bool(domain.isActive())
            drive = cdrom_drive(domain.XMLDesc(0), vm.name)
            # CURRENT: the running domain's drive, or an off domain's definition.
            domain.updateDeviceFlags(cdrom_xml(drive, image), libvirt.VIR_DOMAIN_AFFECT_CURRENT)
            return {"Device": drive.target, "Media": str(image) if image else None, "Live": live}

        return await self.on_domain(vm, change, what)

    async def insert_disc(self, vm: VmRecord, image: Path) -> dict[str, Any]:
        return await self._change_disc(vm, image.absolute(), "insert disc")

    async def eject_disc(self, vm: VmRecord) -> dict[str, Any]:
        return await self._change_disc(vm, None, "eject disc")

    # Section: VSS

    def snapshot_step(self, vm: VmRecord) -> LibvirtSnapshot:
        return LibvirtSnapshot(self, vm)

    # Section: discovery

    async def domains(self, patterns: list[str]) -> list[FoundDomain]:
        """The domains whose names match any of *patterns* (wildcards, case-insensitive),
        with their agent channels, by name."""
        def scan(conn: Any) -> list[FoundDomain]:
            found = []
            for domain in conn.listAllDomains(0):
                name = domain.name()
                if not any(fnmatch(name.lower(), p.lower()) for p in patterns):
                    continue
                channel, why = _agent_channel(domain.XMLDesc(0))
                found.append(FoundDomain(self.uri, name, domain.UUIDString(),
                                         bool(domain.isActive()), channel, why))
            return sorted(found, key=lambda d: d.name.lower())

        return await self.connection.call(scan, "list domains")

    # Section: new VMs

    async def create(self, name: str, *, memory_mib: int, cpus: int, clock_offset: float,
                     persistent: bool) -> NewMachine:
        """Define a domain from the project's guest image (vmis.libvirt.machines)."""
        return await self.machines.create(name, memory_mib=memory_mib, cpus=cpus,
                                          clock_offset=clock_offset, persistent=persistent)

    async def discard(self, name: str) -> None:
        await self.machines.discard(name)

    def close(self) -> None:
        """Close the connection to libvirtd."""
        self.connection.close()


class LibvirtSnapshot:
    """Checkpoint-VM's snapshot step for libvirt domains: a disk-only external snapshot.

    ``snapshotCreateXML`` with ``DISK_ONLY | ATOMIC`` and no ``QUIESCE``: the
    guest is already frozen by vmis's VSS service (docs/services/vss.md §4),
    and libvirt's quiesce would ask the QEMU guest agent for a second freeze.
    Every writable disk gets a new qcow2 overlay ``<image>-<checkpoint>.qcow2``
    beside its image, all at one instant (a QMP transaction inside libvirt);
    the old images hold the checkpoint, and the domain's definition points
    at the overlays, so it boots from them next time. The snapshot is named by
    the checkpoint's id (libvirt's names are unique; Hyper-V's are not).

    A call libvirt is already making cannot be cancelled: when the step times
    out, libvirt finishes the snapshot on its own and the checkpoint is
    reported failed.
    """

    kind = "libvirt"

    def __init__(self, hypervisor: LibvirtHypervisor, vm: VmRecord) -> None:
        self.hypervisor = hypervisor
        self.vm = vm

    def describe(self) -> str:
        return (f"libvirt disk-only snapshot (snapshotCreateXML) of domain "
                f"{self.vm.libvirt_domain} at {self.hypervisor.uri}")

    async def take(self, request: SnapshotRequest) -> SnapshotResult:
        libvirt = load_libvirt()
        flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
                 | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
        vm = self.vm

        def snapshot(domain: Any) -> SnapshotResult:
            current = disks(domain.XMLDesc(0))
            for disk in current:
                if disk.writable_disk and disk.transient:
                    raise SnapshotError(
                        f"{vm.name}'s disk {disk.target} is transient (its writes are dropped "
                        "when the domain stops), so there is nothing to snapshot")
            xml, taken = snapshot_xml(
                request.checkpoint_id,
                f"vmis checkpoint {request.checkpoint_name!r} ({request.consistency})",
                current, request.checkpoint_id.split("-")[0])
            if not taken:
                raise SnapshotError(f"{vm.name} has no writable disk to snapshot")
            for _, overlay in taken:
                if overlay.exists():
                    raise SnapshotError(f"snapshot file {overlay} already exists")
            domain.snapshotCreateXML(xml, flags)
            rows = [{"Device": disk.target, "Frozen": str(disk.source), "Active": str(overlay)}
                    for disk, overlay in taken]
            return SnapshotResult(
                f"libvirt snapshot {request.checkpoint_id} (disk-only): "
                + ", ".join(f"{r['Frozen']} holds the checkpoint" for r in rows),
                data={"Snapshot": request.checkpoint_id, "Disks": rows})

        try:
            return await self.hypervisor.on_domain(vm, snapshot, "snapshot")
        except SnapshotError:
            raise
        except VmisError as exc:
            raise SnapshotError(f"libvirt snapshot failed: {exc}") from exc
