"""Real virtual machines under QEMU: guest image, machine launcher, QMP, discovery.

This is host-side code (third-party libraries allowed: ``qemu.qmp``).

``vmis.qemu.image``      the project's Debian guest image, built and cached by its inputs
``vmis.qemu.cmdline``    the QEMU command line of a machine, as a pure function
``vmis.qemu.machine``    :class:`QemuMachine`: start, attach, wait, stop, snapshot, CD-ROM
``vmis.qemu.monitor``    :class:`QmpMonitor`: QMP commands to any QEMU
``vmis.qemu.discovery``  QMP socket and agent channel of a VM vmis did not start
``vmis.qemu.errors``     this layer's refinements of :mod:`vmis.errors`

What runs on which machine, and why TCG: ``shared/research/feasibility.md``.
"""

from vmis.qemu.cmdline import AGENT_PORT_NAME, BootSpec, DiskMode, MachineConfig, MachinePaths
from vmis.qemu.discovery import (
    Discovered,
    discover_from_cmdline,
    discover_from_libvirt_xml,
    discover_from_pid,
)
from vmis.qemu.errors import (
    ImageBuildError,
    MachineNotRunning,
    MachineStartError,
    MonitorError,
    QemuNotInstalled,
)
from vmis.qemu.image.guest_image import GuestImage
from vmis.qemu.image.layers import ensure_agent_image, ensure_base_image
from vmis.qemu.machine import BootReport, QemuMachine
from vmis.qemu.monitor import BlockSnapshot, QmpMonitor

__all__ = [
    "AGENT_PORT_NAME",
    "BlockSnapshot",
    "BootReport",
    "BootSpec",
    "Discovered",
    "DiskMode",
    "GuestImage",
    "ImageBuildError",
    "MachineConfig",
    "MachineNotRunning",
    "MachinePaths",
    "MachineStartError",
    "MonitorError",
    "QemuMachine",
    "QemuNotInstalled",
    "QmpMonitor",
    "discover_from_cmdline",
    "discover_from_libvirt_xml",
    "discover_from_pid",
    "ensure_agent_image",
    "ensure_base_image",
]
