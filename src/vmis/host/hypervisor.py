"""Hypervisor-level operations: Start-VM, Stop-VM -TurnOff, Get-VM's State, the setup disk.

The integration services talk to the guest; these operations talk to the
machine around it (its power, its run state, its CD-ROM drive), so they need
a connection to the hypervisor. This module defines what the host manager
expects of one (:class:`Hypervisor`) and the host operations built on it.
The QEMU implementation, through QMP, lives a layer up
(:mod:`vmis.qemu.hypervisor`) and is registered by the host manager's server
with :func:`register`; a VM no registered hypervisor handles gets one clear
error per operation.

Hyper-V's VM states are used for ``Get-VM``'s State: ``Running``, ``Off``,
``Paused``, ``Saved``, ``Starting``, ``PausedCritical``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import vmis
from vmis.errors import NotFoundError, StateError, VmisError
from vmis.host.manager import HostManager
from vmis.host.session import VmSession
from vmis.host.store import VmRecord

__all__ = [
    "Hypervisor",
    "HypervisorSupport",
    "eject_setup_disks",
    "find_hypervisor",
    "hypervisor_for",
    "insert_setup_disks",
    "register",
    "setup_disk_image",
    "start_vms",
    "support_of",
    "turn_off_vm",
]

_log = logging.getLogger("vmis.host.hypervisor")


class Hypervisor(Protocol):
    """What the host manager needs from a hypervisor connection (QMP for QEMU)."""

    #: short name for messages and ``--json`` (``"qmp"``)
    name: str

    def handles(self, vm: VmRecord) -> bool:
        """Whether this connection can act on *vm* (e.g. it has a QMP socket)."""
        ...

    async def state(self, vm: VmRecord) -> str | None:
        """The VM's state in Hyper-V's words (``Running``, ``Off``, ``Paused``...), or
        ``None`` when the hypervisor cannot tell right now."""
        ...

    async def start(self, vm: VmRecord) -> dict[str, Any]:
        """Power the VM on, or resume it when paused.

        :return: facts for the result (``"Action"``: ``Started``/``Resumed``/``None``, ...).
        :raise StateError: When the VM cannot be started from here.
        """
        ...

    async def turn_off(self, vm: VmRecord, timeout: float) -> dict[str, Any]:
        """Cut the power at once (the guest gets no say) and wait until it is off.

        :raise StateError: When it is still on after *timeout* seconds.
        """
        ...

    async def wait_off(self, vm: VmRecord, timeout: float) -> bool:
        """Wait until the VM is off; ``True`` if it was within *timeout* seconds."""
        ...

    async def insert_disc(self, vm: VmRecord, image: Path) -> dict[str, Any]:
        """Put a disc image into the VM's CD-ROM drive (replacing any disc)."""
        ...

    async def eject_disc(self, vm: VmRecord) -> dict[str, Any]:
        """Take the disc out of the VM's CD-ROM drive."""
        ...


@dataclass
class HypervisorSupport:
    """The hypervisor connections of one manager, and where it keeps its files."""

    #: the manager's data directory (beside its database): setup disks, machines
    data_dir: Path
    #: asked in order; the first that handles a VM acts on it
    hypervisors: list[Hypervisor] = field(default_factory=list)


_BY_MANAGER: weakref.WeakKeyDictionary[HostManager, HypervisorSupport] = \
    weakref.WeakKeyDictionary()


def support_of(manager: HostManager) -> HypervisorSupport:
    """The hypervisor support of *manager*.

    :raise NotFoundError: When none was set up (a manager without a server).
    """
    try:
        return _BY_MANAGER[manager]
    except KeyError:
        raise NotFoundError("this host manager has no hypervisor support set up") from None


def register(manager: HostManager, hypervisor: Hypervisor, data_dir: Path) -> None:
    """Give *manager* a hypervisor connection; Get-VM asks it for VMs' states."""
    support = _BY_MANAGER.get(manager)
    if support is None:
        support = _BY_MANAGER[manager] = HypervisorSupport(data_dir)
    support.hypervisors.append(hypervisor)

    async def state(session: VmSession) -> str | None:
        if not hypervisor.handles(session.vm):
            return None
        return await known_state(hypervisor, session)

    manager.state_providers.append(state)


async def known_state(hypervisor: Hypervisor, session: VmSession) -> str | None:
    """The VM's state, or ``None`` when the hypervisor cannot tell (e.g. its QMP
    socket is held by libvirt): an operation that only asks the guest goes on."""
    try:
        return await hypervisor.state(session.vm)
    except VmisError as exc:
        session.log.debug("%s cannot tell the state: %s", hypervisor.name, exc)
        return None


def find_hypervisor(manager: HostManager, vm: VmRecord) -> Hypervisor | None:
    """The hypervisor connection that acts on *vm*, or ``None``."""
    support = _BY_MANAGER.get(manager)
    for hypervisor in support.hypervisors if support is not None else []:
        if hypervisor.handles(vm):
            return hypervisor
    return None


def hypervisor_for(manager: HostManager, vm: VmRecord, what: str) -> Hypervisor:
    """The hypervisor connection that acts on *vm*.

    :param what: the operation, for the error (``"Start-VM"``, ``"-TurnOff"``).
    :raise StateError: When none does: one sentence that says what is missing.
    """
    hypervisor = find_hypervisor(manager, vm)
    if hypervisor is not None:
        return hypervisor
    if not vm.qmp:
        reason = f"{vm.name} has none (vmis vm set {vm.name} -Qmp PATH)"
    else:
        reason = "this host manager has no hypervisor connection set up"
    raise StateError(f"{vm.name}: {what} needs a hypervisor connection (QMP); {reason}")


async def turn_off_vm(manager: HostManager, session: VmSession,
                      timeout: float) -> dict[str, Any]:
    """Stop-VM -TurnOff: cut one VM's power through its hypervisor.

    :raise StateError: When the VM has no hypervisor connection or stays on.
    """
    hypervisor = hypervisor_for(manager, session.vm, "-TurnOff")
    started = time.monotonic()
    before = await known_state(hypervisor, session)
    facts = await hypervisor.turn_off(session.vm, timeout)
    session.extra["powered_off"] = True
    session.log.info("turned off through %s (was %s)", hypervisor.name, before)
    return {"VMName": session.vm.name, "Action": "TurnOff", "Force": True, "Reason": None,
            "Kind": session.vm.kind, "Channel": session.vm.channel, "State": "Off",
            "Before": before, "Seconds": round(time.monotonic() - started, 3), **facts}


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
    """Start-VM: power on (or resume) every matching VM through its hypervisor.

    The session dials at once rather than after its backoff, and a resumed
    guest gets a time sync (its clock stood still while it was paused).

    :return: one record per VM, with ``"Error"`` set where it failed.
    """
    async def start(session: VmSession) -> dict[str, Any]:
        hypervisor = hypervisor_for(manager, session.vm, "Start-VM")
        result = await hypervisor.start(session.vm)
        session.extra.pop("powered_off", None)
        session.reconnect_now()
        if result.get("Action") == "Resumed":
            _request_time_sync(session)
        result["State"] = await known_state(hypervisor, session)
        return result

    return await _each(manager, patterns, start)


def _request_time_sync(session: VmSession) -> None:
    from vmis.host.plugins.timesync import monitor

    monitor(session).request_sync()


def setup_disk_image(data_dir: Path) -> Path:
    """This host's setup disk in ``<data_dir>/setup``, built first if missing.

    The file is named by the version and the agent bundle's digest, so a
    host whose vmis changed builds a new disk; older ones are removed (a VM
    that has one in its drive keeps reading it: QEMU holds it open).

    :raise VmisError: When it cannot be written.
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
        hypervisor_for(manager, session.vm, "inserting the setup disk")
    if image is None:
        image = await asyncio.to_thread(setup_disk_image, support_of(manager).data_dir)
    disc = image

    async def insert(session: VmSession) -> dict[str, Any]:
        hypervisor = hypervisor_for(manager, session.vm, "inserting the setup disk")
        facts = await hypervisor.insert_disc(session.vm, disc)
        session.log.info("disc %s inserted", disc)
        return {"Path": str(disc), **facts}

    return await _each(manager, patterns, insert)


async def eject_setup_disks(manager: HostManager, patterns: list[str]) -> list[dict[str, Any]]:
    """Eject-SetupDisk: empty each matching VM's CD-ROM drive."""
    async def eject(session: VmSession) -> dict[str, Any]:
        hypervisor = hypervisor_for(manager, session.vm, "ejecting the setup disk")
        return await hypervisor.eject_disc(session.vm)

    return await _each(manager, patterns, eject)
