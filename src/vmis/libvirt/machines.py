"""``vmis vm create`` through libvirt: a persistent domain from the project's guest image.

The domain's files live where the QEMU backend keeps its machines',
``<data dir>/machines/<name>``: a qcow2 overlay on the cached image
(``disk.qcow2``), the agent channel's socket (``agent.sock``) and the serial
console (``console.log``). Without -Persistent the disk is ``<transient/>``:
libvirt drops the guest's writes when the domain stops.

QEMU under libvirt may run as another user (Debian: ``libvirt-qemu``), and
libvirt gives it the files it uses but not the directories above them. The
data directory is private to the manager's user (vmis.host.private) and the
image cache is in its home, so before defining a domain on this machine,
:func:`unreachable_directory` checks with libvirt's own account of that user
(its capabilities' DAC label) that QEMU can reach them, and says so in one
line when it cannot, instead of a domain that fails at Start-VM.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vmis.errors import ConfigError, StateError
from vmis.libvirt.connection import LibvirtConnection, load_libvirt
from vmis.libvirt.domainxml import NewDomain, domain_xml
from vmis.qemu.cmdline import MachinePaths
from vmis.qemu.hypervisor import machines_dir
from vmis.qemu.process import create_overlay
from vmis.services.hypervisor import NewMachine

__all__ = ["MachineMaker", "qemu_user", "unreachable_directory"]


def qemu_user(capabilities: str) -> tuple[int, int] | None:
    """The uid and gid libvirt runs QEMU as, from its capabilities XML (the DAC
    security model's base label), or None when it does not say."""
    try:
        root = ET.fromstring(capabilities)
    except ET.ParseError:
        return None
    for model in root.iterfind("host/secmodel"):
        if model.findtext("model") != "dac":
            continue
        for label in model.iterfind("baselabel"):
            if label.get("type") in ("qemu", "kvm") and label.text:
                uid, _, gid = label.text.partition(":")
                try:
                    return int(uid.lstrip("+")), int(gid.lstrip("+"))
                except ValueError:
                    return None
    return None


def unreachable_directory(path: Path, uid: int, gid: int) -> Path | None:
    """The first directory on the way to *path* that user *uid* (group *gid*) cannot
    enter, or None when it can reach it."""
    if uid == 0:
        return None
    for directory in reversed(path.absolute().parents):
        if not directory.exists():
            break  # made later, by this user's umask
        info = directory.stat()
        if info.st_uid == uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return directory
    return None


class MachineMaker:
    """Defines the domains ``vmis vm create`` asks a libvirt backend for, and undefines
    them again when they could not be registered."""

    def __init__(self, connection: LibvirtConnection, data_dir: Path | None) -> None:
        self.connection = connection
        self.data_dir = data_dir
        #: name -> (domain UUID, whether create() made the work directory)
        self._made: dict[str, tuple[str, bool]] = {}

    async def create(self, name: str, *, memory_mib: int, cpus: int, clock_offset: float,
                     persistent: bool) -> NewMachine:
        """Define the domain *name*, off.

        :raise StateError: When libvirt has a domain of that name, its work
            directory holds an earlier VM's files, or libvirt's QEMU cannot reach them.
        :raise ConfigError: For a work directory path too long for sockets, or
            a manager without a data directory.
        :raise ImageBuildError: When the guest image cannot be built.
        """
        if self.data_dir is None:
            raise ConfigError("this host manager keeps no files (no data directory) for a "
                              "VM's disk")
        workdir = machines_dir(self.data_dir) / name
        paths = MachinePaths(workdir)
        paths.check()
        if paths.overlay.exists() or paths.state.exists():
            raise StateError(f"{workdir} holds the files of an earlier VM named {name!r}; "
                             "remove that directory or choose another name")
        await self.connection.call(lambda conn: self._refuse_taken(conn, name),
                                   f"{name}: look up")
        from vmis.qemu.image.layers import ensure_agent_image

        image = await asyncio.to_thread(ensure_agent_image)
        boot = image.boot_spec()
        await self.connection.call(lambda conn: self._check_reach(conn, workdir, boot.disk),
                                   f"{name}: capabilities")
        made_dir = not workdir.exists()
        workdir.mkdir(parents=True, exist_ok=True)
        xml = domain_xml(NewDomain(
            name=name, boot=boot, disk=paths.overlay, transient_disk=not persistent,
            channel=paths.channel, console=paths.console, memory_mib=memory_mib, cpus=cpus,
            clock_offset=clock_offset))
        try:
            await asyncio.to_thread(create_overlay, boot, paths.overlay)
            uuid = await self.connection.call(lambda conn: conn.defineXML(xml).UUIDString(),
                                              f"{name}: define the domain")
        except BaseException:
            if made_dir:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                paths.overlay.unlink(missing_ok=True)
            raise
        self._made[name] = (uuid, made_dir)
        return NewMachine(f"unix:{paths.channel}", None, "libvirt", {
            "WorkDir": str(workdir), "Image": str(image.directory),
            "LibvirtUri": self.connection.uri, "LibvirtDomain": uuid,
        }, libvirt_uri=self.connection.uri, libvirt_domain=uuid)

    def _refuse_taken(self, conn: Any, name: str) -> None:
        libvirt = load_libvirt()
        try:
            conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise
        raise StateError(f"libvirt at {self.connection.uri} already has a domain named "
                         f"{name!r}; register it with: vmis vm add -Libvirt {name}")

    def _check_reach(self, conn: Any, workdir: Path, image: Path) -> None:
        if urlsplit(self.connection.uri).hostname:
            return  # a libvirtd on another machine: these paths are not its
        user = qemu_user(conn.getCapabilities())
        if user is None:
            return
        for path in (workdir / "disk.qcow2", image):
            blocked = unreachable_directory(path, *user)
            if blocked is not None:
                mode = stat.S_IMODE(os.stat(blocked).st_mode)
                raise StateError(
                    f"libvirt at {self.connection.uri} runs QEMU as uid {user[0]}, which cannot "
                    f"enter {blocked} (mode {mode:o}); run that libvirtd's QEMU as root "
                    "(user = \"root\" in qemu.conf) or create the VM with the QEMU backend "
                    "(docs/real-vms.md)")

    async def discard(self, name: str) -> None:
        """Undefine the domain :meth:`create` defined, and its files if it made them."""
        made = self._made.pop(name, None)
        if made is None:
            return
        uuid, made_dir = made
        await self.connection.call(lambda conn: conn.lookupByUUIDString(uuid).undefine(),
                                   f"{name}: undefine")
        workdir = machines_dir(self.data_dir or Path()) / name
        if made_dir:
            shutil.rmtree(workdir, ignore_errors=True)
