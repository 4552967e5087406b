"""QEMU as the host manager's hypervisor: power, state, block snapshots and CD-ROM through QMP.

:class:`QemuHypervisor` is a hypervisor backend
(:class:`vmis.services.hypervisor.Hypervisor`) for every registered VM with a
QMP socket; its :class:`QmpSnapshot` is the VSS snapshot step of such VMs
(docs/services/vss.md §4.2), and it makes the VMs ``vmis vm create`` asks for.
The host manager's server hands it to the manager; nothing else of the host
names QEMU.

Two kinds of QEMU VM are told apart by their QMP socket:

- **VMs vmis launches** (``vmis vm create``, ``vmis lab up -Qemu``): the QMP
  socket lies in a :class:`~vmis.qemu.machine.QemuMachine` work directory
  (``machine.json`` beside it). vmis knows their QEMU process, so a VM whose
  QEMU is gone is ``Off``, Start-VM starts QEMU again from the recorded
  configuration, and -TurnOff waits for the process to exit (killing it if
  QMP ``quit`` is ignored).
- **VMs run by someone else** (``vmis vm add -Qmp``, discovery, libvirt): only
  the socket is known. A socket nobody listens on means no QEMU, so ``Off``;
  Start-VM resumes a paused guest or restarts one that powered off inside a
  QEMU kept alive by ``-no-shutdown``, and otherwise says to start QEMU the
  way it was started.

QMP run states map onto Hyper-V's VM states as in :data:`RUN_STATES`.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
from pathlib import Path
from typing import Any

from vmis.errors import MonitorError, NotFoundError, SnapshotError, StateError
from vmis.qemu.cmdline import DiskMode, MachinePaths
from vmis.qemu.machine import QemuMachine
from vmis.qemu.monitor import QmpMonitor
from vmis.qemu.proc import listener_pid, process_started_at, runs_with
from vmis.services.host_half import VmRecord
from vmis.services.hypervisor import (
    NewMachine,
    SnapshotRequest,
    SnapshotResult,
    wait_until_off,
)

__all__ = ["RUN_STATES", "QemuHypervisor", "QmpSnapshot", "machines_dir"]

log = logging.getLogger(__name__)

#: QMP ``RunState`` -> Hyper-V VM state (``Get-VM``'s State)
RUN_STATES: dict[str, str] = {
    "running": "Running",
    "colo": "Running",
    "paused": "Paused",
    "suspended": "Paused",  # the guest is in ACPI S3
    "debug": "Paused",
    "prelaunch": "Starting",  # QEMU was started with -S and waits for 'cont'
    "inmigrate": "Starting",
    "restore-vm": "Starting",
    "shutdown": "Off",  # the guest powered off; QEMU stays (-no-shutdown)
    "save-vm": "Saving",
    "finish-migrate": "Saving",
    "postmigrate": "Saved",
    "io-error": "PausedCritical",
    "internal-error": "PausedCritical",
    "guest-panicked": "PausedCritical",
    "watchdog": "PausedCritical",
}

#: seconds between looks at a machine that is on its way off
_POLL = 0.2


def _nobody_listens(path: Path) -> bool:
    """Whether no process accepts connections on a Unix socket path (so no QEMU is there)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            return True
        except OSError:
            return False  # exists but unusable (permissions...): do not guess
    return False


def machines_dir(data_dir: Path) -> Path:
    """Where the work directories of the VMs ``vmis vm create`` makes live."""
    return data_dir / "machines"


class QemuHypervisor:
    """QMP for every VM that has a QMP socket (a :class:`~vmis.services.hypervisor.Hypervisor`).

    :param data_dir: the host manager's data directory: VMs it makes live in
        ``<data_dir>/machines/<name>``.
    """

    name = "qmp"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        # Machines this process started, by work directory: keeping their
        # Popen lets this process reap QEMU when it exits (no zombie).
        self._started: dict[Path, QemuMachine] = {}
        # Names whose work directory create() made (discard() removes only those).
        self._made: set[str] = set()
        # QMP socket -> pid of the QEMU listening on it (started_at)
        self._qemu_pids: dict[str, int] = {}

    def handles(self, vm: VmRecord) -> bool:
        return bool(vm.qmp)

    def machine_of(self, vm: VmRecord) -> QemuMachine | None:
        """The :class:`QemuMachine` behind *vm* if vmis launched it, else ``None``."""
        if not vm.qmp:
            return None
        qmp = Path(vm.qmp).absolute()
        workdir = qmp.parent
        kept = self._started.get(workdir)
        if kept is not None:
            if kept.is_running():
                return kept
            # Exited (and now reaped): another process may have started the
            # machine since, so read its record again.
            del self._started[workdir]
        if not MachinePaths(workdir).state.is_file():
            return None
        try:
            machine = QemuMachine.attach(workdir)
        except NotFoundError:
            return None
        return machine if machine.paths.qmp == qmp else None

    @staticmethod
    def monitor(vm: VmRecord) -> QmpMonitor:
        """QMP commands to the VM's QEMU."""
        assert vm.qmp is not None
        return QmpMonitor(Path(vm.qmp))

    async def _status(self, vm: VmRecord) -> str | None:
        """QMP's run state, or ``None`` when no QEMU listens on the socket."""
        try:
            return await self.monitor(vm).status()
        except MonitorError:
            if await asyncio.to_thread(_nobody_listens, Path(str(vm.qmp))):
                return None
            raise

    # Section: Hypervisor

    async def state(self, vm: VmRecord) -> str | None:
        machine = self.machine_of(vm)
        if machine is not None and not machine.is_running():
            return "Off"
        status = await self._status(vm)
        if status is None:
            return "Off"
        return RUN_STATES.get(status, status)

    async def start(self, vm: VmRecord) -> dict[str, Any]:
        machine = self.machine_of(vm)
        if machine is not None and not machine.is_running():
            await asyncio.to_thread(machine.start)
            self._started[machine.paths.workdir] = machine
            log.info("%s: QEMU started (pid %s)", vm.name, machine.pid)
            return {"Action": "Started", "Pid": machine.pid}
        monitor = self.monitor(vm)
        status = await self._status(vm)
        if status is None:
            raise StateError(
                f"{vm.name}: no QEMU listens on {vm.qmp}, and vmis did not start this VM; "
                "start it the way it was started (e.g. virsh start)"
            )
        if status == "running":
            return {"Action": None, "Note": "already running"}
        if status == "shutdown":
            # The guest powered off inside a QEMU that stays (-no-shutdown):
            # power it on again, as a real machine's power button would.
            await monitor.reset()
            await monitor.resume()
            return {"Action": "Started"}
        if status == "suspended":
            await monitor.execute("system_wakeup")
            return {"Action": "Resumed"}
        if status in ("paused", "prelaunch", "debug"):
            await monitor.resume()
            return {"Action": "Started" if status == "prelaunch" else "Resumed"}
        raise StateError(f"{vm.name}: QEMU reports the state {status!r}, which Start-VM does not "
                         "leave; see QEMU's monitor")

    async def turn_off(self, vm: VmRecord, timeout: float) -> dict[str, Any]:
        machine = self.machine_of(vm)
        if machine is not None:
            if not machine.is_running():
                return {"AlreadyOff": True}
            pid = machine.pid
            # QMP quit; a QEMU that does not exit within the time is killed.
            try:
                await machine.quit(timeout=max(min(timeout, 30.0), 1.0))
            except MonitorError as exc:
                log.warning("%s: %s; killing QEMU", vm.name, exc)
                await asyncio.to_thread(machine.kill)
            if machine.is_running():
                raise StateError(f"{vm.name}: QEMU (pid {pid}) is still running")
            return {"Pid": pid, "Exited": True}
        try:
            await self.monitor(vm).quit()
        except MonitorError:
            if not await asyncio.to_thread(_nobody_listens, Path(str(vm.qmp))):
                raise
            return {"AlreadyOff": True}
        if not await self.wait_off(vm, timeout):
            raise StateError(f"{vm.name}: QEMU took QMP quit but still listens on {vm.qmp} "
                             f"after {timeout:g} s")
        return {"Exited": True}

    async def wait_off(self, vm: VmRecord, timeout: float) -> bool:
        return await wait_until_off(self, vm, timeout, _POLL)

    async def started_at(self, vm: VmRecord) -> float | None:
        machine = self.machine_of(vm)
        if machine is not None:
            pid = machine.pid
            return None if pid is None else process_started_at(pid)
        # A QEMU vmis did not start: the process listening on its QMP socket,
        # looked up once and then only checked (its pid may be reused after it exits).
        qmp = str(vm.qmp)
        pid = self._qemu_pids.get(qmp)
        if pid is None or not runs_with(pid, qmp):
            pid = await asyncio.to_thread(listener_pid, Path(qmp))
            if pid is None or not runs_with(pid, qmp):
                self._qemu_pids.pop(qmp, None)
                return None
            self._qemu_pids[qmp] = pid
        return process_started_at(pid)

    async def _cdrom(self, vm: VmRecord) -> str:
        """The qdev id (or QOM path) of the VM's CD-ROM drive: ``cdrom0`` where there is one."""
        removable = [entry for entry in await self.monitor(vm).execute("query-block")
                     if entry.get("removable") and entry.get("qdev")]
        for entry in removable:
            if entry["qdev"] in ("cdrom0", "/machine/peripheral/cdrom0"):
                return "cdrom0"
        if not removable:
            raise StateError(f"{vm.name} has no CD-ROM drive (add one: docs/real-vms.md)")
        return str(removable[0]["qdev"])

    async def insert_disc(self, vm: VmRecord, image: Path) -> dict[str, Any]:
        machine = self.machine_of(vm)
        if machine is not None and not machine.is_running():
            raise StateError(f"{vm.name} is off; start it first (vmis Start-VM -Name {vm.name})")
        device = await self._cdrom(vm)
        await self.monitor(vm).insert_cdrom(image.absolute(), device=device)
        return {"Device": device, "Media": str(image.absolute())}

    async def eject_disc(self, vm: VmRecord) -> dict[str, Any]:
        device = await self._cdrom(vm)
        await self.monitor(vm).eject_cdrom(device=device)
        return {"Device": device, "Media": None}

    # Section: VSS

    def snapshot_step(self, vm: VmRecord) -> QmpSnapshot | None:
        """A QMP block snapshot for every VM with a QMP socket."""
        return QmpSnapshot(self, vm) if vm.qmp else None

    # Section: new VMs

    async def create(self, name: str, *, memory_mib: int, cpus: int, clock_offset: float,
                     persistent: bool) -> NewMachine:
        """A VM vmis launches itself from the project's guest image.

        The image is built first if the cache lacks it (minutes, once; needs
        root). The VM gets a work directory ``<data dir>/machines/<name>``
        holding its machine record, sockets, logs and (with *persistent*) its
        qcow2 disk.

        :raise StateError: When its work directory holds an earlier VM.
        :raise ConfigError: For a bad size or a work directory path too long for sockets.
        :raise ImageBuildError: When the guest image cannot be built.
        """
        workdir = machines_dir(self.data_dir) / name
        if MachinePaths(workdir).state.exists():
            raise StateError(f"{workdir} holds the files of an earlier VM named {name!r}; "
                             "remove that directory or choose another name")
        from vmis.qemu.image.layers import ensure_agent_image

        image = await asyncio.to_thread(ensure_agent_image)
        machine = QemuMachine(
            name, workdir, image, memory_mib=memory_mib, cpus=cpus, clock_offset=clock_offset,
            disk_mode=DiskMode.OVERLAY if persistent else DiskMode.SNAPSHOT,
        )
        if not workdir.exists():
            self._made.add(name)
        machine.save()
        log.info("VM %s created in %s from image %s", name, workdir, image.directory)
        return NewMachine(f"unix:{machine.paths.channel}", str(machine.paths.qmp), "qemu",
                          {"WorkDir": str(workdir), "Image": str(image.directory)})

    async def discard(self, name: str) -> None:
        """Remove the work directory :meth:`create` made, if it made it."""
        if name in self._made:
            self._made.discard(name)
            shutil.rmtree(machines_dir(self.data_dir) / name, ignore_errors=True)


class QmpSnapshot:
    """Checkpoint-VM's snapshot step for QEMU VMs: an external block snapshot through QMP.

    ``blockdev-snapshot-sync`` makes the disk's current image read-only and
    points the guest's writes at a new qcow2 overlay on top of it; it is
    atomic for the guest and takes milliseconds, so it fits easily between
    the guest's freeze and thaw. The frozen image then holds the disk exactly
    as the frozen file systems left it.

    - A VM vmis launched snapshots its root disk into the next
      ``disk-<n>.qcow2`` of its work directory, and boots from that chain next
      time (:meth:`QemuMachine.snapshot`); it needs a persistent disk.
    - Another QEMU VM snapshots every writable, non-removable disk, in one QMP
      ``transaction`` (all disks at the same instant), into
      ``<image>-<checkpoint id>.qcow2`` beside each image.
    """

    kind = "qmp"

    def __init__(self, hypervisor: QemuHypervisor, vm: VmRecord) -> None:
        self.hypervisor = hypervisor
        self.vm = vm

    def describe(self) -> str:
        return f"QMP block snapshot (blockdev-snapshot-sync) through {self.vm.qmp}"

    async def take(self, request: SnapshotRequest) -> SnapshotResult:
        try:
            machine = self.hypervisor.machine_of(self.vm)
            if machine is not None:
                return await self._take_machine(machine)
            return await self._take_external(request)
        except MonitorError as exc:
            raise SnapshotError(f"QMP block snapshot failed: {exc}") from exc

    async def _take_machine(self, machine: QemuMachine) -> SnapshotResult:
        if not machine.is_running():
            raise SnapshotError(f"{self.vm.name} is off: QEMU is not running")
        if machine.config.disk_mode is not DiskMode.OVERLAY:
            raise SnapshotError(
                f"{self.vm.name} has no persistent disk (its writes are discarded at power-off), "
                "so there is nothing to snapshot; create it with -Persistent"
            )
        try:
            snap = await machine.snapshot()
        except StateError as exc:
            raise SnapshotError(str(exc)) from exc
        disk = {"Device": snap.device, "Frozen": snap.frozen, "Active": str(snap.active)}
        return SnapshotResult(f"QMP blockdev-snapshot-sync: {snap.frozen} holds the checkpoint, "
                              f"the guest writes to {snap.active}", data={"Disks": [disk]})

    async def _take_external(self, request: SnapshotRequest) -> SnapshotResult:
        monitor = self.hypervisor.monitor(self.vm)
        suffix = request.checkpoint_id.split("-")[0]
        disks = []
        for entry in await monitor.execute("query-block"):
            inserted = entry.get("inserted")
            if entry.get("removable") or not inserted or inserted.get("ro"):
                continue
            image = Path(str(inserted["file"]))
            target = image.with_name(f"{image.stem}-{suffix}.qcow2")
            if target.exists():
                raise SnapshotError(f"snapshot file {target} already exists")
            # "device" names a -drive backend; -blockdev disks (libvirt) have a node name.
            where = ({"device": entry["device"]} if entry.get("device")
                     else {"node-name": inserted["node-name"]})
            disks.append((where, image, target))
        if not disks:
            raise SnapshotError(f"{self.vm.name} has no writable disk to snapshot")
        # One transaction: every disk is snapshotted at the same instant.
        await monitor.execute("transaction", {"actions": [
            {"type": "blockdev-snapshot-sync",
             "data": {**where, "snapshot-file": str(target), "format": "qcow2"}}
            for where, _, target in disks
        ]})
        rows = [{"Device": next(iter(where.values())), "Frozen": str(image),
                 "Active": str(target)} for where, image, target in disks]
        return SnapshotResult(
            f"QMP transaction of {len(rows)} blockdev-snapshot-sync: "
            + ", ".join(f"{r['Frozen']} holds the checkpoint" for r in rows),
            data={"Disks": rows},
        )
