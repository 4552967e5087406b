"""The host operations on VMs' machines: Start-VM, the setup disk, ``vmis vm create``.

They act through the manager's hypervisor backends (vmis.services.hypervisor),
the first that handles a VM; a VM none handles gets one clear error per
operation. Stop-VM -TurnOff is Shutdown's (vmis.services.shutdown.host), the
snapshot step VSS's (vmis.services.vss.host), Get-VM's State vmis.host.vminfo's.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import vmis
from vmis.errors import ConfigError, NotFoundError, StateError, VmisError
from vmis.host.manager import HostManager
from vmis.host.session import VmSession
from vmis.host.vmname import check_vm_name
from vmis.services.hypervisor import known_state, require_hypervisor
from vmis.services.timesync.host import TimeSyncHost

__all__ = [
    "create_vm",
    "eject_setup_disks",
    "insert_setup_disks",
    "setup_disk_image",
    "start_vms",
]


async def _each(manager: HostManager, patterns: list[str],
                work: Callable[[VmSession], Awaitable[dict[str, Any]]]) -> list[dict[str, Any]]:
    sessions = manager.match(patterns)

    async def one(session: VmSession) -> dict[str, Any]:
        try:
            result = await work(session)
        except VmisError as exc:
            return {"VMName": session.vm.name, "Error": str(exc),
                    "ErrorType": type(exc).__name__}
        return {"VMName": session.vm.name, **result, "Error": None}

    return list(await asyncio.gather(*(one(s) for s in sessions)))


async def start_vms(manager: HostManager, patterns: list[str]) -> list[dict[str, Any]]:
    """Start-VM: power on (or resume) every matching VM through its backend.

    The session dials at once rather than after its backoff, and a resumed
    guest gets a time sync (its clock stood still while it was paused).

    :return: one record per VM, with ``"Error"`` set where it failed.
    """
    async def start(session: VmSession) -> dict[str, Any]:
        hypervisor = require_hypervisor(manager, session.vm, "Start-VM")
        result = await hypervisor.start(session.vm)
        # libvirt names a channel's socket per start unless its XML gives a path
        channel = result.pop("Channel", None)
        if channel and channel != session.vm.channel:
            manager.update_vm(session.vm.name, channel=channel)
        session.powered_off = False
        session.reconnect_now()
        if result.get("Action") == "Resumed":
            session.part(TimeSyncHost).request_sync()
        result["State"] = await known_state(hypervisor, session)
        return result

    return await _each(manager, patterns, start)


def setup_disk_image(data_dir: Path) -> Path:
    """This host's setup disk in ``<data_dir>/setup``, built first if missing.

    The file is named by the version and the agent bundle's digest, so a
    host whose vmis changed builds a new disk; older ones are removed (a VM
    that has one in its drive keeps reading it: QEMU holds it open).

    :raise LocalFileError: When it cannot be written.
    """
    from vmis.host.setupdisk import build_setup_disk
    from vmis.packaging.bundle import bundle_bytes

    bundle = bundle_bytes()
    digest = hashlib.sha256(bundle).hexdigest()[:12]
    path = data_dir / "setup" / f"vmis-setup-{vmis.__version__}-{digest}.iso"
    if not path.is_file():
        build_setup_disk(path, bundle)
        for old in path.parent.glob("vmis-setup-*.iso"):
            if old != path:
                old.unlink(missing_ok=True)
    return path


async def insert_setup_disks(manager: HostManager, patterns: list[str],
                             image: Path | None) -> list[dict[str, Any]]:
    """Insert-SetupDisk: put the setup disk (or *image*) into each VM's CD-ROM drive.

    :param image: a disc image on this host; default: this host's setup disk,
        built in the data directory on first use.
    :raise NotFoundError: When *image* does not exist.
    """
    if image is not None and not image.is_file():
        raise NotFoundError(f"no disc image {image}")
    sessions = manager.match(patterns)
    for session in sessions:  # refuse before building anything
        require_hypervisor(manager, session.vm, "inserting the setup disk")
    if image is None:
        image = await asyncio.to_thread(setup_disk_image, _data_dir(manager))
    disc = image

    async def insert(session: VmSession) -> dict[str, Any]:
        hypervisor = require_hypervisor(manager, session.vm, "inserting the setup disk")
        facts = await hypervisor.insert_disc(session.vm, disc)
        session.log.info("disc %s inserted", disc)
        return {"Path": str(disc), **facts}

    return await _each(manager, patterns, insert)


async def eject_setup_disks(manager: HostManager, patterns: list[str]) -> list[dict[str, Any]]:
    """Eject-SetupDisk: empty each matching VM's CD-ROM drive."""
    async def eject(session: VmSession) -> dict[str, Any]:
        hypervisor = require_hypervisor(manager, session.vm, "ejecting the setup disk")
        return await hypervisor.eject_disc(session.vm)

    return await _each(manager, patterns, eject)


def _data_dir(manager: HostManager) -> Path:
    if manager.data_dir is None:
        raise StateError("this host manager keeps no files (it has no data directory)")
    return manager.data_dir


async def create_vm(manager: HostManager, name: str, *, memory_mib: int = 512, cpus: int = 1,
                    clock_offset: float = 0.0, persistent: bool = False) -> dict[str, Any]:
    """``vmis vm create``: a new VM from the project's guest image, made by the first
    backend of the manager and registered with its agent channel; it stays off
    until Start-VM.

    :raise StateError: When the name is taken, or no backend makes VMs.
    :raise ConfigError: For an invalid name (vmis.host.vmname), a bad size, or a work
        directory path too long for sockets.
    """
    check_vm_name(name)
    try:
        manager.session(name)
    except NotFoundError:
        pass
    else:
        raise StateError(f"a VM named {name!r} is already registered")
    if not manager.hypervisors:
        raise ConfigError("this host manager has no hypervisor backend to make VMs with")
    backend = manager.hypervisors[0]
    made = await backend.create(name, memory_mib=memory_mib, cpus=cpus,
                                clock_offset=clock_offset, persistent=persistent)
    try:
        record = manager.add_vm(name, made.channel, qmp=made.qmp, kind=made.kind,
                                libvirt_uri=made.libvirt_uri, libvirt_domain=made.libvirt_domain)
    except VmisError:
        await backend.discard(name)
        raise
    return {**manager.vm_info(manager.sessions[record.id]), **made.facts,
            "MemoryMiB": memory_mib, "Cpus": cpus, "ClockOffset": clock_offset,
            "Persistent": persistent, "State": "Off"}
