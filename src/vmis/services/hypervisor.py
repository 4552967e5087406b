"""The hypervisor seam: what the host expects of a hypervisor backend.

The integration services talk to the guest; a few operations talk to the
machine around it: its power and run state (Start-VM, Stop-VM -TurnOff,
Get-VM's State), its CD-ROM drive (Insert-/Eject-SetupDisk), its disks (the
snapshot step of a checkpoint) and making new VMs (``vmis vm create``). A
backend implements :class:`Hypervisor` once (QEMU through QMP:
vmis.qemu.hypervisor) and is handed to the host manager when it is built;
the operations reach it through this interface only.

Hyper-V's VM states are used for ``Get-VM``'s State: ``Running``, ``Off``,
``Paused``, ``Saved``, ``Starting``, ``PausedCritical``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from vmis.errors import StateError, VmisError

if TYPE_CHECKING:
    from vmis.services.host_half import HostContext, VmContext, VmRecord

__all__ = [
    "Hypervisor",
    "NewMachine",
    "SnapshotRequest",
    "SnapshotResult",
    "SnapshotStep",
    "known_state",
    "require_hypervisor",
    "turn_off",
    "wait_until_off",
]

log = logging.getLogger(__name__)


# Section: a checkpoint's snapshot step (docs/services/vss.md §4.2)


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """What a snapshot step is asked to do."""

    vm_name: str
    vm_id: str
    checkpoint_id: str
    checkpoint_name: str
    #: ``application`` (the guest is frozen now) or ``crash``
    consistency: str
    #: the guest's frozen mount points, in freeze order (empty when not frozen)
    frozen: tuple[str, ...]
    #: seconds the step may take; it is cancelled after that
    timeout: float
    #: the VM's QMP socket, if one is registered
    qmp: str | None = None


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    """What a snapshot step did."""

    #: one line for the report ("exit 0", "job snap0 concluded")
    detail: str
    #: output worth keeping (the end of a command's output)
    output: str = ""
    #: step-specific facts for ``--json`` (file names, job ids ...)
    data: Mapping[str, Any] = field(default_factory=dict)


class SnapshotStep(Protocol):
    """Takes the host-side snapshot of a VM (docs/services/vss.md §4.2): a host
    command (vmis.services.vss.snapshot.CommandSnapshot) or a backend's own
    (:meth:`Hypervisor.snapshot_step`)."""

    #: short name in reports: ``command``, ``qmp``
    kind: str

    def describe(self) -> str:
        """One line saying what the step will do (shown by ``Get-VMVss``)."""
        ...

    async def take(self, request: SnapshotRequest) -> SnapshotResult:
        """Take the snapshot now.

        The caller cancels the call when ``request.timeout`` passes; on
        cancellation the step must stop what it started and re-raise.

        :raise SnapshotError: When the snapshot failed.
        """
        ...


# Section: the backend


@dataclass(frozen=True, slots=True)
class NewMachine:
    """A VM a backend made (``vmis vm create``), for the host to register."""

    #: the guest agent's channel address
    channel: str
    #: the VM's QMP socket, if the backend has one
    qmp: str | None
    #: the registry's kind: who starts and stops the VM
    kind: str
    #: facts for the command's answer (work directory, image, sizes...)
    facts: dict[str, Any]
    #: the libvirt connection and domain UUID of a VM libvirt defined
    libvirt_uri: str | None = None
    libvirt_domain: str | None = None


class Hypervisor(Protocol):
    """One hypervisor backend: power, run state, CD-ROM, snapshots and new VMs."""

    #: short name for messages and ``--json`` (``"qmp"``)
    name: str

    def handles(self, vm: VmRecord) -> bool:
        """Whether this backend can act on *vm* (e.g. it has a QMP socket)."""
        ...

    async def state(self, vm: VmRecord) -> str | None:
        """The VM's state in Hyper-V's words (``Running``, ``Off``, ``Paused``...), or
        ``None`` when the backend cannot tell right now."""
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

    async def started_at(self, vm: VmRecord) -> float | None:
        """When the running VM was powered on (seconds since the epoch): Get-VM's
        Uptime where the guest does not report one. None when the backend cannot tell."""
        ...

    async def insert_disc(self, vm: VmRecord, image: Path) -> dict[str, Any]:
        """Put a disc image into the VM's CD-ROM drive (replacing any disc)."""
        ...

    async def eject_disc(self, vm: VmRecord) -> dict[str, Any]:
        """Take the disc out of the VM's CD-ROM drive."""
        ...

    def snapshot_step(self, vm: VmRecord) -> SnapshotStep | None:
        """The backend's snapshot step for *vm*, or None when it has none for it."""
        ...

    async def create(self, name: str, *, memory_mib: int, cpus: int, clock_offset: float,
                     persistent: bool) -> NewMachine:
        """Make a new VM, off, from the project's guest image (``vmis vm create``).

        :raise StateError: When the backend cannot (name in use on its side...).
        """
        ...

    async def discard(self, name: str) -> None:
        """Undo :meth:`create` when the VM could not be registered."""
        ...


# Section: operations every caller shares


def require_hypervisor(host: HostContext, vm: VmRecord, what: str) -> Hypervisor:
    """The backend that acts on *vm*.

    :param what: the operation, for the error (``"Start-VM"``, ``"-TurnOff"``).
    :raise StateError: When none does: one sentence that says what is missing.
    """
    hypervisor = host.hypervisor_for(vm)
    if hypervisor is not None:
        return hypervisor
    if vm.libvirt_uri:
        reason = (f"{vm.name} is a domain of libvirt at {vm.libvirt_uri}, which this host "
                  f"manager does not connect to (vmis host serve -Hypervisor {vm.libvirt_uri})")
    elif not vm.qmp:
        reason = f"{vm.name} has none (vmis vm set {vm.name} -Qmp PATH)"
    else:
        reason = "this host manager has no hypervisor connection set up"
    kind = "libvirt" if vm.libvirt_uri else "QMP"
    raise StateError(f"{vm.name}: {what} needs a hypervisor connection ({kind}); {reason}")


async def known_state(hypervisor: Hypervisor, vm: VmContext) -> str | None:
    """The VM's state, or ``None`` when the backend cannot tell (e.g. its QMP
    socket is held by libvirt): an operation that only asks the guest goes on."""
    try:
        return await hypervisor.state(vm.vm)
    except VmisError as exc:
        vm.log.debug("%s cannot tell the state: %s", hypervisor.name, exc)
        return None


async def wait_until_off(hypervisor: Hypervisor, vm: VmRecord, timeout: float,
                         every: float = 0.2) -> bool:
    """Look at the VM's state every *every* seconds until it is Off (a backend's
    ``wait_off``); ``True`` if it was within *timeout* seconds. A state the backend
    cannot read for a moment (its monitor or daemon restarting) is looked at again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await hypervisor.state(vm) == "Off":
                return True
        except VmisError as exc:
            log.debug("%s: state unknown while waiting for it to be off: %s", vm.name, exc)
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every)


async def turn_off(host: HostContext, vm: VmContext, timeout: float) -> dict[str, Any]:
    """Stop-VM -TurnOff: cut one VM's power through its backend.

    :raise StateError: When the VM has no backend or stays on.
    """
    hypervisor = require_hypervisor(host, vm.vm, "-TurnOff")
    started = time.monotonic()
    before = await known_state(hypervisor, vm)
    facts = await hypervisor.turn_off(vm.vm, timeout)
    vm.powered_off = True
    vm.log.info("turned off through %s (was %s)", hypervisor.name, before)
    return {"VMName": vm.vm.name, "Action": "TurnOff", "Force": True, "Reason": None,
            "Kind": vm.vm.kind, "Channel": vm.vm.channel, "State": "Off",
            "Before": before, "Seconds": round(time.monotonic() - started, 3), **facts}
