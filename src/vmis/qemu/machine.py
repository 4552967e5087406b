"""One QEMU virtual machine: its process, and what is done with the guest running in it.

:class:`QemuMachine` is a :class:`~vmis.qemu.process.QemuProcess` (start,
record, attach, stop) that also waits on the guest (its serial console, its
boot, its agent's channel) and drives the machine through QMP
(:mod:`vmis.qemu.monitor`): run state, pause, power, CD-ROM, block snapshots.

Process control (:meth:`~QemuMachine.start`, :meth:`~QemuMachine.kill`) is
synchronous and quick; everything that waits on the guest or talks QMP is a
coroutine with a bounded timeout. A typical test::

    machine = QemuMachine("vm1", workdir, image)
    machine.start()
    try:
        await machine.wait_for_boot(timeout=120)
        await machine.wait_for_channel(timeout=60)
        ...  # talk to the agent over machine.paths.channel
        await machine.shutdown(timeout=30)
    finally:
        machine.cleanup()
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from vmis.errors import (
    MachineNotRunning,
    MachineStartError,
    MonitorError,
    RequestTimeout,
    StateError,
)
from vmis.qemu.cmdline import AGENT_CHARDEV_ID, DiskMode
from vmis.qemu.image._recipe import BOOT_MARKER, INITRAMFS_FAILURE
from vmis.qemu.monitor import BlockSnapshot, QmpMonitor
from vmis.qemu.process import QemuProcess

__all__ = ["BootReport", "QemuMachine"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BootReport:
    """What the guest announced when systemd reached multi-user.target."""

    #: wall-clock seconds from QEMU's start to the announcement (host side)
    seconds: float
    #: the guest kernel's uptime at the announcement
    guest_uptime: float
    #: systemd units that had failed by then
    failed_units: tuple[str, ...]


class QemuMachine(QemuProcess):
    """A QEMU virtual machine run by vmis: its process, its guest, its monitor.

    Constructed as :class:`~vmis.qemu.process.QemuProcess`.
    """

    async def shutdown(self, timeout: float = 60.0) -> bool:
        """Shut the guest down: ACPI power button, then QMP ``quit``, then SIGKILL.

        :param timeout: seconds the guest gets to power off by itself.
        :return: ``True`` if the guest powered off by itself.
        """
        if not self.is_running():
            return True
        try:
            await self.monitor.powerdown()
            if await self.wait_exit(timeout):
                return True
            log.warning(
                "%s ignored the power button for %.0f s; quitting", self.config.name, timeout
            )
            await self.monitor.quit()
        except MonitorError as err:
            log.warning("%s: %s; killing it", self.config.name, err)
        if not await self.wait_exit(5.0):
            self.kill()
        return False

    # Section: watching the guest

    def console_size(self) -> int:
        """Current length of the console log; pass it as ``since`` to wait for *new* output."""
        try:
            return self.paths.console.stat().st_size
        except FileNotFoundError:
            return 0

    async def wait_for_console(
        self, pattern: str | re.Pattern[str], timeout: float, *, since: int = 0
    ) -> re.Match[str]:
        """Wait until the guest's serial console shows a pattern.

        :param pattern: a regular expression, searched in the console text.
        :param timeout: seconds to wait.
        :param since: byte offset in the console log to search from.
        :return: the match.
        :raise MachineNotRunning: When QEMU exits first.
        :raise RequestTimeout: When the pattern does not show in time.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        text = ""
        while True:
            try:
                with self.paths.console.open("rb") as console:
                    console.seek(since)
                    text = console.read().decode("utf-8", "replace")
            except FileNotFoundError:
                text = ""
            match = regex.search(text)
            if match is not None:
                return match
            if not self.is_running():
                raise MachineNotRunning(
                    f"{self.config.name} stopped before its console showed {regex.pattern!r}; "
                    f"console: {self.paths.console}"
                )
            if time.monotonic() > deadline:
                raise RequestTimeout(
                    f"{self.config.name}: {regex.pattern!r} not on the console within "
                    f"{timeout:.0f} s; console: {self.paths.console}"
                )
            await asyncio.sleep(0.1)

    async def wait_for_boot(self, timeout: float = 120.0, *, since: int = 0) -> BootReport:
        """Wait until systemd in a vmis test image reaches multi-user.target.

        Relies on the image's announcement unit (:data:`~vmis.qemu.image._recipe.BOOT_MARKER`).

        :raise MachineStartError: When the initramfs reports it cannot mount the root.
        :raise MachineNotRunning: When QEMU exits first.
        :raise RequestTimeout: When the guest does not get there in time.
        """
        match = await self.wait_for_console(
            rf"{BOOT_MARKER} uptime=(\S+) failed=(\S+)|{INITRAMFS_FAILURE}: (.*)",
            timeout,
            since=since,
        )
        if match.group(3) is not None:
            raise MachineStartError(f"{self.config.name} cannot boot: {match.group(3).strip()}")
        failed = (
            () if match.group(2) == "none" else tuple(u for u in match.group(2).split(",") if u)
        )
        started = self._started_mono
        seconds = time.monotonic() - started if started is not None else float("nan")
        return BootReport(seconds=seconds, guest_uptime=float(match.group(1)), failed_units=failed)

    async def wait_for_channel(
        self, timeout: float = 60.0, *, chardev: str = AGENT_CHARDEV_ID
    ) -> Path:
        """Wait until the guest opens the agent's virtio-serial port.

        Before that, QEMU keeps host writes queued and drops guest writes
        (docs/real-vms.md, "Plain QEMU"), so a host waits here before its first request.

        While waiting, this holds a connection to the channel socket, as a
        host would. Without a host every read of the port is an end of file,
        and an agent that then closes the port and tries again later (vmis
        agents did, every half second, until they kept the port open across
        host sessions) has it open only for an instant per try: QEMU reported
        it open in 2 samples out of 100, so a wait polled without a host ended
        at a random moment, up to minutes late. The connection is closed
        before returning.

        :return: the host end of the channel (:attr:`MachinePaths.channel`).
        :raise MachineNotRunning: When QEMU exits first.
        :raise RequestTimeout: When the port is not opened in time.
        """
        deadline = time.monotonic() + timeout
        host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        host.setblocking(False)
        try:
            try:
                host.connect(str(self.paths.channel))
            except OSError as err:  # another host holds it, or QEMU is gone: poll anyway
                log.debug("%s: no probe connection to the channel: %s", self.config.name, err)
            while True:
                self._require_running()
                if await self.monitor.chardev_open(chardev):
                    return self.paths.channel
                if time.monotonic() > deadline:
                    raise RequestTimeout(
                        f"{self.config.name}: the guest did not open its agent port "
                        f"within {timeout:.0f} s"
                    )
                await asyncio.sleep(0.2)
        finally:
            host.close()

    # Section: hypervisor operations

    @property
    def monitor(self) -> QmpMonitor:
        """QMP commands to this machine."""
        return QmpMonitor(self.paths.qmp)

    def _require_running(self) -> None:
        if not self.is_running():
            raise MachineNotRunning(f"machine {self.config.name} is not running")

    async def status(self) -> str:
        """``"off"`` without a QEMU process, else QMP's run state (``"running"``, ``"paused"``)."""
        if not self.is_running():
            return "off"
        try:
            return await self.monitor.status()
        except MonitorError:
            if not self.is_running():  # exited between the two checks
                return "off"
            raise

    async def pause(self) -> None:
        """Freeze the virtual CPUs."""
        self._require_running()
        await self.monitor.pause()

    async def resume(self) -> None:
        """Resume the virtual CPUs."""
        self._require_running()
        await self.monitor.resume()

    async def powerdown(self) -> None:
        """Press the ACPI power button; returns at once (see :meth:`wait_exit`)."""
        self._require_running()
        await self.monitor.powerdown()

    async def quit(self, timeout: float = 10.0) -> None:
        """End QEMU through QMP ``quit``; wait for the process to go, kill it after ``timeout``."""
        self._require_running()
        await self.monitor.quit()
        if not await self.wait_exit(timeout):
            self.kill()

    async def insert_cdrom(self, image: Path) -> None:
        """Put a disc image into the CD-ROM drive (replacing any disc)."""
        self._require_running()
        if not self.config.cdrom:
            raise StateError(f"machine {self.config.name} has no CD-ROM drive")
        await self.monitor.insert_cdrom(image.absolute())

    async def eject_cdrom(self) -> None:
        """Eject the disc from the CD-ROM drive."""
        self._require_running()
        if not self.config.cdrom:
            raise StateError(f"machine {self.config.name} has no CD-ROM drive")
        await self.monitor.eject_cdrom()

    async def snapshot(self, target: Path | None = None) -> BlockSnapshot:
        """Take an external block snapshot of the root disk (``blockdev-snapshot-sync``).

        Only for :attr:`DiskMode.OVERLAY`: with ``snapshot=on`` QEMU's
        temporary overlay is deleted at exit, so there would be nothing to keep.
        The new overlay becomes the disk this machine boots from next time.

        :param target: the new overlay; default ``disk-<n>.qcow2`` in the work directory.
        :return: :attr:`BlockSnapshot.frozen` holds the point-in-time disk.
        :raise StateError: When the machine does not run with an overlay.
        """
        self._require_running()
        if self.config.disk_mode is not DiskMode.OVERLAY:
            raise StateError(f"machine {self.config.name}: block snapshots need disk_mode=overlay")
        if target is None:
            target = self.paths.workdir / f"disk-{len(self.disk_chain)}.qcow2"
        snap = await self.monitor.block_snapshot(target.absolute())
        self.disk_chain.append(target.absolute())
        self._save_state()
        return snap
