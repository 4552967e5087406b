"""The QEMU command line of a vmis machine, as a pure function of its configuration.

Nothing here starts a process or touches the file system: :func:`build_command`
turns a :class:`MachineConfig` and a :class:`MachinePaths` into an argument
vector, so the whole device layout is unit-tested without QEMU installed.
:mod:`vmis.qemu.process` runs the result.

The layout (device ids are stable, the QMP helpers and the discovery code rely
on them):

=====================  ==========================================================
``-mon chardev=qmp``   QMP on a Unix socket (``qmp.sock``)
``agent0``             socket chardev (``agent.sock``, ``server=on,wait=off``)
                       behind the virtserialport ``org.vmis.agent.0``
``qga0``               socket chardev (``qga.sock``) behind the virtserialport
                       ``org.qemu.guest_agent.0`` that qemu-ga opens, if the
                       guest runs it (docs/guest-links.md)
``root``               the root disk, virtio-blk; ``snapshot=on`` or a qcow2 overlay
``cdrom0``             an IDE CD-ROM drive, empty until ``blockdev-change-medium``
``net0``               virtio-net on QEMU user-mode networking, ``restrict=on``
``vsock0``             vhost-vsock-pci, only when a guest CID is given
=====================  ==========================================================
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmis.errors import ConfigError

__all__ = [
    "AGENT_CHARDEV_ID",
    "AGENT_PORT_NAME",
    "CDROM_DEVICE_ID",
    "QGA_CHARDEV_ID",
    "QGA_PORT_NAME",
    "ROOT_DRIVE_ID",
    "BootSpec",
    "DiskMode",
    "MachineConfig",
    "MachinePaths",
    "build_command",
    "qemu_escape",
    "rtc_base",
]

#: Name of the virtio-serial port the guest agent opens (``/dev/virtio-ports/<name>``).
AGENT_PORT_NAME = "org.vmis.agent.0"
#: QEMU id of the chardev behind the agent port; QMP's ``query-chardev`` reports it.
AGENT_CHARDEV_ID = "agent0"
#: Name of the port qemu-ga, the QEMU guest agent, opens (docs/guest-links.md).
QGA_PORT_NAME = "org.qemu.guest_agent.0"
#: QEMU id of the chardev behind qemu-ga's port.
QGA_CHARDEV_ID = "qga0"
#: QEMU id (``-device ... id=``) of the CD-ROM drive, used by ``blockdev-change-medium``.
CDROM_DEVICE_ID = "cdrom0"
#: Block backend name of the root disk, used by ``blockdev-snapshot-sync``.
ROOT_DRIVE_ID = "root"

# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


class DiskMode(enum.StrEnum):
    """What happens to the guest's writes to its root disk."""

    #: ``-drive snapshot=on``: writes go to a temporary overlay QEMU deletes on exit.
    SNAPSHOT = "snapshot"
    #: A persistent qcow2 overlay in the machine's work directory, backed by the
    #: image; block snapshots (``Checkpoint-VM``) act on it.
    OVERLAY = "overlay"


@dataclass(frozen=True, slots=True, kw_only=True)
class BootSpec:
    """What to boot: kernel, initramfs, command line, firmware and root disk.

    :class:`vmis.qemu.image.guest_image.GuestImage` produces one with
    :meth:`~vmis.qemu.image.guest_image.GuestImage.boot_spec`.
    """

    #: kernel image: an uncompressed ELF ``vmlinux`` (PVH boot) or a bzImage
    kernel: Path
    #: initramfs, or ``None`` if the kernel mounts the root itself
    initrd: Path | None
    #: kernel command line
    append: str
    #: firmware passed as ``-bios`` (qboot for PVH boot), or ``None`` for QEMU's SeaBIOS
    firmware: Path | None
    #: the root disk image (read-only to the machine: it is never written)
    disk: Path
    #: format of :attr:`disk`, ``"raw"`` or ``"qcow2"``
    disk_format: str = "raw"


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineConfig:
    """Everything that shapes one machine's QEMU command line."""

    #: machine name, shown as QEMU's ``-name`` and in process listings
    name: str
    #: what to boot
    boot: BootSpec
    memory_mib: int = 512
    cpus: int = 1
    #: ``"tcg"`` (always works) or ``"kvm"`` (only when asked: not on the test
    #: machines, docs/real-vms.md, "The test machines")
    accel: str = "tcg"
    disk_mode: DiskMode = DiskMode.SNAPSHOT
    #: seconds the guest's real-time clock runs ahead of the host (negative: behind)
    clock_offset: float = 0.0
    #: a virtio-net NIC on user-mode networking with ``restrict=on`` (no way out)
    network: bool = True
    #: an empty CD-ROM drive whose media can be changed through QMP
    cdrom: bool = True
    #: guest CID for a vhost-vsock device, or ``None`` for no vsock device
    vsock_cid: int | None = None
    #: exit QEMU instead of rebooting the guest (``-no-reboot``)
    no_reboot: bool = False
    #: words appended to the kernel command line
    extra_append: tuple[str, ...] = ()
    #: arguments appended verbatim to the QEMU command line
    extra_args: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in ",=/\0") or self.name.startswith("-"):
            raise ConfigError(f"invalid machine name {self.name!r}: no ',', '=', '/' or NUL")
        if self.accel not in ("tcg", "kvm"):
            raise ConfigError(f"unknown accelerator {self.accel!r}: use 'tcg' or 'kvm'")
        if self.memory_mib < 64:
            raise ConfigError(f"memory_mib={self.memory_mib} is too small (at least 64)")
        if self.cpus < 1:
            raise ConfigError(f"cpus={self.cpus} must be at least 1")
        # CIDs 0-2 are reserved (hypervisor, local, host), 0xFFFFFFFF is VMADDR_CID_ANY.
        if self.vsock_cid is not None and not 3 <= self.vsock_cid < 0xFFFFFFFF:
            raise ConfigError(f"vsock_cid={self.vsock_cid} is reserved; use 3 or above")


@dataclass(frozen=True, slots=True)
class MachinePaths:
    """The files of one machine, all inside its work directory."""

    workdir: Path

    @property
    def qmp(self) -> Path:
        """QMP monitor socket."""
        return self.workdir / "qmp.sock"

    @property
    def channel(self) -> Path:
        """Host end of the agent's virtio-serial port."""
        return self.workdir / "agent.sock"

    @property
    def qga(self) -> Path:
        """Host end of qemu-ga's virtio-serial port (``org.qemu.guest_agent.0``)."""
        return self.workdir / "qga.sock"

    @property
    def console(self) -> Path:
        """The guest's serial console, appended to by QEMU."""
        return self.workdir / "console.log"

    @property
    def qemu_log(self) -> Path:
        """QEMU's own stdout and stderr."""
        return self.workdir / "qemu.log"

    @property
    def pidfile(self) -> Path:
        """QEMU's ``-pidfile``."""
        return self.workdir / "qemu.pid"

    @property
    def state(self) -> Path:
        """JSON record that lets another process attach to the machine."""
        return self.workdir / "machine.json"

    @property
    def overlay(self) -> Path:
        """The persistent qcow2 overlay of :attr:`DiskMode.OVERLAY`."""
        return self.workdir / "disk.qcow2"

    def check(self) -> None:
        """Check that the socket paths fit in ``sun_path``.

        :raise ConfigError: When the work directory's path is too long.
        """
        for sock in (self.qmp, self.channel, self.qga):
            if len(str(sock).encode()) > _MAX_SOCKET_PATH:
                raise ConfigError(
                    f"socket path {sock} is longer than {_MAX_SOCKET_PATH} bytes; "
                    "use a shorter work directory"
                )


def qemu_escape(value: str) -> str:
    """Escape a value for a QEMU ``key=value,...`` option: commas are doubled."""
    return value.replace(",", ",,")


def rtc_base(now: float, offset: float) -> str:
    """The ``-rtc base=`` value that starts the guest clock ``offset`` seconds from ``now``.

    :param now: the host's current time, seconds since the epoch.
    :param offset: seconds to add; ``-3600`` starts the guest one hour behind.
    :return: ``"utc"`` for no offset, else a UTC date-time QEMU accepts.
    """
    if offset == 0:
        return "utc"
    start = dt.datetime.fromtimestamp(now + offset, tz=dt.UTC)
    return start.strftime("%Y-%m-%dT%H:%M:%S")


def build_command(
    config: MachineConfig,
    paths: MachinePaths,
    *,
    qemu: str = "qemu-system-x86_64",
    now: float,
    overlay: Path | None = None,
) -> list[str]:
    """Build the QEMU argument vector of a machine.

    :param config: the machine's configuration.
    :param paths: where its sockets, logs and overlay live.
    :param qemu: the QEMU binary (name or path).
    :param now: the host's current time, for ``-rtc base=`` (passed in to keep this pure).
    :param overlay: for :attr:`DiskMode.OVERLAY`, the qcow2 file the guest writes to
        (default :attr:`MachinePaths.overlay`; later ones after block snapshots).
    :return: the argument vector, program first.
    :raise ConfigError: When a socket path does not fit in ``sun_path``.
    """
    paths.check()
    boot = config.boot
    accel = ["-accel", "kvm", "-cpu", "host"] if config.accel == "kvm" else ["-accel", "tcg"]
    argv = [
        qemu,
        "-name", f"guest={qemu_escape(config.name)}",
        "-machine", "pc",
        *accel,
        "-m", str(config.memory_mib),
        "-smp", str(config.cpus),
        # No default devices, no user config files: the layout is exactly what follows.
        "-nodefaults", "-no-user-config", "-display", "none",
        "-msg", "timestamp=on",
        "-pidfile", str(paths.pidfile),
        "-chardev", f"socket,id=qmp,path={qemu_escape(str(paths.qmp))},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"file,id=console0,path={qemu_escape(str(paths.console))}",
        "-serial", "chardev:console0",
        "-rtc", f"base={rtc_base(now, config.clock_offset)},clock=host",
        "-kernel", str(boot.kernel),
    ]  # fmt: skip
    if boot.initrd is not None:
        argv += ["-initrd", str(boot.initrd)]
    if boot.firmware is not None:
        argv += ["-bios", str(boot.firmware)]
    append = " ".join([boot.append, *config.extra_append]).strip()
    argv += ["-append", append]
    argv += _root_disk(config, overlay or paths.overlay)
    argv += [
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev",
        f"socket,id={AGENT_CHARDEV_ID},path={qemu_escape(str(paths.channel))},server=on,wait=off",
        "-device",
        f"virtserialport,bus=vser0.0,chardev={AGENT_CHARDEV_ID},name={AGENT_PORT_NAME},id=agentport0",
        "-chardev",
        f"socket,id={QGA_CHARDEV_ID},path={qemu_escape(str(paths.qga))},server=on,wait=off",
        "-device",
        f"virtserialport,bus=vser0.0,chardev={QGA_CHARDEV_ID},name={QGA_PORT_NAME},id=qgaport0",
        # Entropy from the host: Python and systemd start without waiting for the pool.
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
    ]  # fmt: skip
    if config.cdrom:
        argv += [
            "-drive", "if=none,id=cd0,media=cdrom,readonly=on",
            "-device", f"ide-cd,drive=cd0,bus=ide.1,id={CDROM_DEVICE_ID}",
        ]  # fmt: skip
    if config.network:
        # restrict=on: the guest gets DHCP and nothing else; it cannot reach
        # the host's network or the outside world.
        argv += [
            "-netdev", "user,id=net0,restrict=on",
            "-device", "virtio-net-pci,netdev=net0,id=nic0",
        ]  # fmt: skip
    if config.vsock_cid is not None:
        argv += ["-device", f"vhost-vsock-pci,guest-cid={config.vsock_cid},id=vsock0"]
    if config.no_reboot:
        argv.append("-no-reboot")
    argv += list(config.extra_args)
    return argv


def _root_disk(config: MachineConfig, overlay: Path) -> Sequence[str]:
    boot = config.boot
    if config.disk_mode is DiskMode.OVERLAY:
        drive = (
            f"file={qemu_escape(str(overlay))},format=qcow2,if=none,id={ROOT_DRIVE_ID},"
            "discard=unmap"
        )
    else:
        drive = (
            f"file={qemu_escape(str(boot.disk))},format={boot.disk_format},if=none,"
            f"id={ROOT_DRIVE_ID},snapshot=on"
        )
    return ["-drive", drive, "-device", f"virtio-blk-pci,drive={ROOT_DRIVE_ID},id=rootdisk"]
