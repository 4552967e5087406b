"""Hypervisor operations on a running QEMU through its QMP socket.

:class:`QmpMonitor` wraps :class:`qemu.qmp.QMPClient` with the few commands
vmis needs (run state, pause, ACPI power-down, quit, block snapshot, CD-ROM
media) and maps its errors onto :class:`~vmis.errors.MonitorError`.
:func:`qmp_ready` asks, synchronously and without qemu.qmp, whether a QEMU
that is starting answers yet.

Each call opens its own QMP session and closes it again. A QMP chardev
serves one client at a time, and the host manager, the CLI and a test may
each want to ask a machine something from different processes; a session
held open by one of them would leave the others waiting for a greeting that
never comes. Opening a session over a Unix socket costs a few milliseconds.

Usage::

    monitor = QmpMonitor(Path("/run/vm1/qmp.sock"))
    if await monitor.status() == "running":
        await monitor.powerdown()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError as QmpConnectError
from qemu.qmp import ExecInterruptedError, ExecuteError, QMPClient, QMPError

from vmis.errors import MonitorError
from vmis.qemu.cmdline import AGENT_CHARDEV_ID, CDROM_DEVICE_ID, ROOT_DRIVE_ID

__all__ = ["BlockSnapshot", "QmpMonitor", "qmp_ready"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BlockSnapshot:
    """The result of an external block snapshot.

    After ``blockdev-snapshot-sync`` the guest writes to :attr:`active`, and
    :attr:`frozen` (the previous top image, now its read-only backing file)
    keeps the disk exactly as it was at the snapshot.
    """

    #: the block backend that was snapshotted
    device: str
    #: the image that holds the point-in-time state
    frozen: str
    #: the new overlay the guest writes to from now on
    active: Path


class QmpMonitor:
    """Commands to one QEMU process over its QMP Unix socket.

    :param path: the QMP socket.
    :param timeout: seconds allowed for connecting plus one command.
    """

    def __init__(self, path: Path, *, timeout: float = 10.0) -> None:
        #: the QMP socket
        self.path = path
        #: seconds allowed for connecting plus one command
        self.timeout = timeout

    # Section: sessions and raw commands

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[QMPClient]:
        """A negotiated QMP session, closed on exit.

        :raise MonitorError: When the socket cannot be reached or QEMU sends no greeting.
        """
        client = QMPClient(f"vmis:{self.path.parent.name}")
        try:
            async with asyncio.timeout(self.timeout):
                await client.connect(str(self.path))
        except (QmpConnectError, OSError, TimeoutError) as err:
            await _quiet_disconnect(client)
            reason = "no greeting in time" if isinstance(err, TimeoutError) else str(err)
            raise MonitorError(f"cannot reach QEMU's monitor at {self.path}: {reason}") from err
        try:
            yield client
        finally:
            await _quiet_disconnect(client)

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        """Run one QMP command in its own session.

        :param command: the QMP command, e.g. ``"query-status"``.
        :param arguments: its arguments.
        :return: the command's ``return`` value.
        :raise MonitorError: When QEMU cannot be reached, rejects the command or
            does not answer within :attr:`timeout`.
        """
        async with self.session() as client:
            return await self._execute(client, command, arguments)

    async def _execute(
        self, client: QMPClient, command: str, arguments: Mapping[str, object] | None
    ) -> Any:
        log.debug("--> %s %s", command, arguments or "")
        try:
            async with asyncio.timeout(self.timeout):
                reply = await client.execute(command, arguments)
        except ExecuteError as err:
            raise MonitorError(
                f"QEMU refused {command}: {err}", error_class=err.error_class
            ) from err
        except TimeoutError as err:
            raise MonitorError(f"QEMU did not answer {command} in {self.timeout:.0f} s") from err
        except (ExecInterruptedError, QMPError, OSError) as err:
            raise MonitorError(f"QMP session to {self.path} broke during {command}: {err}") from err
        log.debug("<-- %s", reply)
        return reply

    # Section: run state

    async def status(self) -> str:
        """QEMU's run state: ``"running"``, ``"paused"``, ``"shutdown"``, ``"prelaunch"``, ...

        These are QMP's ``RunState`` values; a stopped guest whose QEMU stays
        alive (``-no-shutdown``) reports ``"shutdown"``.
        """
        reply = await self.execute("query-status")
        return str(reply["status"])

    async def pause(self) -> None:
        """Stop the virtual CPUs (QMP ``stop``)."""
        await self.execute("stop")

    async def resume(self) -> None:
        """Resume the virtual CPUs (QMP ``cont``)."""
        await self.execute("cont")

    async def powerdown(self) -> None:
        """Press the ACPI power button (QMP ``system_powerdown``); the guest decides what to do."""
        await self.execute("system_powerdown")

    async def reset(self) -> None:
        """Hard-reset the machine, like the reset button (QMP ``system_reset``)."""
        await self.execute("system_reset")

    async def quit(self) -> None:
        """End QEMU at once, like pulling the plug (QMP ``quit``)."""
        async with self.session() as client:
            try:
                await self._execute(client, "quit", None)
            except MonitorError as err:
                # QEMU may close the socket before its reply is read; the
                # process is on its way out either way.
                if err.error_class is not None:
                    raise

    # Section: devices

    async def chardev_open(self, chardev: str = AGENT_CHARDEV_ID) -> bool:
        """Whether the guest holds the device behind a chardev open (``frontend-open``).

        For the agent's virtserialport this turns true when the agent in the
        guest opens ``/dev/virtio-ports/org.vmis.agent.0``.

        :raise MonitorError: When there is no such chardev.
        """
        reply = await self.execute("query-chardev")
        for entry in reply:
            if entry.get("label") == chardev:
                return bool(entry.get("frontend-open"))
        raise MonitorError(f"QEMU has no chardev {chardev!r}")

    async def insert_cdrom(self, image: Path, *, device: str = CDROM_DEVICE_ID) -> None:
        """Put a disc image into a CD-ROM drive, replacing any disc in it.

        :param image: an ISO 9660 image (or any raw file; the guest reads it as a disc).
        :param device: the drive's ``-device ... id=``.
        :raise MonitorError: When QEMU cannot open the image or has no such drive.
        """
        await self.execute(
            "blockdev-change-medium",
            # force: open the tray even if the guest locked it (Linux locks
            # the door while the disc is mounted).
            {"id": device, "filename": str(image), "format": "raw", "force": True},
        )

    async def eject_cdrom(self, *, device: str = CDROM_DEVICE_ID) -> None:
        """Eject the disc from a CD-ROM drive, even if the guest locked the tray."""
        await self.execute("eject", {"id": device, "force": True})

    async def cdrom_media(self, *, device: str = CDROM_DEVICE_ID) -> str | None:
        """The image file in a CD-ROM drive, or ``None`` when it is empty."""
        for entry in await self.execute("query-block"):
            if entry.get("qdev") in (device, f"/machine/peripheral/{device}/virtio-backend"):
                inserted = entry.get("inserted")
                return str(inserted["file"]) if inserted else None
        raise MonitorError(f"QEMU has no drive {device!r}")

    async def active_image(self, device: str = ROOT_DRIVE_ID) -> str:
        """The top image file of a block backend (``query-block``'s ``inserted.file``)."""
        for entry in await self.execute("query-block"):
            if entry.get("device") == device and entry.get("inserted"):
                return str(entry["inserted"]["file"])
        raise MonitorError(f"QEMU has no block device {device!r} with media")

    async def block_snapshot(self, target: Path, *, device: str = ROOT_DRIVE_ID) -> BlockSnapshot:
        """Take an external snapshot of a disk (``blockdev-snapshot-sync``).

        The call is atomic from the guest's point of view: QEMU drains the
        disk's requests, creates ``target`` as a qcow2 overlay on top of the
        current image and switches the guest's writes to it. Freeze the
        guest's file systems around it for a consistent (Production) checkpoint.

        :param target: the new overlay to create; must not exist.
        :param device: the block backend, ``root`` for the vmis root disk.
        :return: which image now holds the point-in-time state.
        :raise MonitorError: When QEMU cannot create the overlay.
        """
        if target.exists():
            raise MonitorError(f"snapshot file {target} already exists")
        async with self.session() as client:
            frozen = None
            for entry in await self._execute(client, "query-block", None):
                if entry.get("device") == device and entry.get("inserted"):
                    frozen = str(entry["inserted"]["file"])
            if frozen is None:
                raise MonitorError(f"QEMU has no block device {device!r} with media")
            await self._execute(
                client,
                "blockdev-snapshot-sync",
                {"device": device, "snapshot-file": str(target), "format": "qcow2"},
            )
        return BlockSnapshot(device=device, frozen=frozen, active=target)


def qmp_ready(path: Path, timeout: float) -> bool:
    """Whether QEMU answers a QMP command, which proves the machine was set up.

    The greeting alone proves nothing: QEMU may send it while it is still
    loading the kernel (and about to fail). Commands are only answered from
    the main loop, which runs once the machine exists.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            reader = sock.makefile("rb")
            if b'"QMP"' not in reader.readline():
                return False
            for command in (b"qmp_capabilities", b"query-status"):
                sock.sendall(b'{"execute": "' + command + b'"}\n')
                while True:
                    line = reader.readline()
                    if not line:
                        return False
                    if b'"return"' in line:
                        break
                    if b'"error"' in line:
                        return False
            return True
    except OSError:
        return False


async def _quiet_disconnect(client: QMPClient) -> None:
    """Close a session, ignoring errors: the socket may already be gone (after ``quit``)."""
    with contextlib.suppress(QMPError, OSError, EOFError, TimeoutError):
        async with asyncio.timeout(5):
            await client.disconnect()
