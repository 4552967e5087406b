"""Guests that run qemu-ga, the QEMU guest agent, managed without the vmis agent.

Most Linux (and many Windows) VMs on KVM run qemu-ga already; libvirt and
Proxmox drive it. :class:`QemuGa` is the guest kind ``qemu-ga``
(``vmis vm add NAME -Channel ADDRESS -GuestAgent qemu-ga``): it dials the
host end of the ``org.qemu.guest_agent.0`` port (a QEMU chardev socket, or
vsock where qemu-ga listens on it), hunts for qemu-ga's attention
(guest-sync-delimited, :mod:`.codec`), reads what it offers (guest-info,
:mod:`.offers`) and returns a :class:`~.link.QemuGaLink`, which carries the
integration services out with qemu-ga's commands (docs/guest-links.md).

Modules: :mod:`.codec` the sans-IO protocol, :mod:`.connection` its asyncio
end, :mod:`.offers` what each service needs, :mod:`.link` the link, and one
translation per service (:mod:`.heartbeat`, :mod:`.kvp`, :mod:`.shutdown`,
:mod:`.timesync`, :mod:`.vss`, :mod:`.fcopy`, :mod:`.vmsession`) with the
helpers :mod:`.guest_exec` and :mod:`.guest_files`.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

from vmis.errors import ChannelError, RemoteServiceError, RequestTimeout
from vmis.links.qemu_ga.connection import QgaConnection
from vmis.links.qemu_ga.guest_files import read_small_file
from vmis.links.qemu_ga.link import QemuGaLink
from vmis.links.qemu_ga.offers import FILES, AgentInfo
from vmis.services.host_half import VmRecord
from vmis.services.link import LinkEvents
from vmis.transport.address import parse_address
from vmis.transport.dial import dial_stream

__all__ = ["SYNC_TIMEOUT", "QemuGa", "QemuGaLink"]

#: seconds qemu-ga has to answer the hunt when a link opens
SYNC_TIMEOUT = 10.0
#: where a Linux guest's kernel tells its boot id (Restart-VM waits for a new one)
BOOT_ID = "/proc/sys/kernel/random/boot_id"


class QemuGa:
    """Opens links to guests that run qemu-ga (a :class:`~vmis.services.link.GuestKind`)."""

    name = "qemu-ga"

    def __init__(self) -> None:
        #: VM id -> qemu-ga file handles its links opened and did not close
        self._handles: dict[str, set[int]] = {}

    async def open(self, vm: VmRecord, events: LinkEvents) -> QemuGaLink:
        log = logging.getLogger("vmis.host").getChild(vm.name)
        conn = await dial_stream(parse_address(vm.channel), lambda: QgaConnection(vm.name, log))
        try:
            await conn.sync(SYNC_TIMEOUT)
            agent = AgentInfo.from_guest_info(await conn.call("guest-info"))
            if agent.enabled("guest-get-osinfo"):
                agent.osinfo = await conn.call("guest-get-osinfo")
            handles = self._handles.setdefault(vm.id, set())
            await _close_leftovers(conn, handles)
            facts = await _facts(conn, agent)
        except BaseException:
            conn.close()
            raise
        log.info("qemu-ga %s answers (%s)", agent.version, facts.get("os") or "?")
        return QemuGaLink(vm.name, events, conn, agent, facts=facts, handles=handles, log=log)


async def _close_leftovers(conn: QgaConnection, handles: set[int]) -> None:
    """Close the file handles an earlier link left open (qemu-ga keeps them)."""
    for handle in sorted(handles):
        # an error: closed already (qemu-ga restarted), nothing to do
        with contextlib.suppress(RemoteServiceError, RequestTimeout):
            await conn.call("guest-file-close", {"handle": handle})
    handles.clear()


async def _facts(conn: QgaConnection, agent: AgentInfo) -> dict[str, Any]:
    boot_id = None
    if agent.enabled(*FILES) and agent.posix:
        try:
            raw = await read_small_file(conn.call, BOOT_ID)
            boot_id = raw.decode().strip() if raw else None
        except (ChannelError, RemoteServiceError):
            boot_id = None
    return {
        "kind": "qemu-ga", "version": agent.label, "qga_version": agent.version,
        # Without a boot id each link counts as a new boot: Restart-VM then
        # waits for the link after the reboot, not for proof of one.
        "boot_id": boot_id or f"link-{uuid.uuid4()}",
        "os": agent.osinfo.get("pretty-name") or agent.osinfo.get("name"),
    }
