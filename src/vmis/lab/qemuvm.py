"""Lab VMs that are real QEMU virtual machines (``vmis lab up NAME -Qemu``).

Where a process lab VM is an agent process with its own root directory, a
QEMU lab VM is a :class:`~vmis.qemu.machine.QemuMachine` booted from the
project's guest image (built first if the cache lacks it), with the agent
installed in the image exactly as a user installs it. It lives in the same
place as any lab VM, ``<lab>/vms/<name>/``, which is the machine's work
directory::

    vms/<name>/machine.json            the machine record (QemuMachine.attach)
    vms/<name>/agent.sock qmp.sock     the agent channel and QMP, registered with the host
    vms/<name>/disk.qcow2 disk-*.qcow2 its persistent disk (checkpoints add overlays)
    vms/<name>/console.log qemu.log    the guest's serial console, QEMU's messages

The disk persists: ``lab down`` powers the guest off and ``lab up`` boots
the same disk again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from vmis.errors import StateError
from vmis.qemu.cmdline import DiskMode, MachinePaths
from vmis.qemu.image.guest_image import GuestImage
from vmis.qemu.image.layers import ensure_agent_image
from vmis.qemu.machine import QemuMachine

__all__ = [
    "BOOT_TIMEOUT",
    "POWERDOWN_TIMEOUT",
    "boot_machine",
    "is_qemu_dir",
    "stop_machine",
]

#: seconds ``lab up -Qemu`` waits for a booting VM's heartbeat (≈ 30 s idle under
#: TCG, 50-90 s on a loaded machine: docs/real-vms.md)
BOOT_TIMEOUT = 300.0
#: seconds ``lab down`` gives the guest to power off after the ACPI power button
POWERDOWN_TIMEOUT = 30.0

_T = TypeVar("_T")


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine from synchronous code, also when the caller has a loop running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def is_qemu_dir(directory: Path) -> bool:
    """Whether a lab VM directory holds a QEMU machine."""
    return MachinePaths(directory).state.is_file()


def boot_machine(name: str, directory: Path, *, image: GuestImage | None = None,
                 clock_offset: float | None = None, memory_mib: int | None = None,
                 cpus: int | None = None) -> QemuMachine:
    """Start (creating it on first use) the QEMU lab VM in *directory*; return at once.

    :param image: the guest image of a new VM; default: the project's agent
        image (built first if missing). An existing VM keeps the image its disk
        is based on, and asking for another one is an error.
    :param clock_offset: seconds the guest's clock starts ahead of the host's.
    :raise StateError: When the VM exists with another image, or is a process lab VM.
    :raise ImageBuildError: When the image cannot be built.
    :raise MachineStartError: When QEMU does not start.
    """
    if (directory / "root").is_dir() and not is_qemu_dir(directory):
        raise StateError(f"lab VM {name} is a process lab VM; stop it (vmis lab down {name}), "
                         f"remove {directory} or choose another name")
    if is_qemu_dir(directory):
        machine = QemuMachine.attach(directory)
        if image is not None and machine.config.boot.disk != image.rootfs:
            raise StateError(f"lab VM {name} was created from {machine.config.boot.disk}; remove "
                             f"{directory} to boot another image")
        if machine.is_running():
            return machine
        changes: dict[str, Any] = {}
        if clock_offset is not None:
            changes["clock_offset"] = clock_offset
        if memory_mib is not None:
            changes["memory_mib"] = memory_mib
        if cpus is not None:
            changes["cpus"] = cpus
        if changes:
            chain = machine.disk_chain
            machine = QemuMachine.from_config(dataclasses.replace(machine.config, **changes),
                                              directory, qemu=machine.qemu)
            machine.disk_chain = chain
    else:
        machine = QemuMachine(
            name, directory, image or ensure_agent_image(), disk_mode=DiskMode.OVERLAY,
            clock_offset=clock_offset or 0.0, memory_mib=memory_mib or 512, cpus=cpus or 1,
        )
    machine.start()
    return machine


def stop_machine(directory: Path, timeout: float = POWERDOWN_TIMEOUT) -> bool:
    """Power a QEMU lab VM off: ACPI power button, QMP ``quit`` after *timeout*, then SIGKILL.

    :return: whether it was running.
    """
    machine = QemuMachine.attach(directory)
    if not machine.is_running():
        return False
    _run(machine.shutdown(timeout=timeout))
    return True
