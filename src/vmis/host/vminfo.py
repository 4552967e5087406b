"""Get-VM: a VM's state, heartbeat and integration services version (docs/status.md).

``Uptime`` is how long the guest's system has run, in seconds, as its
agent reported it at the handshake; for a guest that reports none (stock
qemu-ga, an agent not connected) how long the VM has been powered on, as
its hypervisor backend knows it (Hyper-V's own Uptime counts that); null
when neither can tell.

``IntegrationServicesState`` compares the guest agent's version (from its
handshake) with the version this host ships: ``Up to date`` when the guest's
is the same or newer, ``Update required`` when older, empty before any
contact (Hyper-V's ICStatus None/UpToDate/RequiresUpdate).
"""

from __future__ import annotations

import re
import time
from typing import Any

import vmis
from vmis.errors import VmisError
from vmis.host.session import VmSession
from vmis.services.catalog import by_key
from vmis.services.heartbeat.host import HeartbeatHost
from vmis.services.host_half import Contact
from vmis.services.hypervisor import Hypervisor, known_state
from vmis.services.status import VMHeartbeatStatus

__all__ = ["heartbeat_status", "integration_state", "parse_version", "uptime", "vm_row"]

UP_TO_DATE = "Up to date"
UPDATE_REQUIRED = "Update required"


def parse_version(text: str) -> tuple[int, ...]:
    """``"0.1.0"`` -> ``(0, 1, 0)``; pre-release suffixes are ignored."""
    release = re.split(r"[+-]", text, maxsplit=1)[0]
    return tuple(int(p) for p in re.findall(r"\d+", release)[:4])


def integration_state(agent_version: str | None, host_version: str = vmis.__version__) -> str:
    """``Up to date``, ``Update required``, or ``""`` when the guest's version is unknown."""
    if not agent_version:
        return ""
    if parse_version(agent_version) < parse_version(host_version):
        return UPDATE_REQUIRED
    return UP_TO_DATE


def heartbeat_status(session: VmSession, state: str) -> VMHeartbeatStatus | None:
    """Get-VM's Heartbeat: None when the VM is off."""
    if state == "Off":
        return None
    if not session.vm.enabled.get("heartbeat", True):
        return VMHeartbeatStatus.Disabled
    if not session.contacted:
        return VMHeartbeatStatus.NoContact
    hb = session.contact() if session.connected else Contact.LOST
    if hb == Contact.NO_CONTACT:
        return VMHeartbeatStatus.NoContact
    if hb == Contact.LOST:
        return VMHeartbeatStatus.LostCommunication
    if session.part(HeartbeatHost).health == "critical":
        return VMHeartbeatStatus.OkApplicationsCritical
    return VMHeartbeatStatus.OkApplicationsHealthy


def uptime(session: VmSession, state: str) -> int | None:
    """Get-VM's Uptime in whole seconds: 0 when the VM is off, None when unknown.

    The guest's agent says in its handshake how long its system has run
    (docs/protocol.md §3.2); without a link now the guest may have restarted
    since, so the host does not guess.
    """
    if state == "Off":
        return 0
    if not session.connected or session.booted_at is None:
        return None
    return max(0, int(time.monotonic() - session.booted_at))


async def _uptime(session: VmSession, state: str, hypervisor: Hypervisor | None) -> int | None:
    reported = uptime(session, state)
    if reported is not None or hypervisor is None or state not in ("Running", "Paused"):
        return reported
    try:
        started = await hypervisor.started_at(session.vm)
    except VmisError as exc:
        session.log.debug("%s cannot tell when the VM started: %s", hypervisor.name, exc)
        return None
    return None if started is None else max(0, int(time.time() - started))


async def vm_row(session: VmSession, hypervisor: Hypervisor | None) -> dict[str, Any]:
    """One Get-VM object.

    :param hypervisor: the backend that acts on the VM, if any: it tells the State.
    """
    state = await known_state(hypervisor, session) if hypervisor is not None else None
    if not state:
        if session.connected:
            state = "Running"
        elif session.powered_off:
            state = "Off"
        else:
            state = "Unknown"
    heartbeat = heartbeat_status(session, state)
    version = session.agent.get("version") if session.contacted else None
    # An agent vmis does not update (qemu-ga) is neither up to date nor behind.
    vmis_agent = session.vm.guest_agent == "vmis"
    hb_spec = by_key("heartbeat")
    primary = session.status(hb_spec, off=state == "Off").primary
    status = "Operating normally" if session.connected else (
        primary.description if primary is not None else "")
    return {
        "Name": session.vm.name,
        "Id": session.vm.id,
        "State": state,
        "Status": status,
        "Heartbeat": heartbeat.name if heartbeat is not None else None,
        "Uptime": await _uptime(session, state, hypervisor),
        "IntegrationServicesVersion": version,
        "IntegrationServicesState": integration_state(version) if vmis_agent else "",
        "HostIntegrationServicesVersion": vmis.__version__,
        "GuestAgent": session.vm.guest_agent,
    }
