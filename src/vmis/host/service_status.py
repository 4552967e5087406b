"""Get-VMIntegrationService's status of one service of one VM (docs/status.md).

One place for every kind of guest: the row follows from what the VM's
session knows (contact, the link's state, its liveness) and what the link
offers of the service (vmis.services.link.ServiceOffer), then from what the
service's own host half adds (``VmPart.refine_status``: Heartbeat's beats and
application health). The first line of docs/status.md's table that applies
wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from vmis.services.catalog import ServiceSpec
from vmis.services.host_half import Contact, VmPart, VmRecord
from vmis.services.link import ServiceOffer
from vmis.services.status import OperationalStatus, ServiceStatus

__all__ = ["SessionFacts", "out_of_date", "service_status"]


class SessionFacts(Protocol):
    """What the status is made from (a vmis.host.session.VmSession)."""

    vm: VmRecord
    contacted: bool
    connected: bool
    last_error: str
    mismatch: str

    @property
    def agent(self) -> Mapping[str, Any]: ...

    @property
    def absent(self) -> Mapping[str, str]: ...

    @property
    def guest(self) -> Mapping[str, ServiceOffer]: ...

    def contact(self, now: float | None = None) -> str: ...


def service_status(session: SessionFacts, spec: ServiceSpec, part: VmPart | None,
                   off: bool = False) -> ServiceStatus:
    """The row of *spec* for the session's VM.

    :param part: the VM's part of the service's host half, if it has one.
    :param off: the VM is known to be off: no status, as Hyper-V shows an Off VM.
    """
    vm = session.vm
    enabled = vm.enabled.get(spec.key, spec.default_enabled)
    name = spec.host_name or spec.guest_name
    row: dict[str, Any] = {"vm_name": vm.name, "vm_id": vm.id, "name": name,
                           "enabled": enabled}
    guest = session.guest.get(spec.key)
    facts: dict[str, Any] = {}
    if guest is not None:
        facts = {"guest_state": guest.state, "guest_startup": guest.startup,
                 "version": ".".join(map(str, guest.version)) if guest.version else None}
    elif session.contacted:
        facts = {"guest_state": "absent"}
    if off and not session.connected:
        return ServiceStatus(**row, primary=None, **facts)
    if not enabled:
        return ServiceStatus(**row, primary=OperationalStatus.OK, **facts)
    primary, reason = _primary(session, spec, guest)
    secondary = None
    if part is not None and primary in (OperationalStatus.OK, OperationalStatus.DEGRADED):
        primary, secondary, reason = part.refine_status(primary, reason)
    return ServiceStatus(**row, primary=primary, secondary=secondary, reason=reason, **facts)


def out_of_date(session: SessionFacts, spec: ServiceSpec, guest: ServiceOffer | None) -> str:
    """Why the guest cannot serve *spec*: its agent's limit, or the vmis version it needs."""
    if guest is not None and guest.limit:
        return guest.limit
    if guest is None and spec.key in session.absent:
        return session.absent[spec.key]
    label = spec.host_name or spec.guest_name
    agent = session.agent.get("version", "unknown")
    needs = (f"update its integration services to vmis {spec.since} or newer "
             "(Update-VMIntegrationServices)")
    if guest is None:
        return f"the guest agent {agent} does not offer {label}; {needs}"
    offered = f" (it speaks {_versions(guest.offers)})" if guest.offers else ""
    return (f"the guest agent {agent} speaks no version of {label} this host speaks "
            f"({_versions(spec.versions)}){offered}; {needs}")


def _primary(session: SessionFacts, spec: ServiceSpec,
             guest: ServiceOffer | None) -> tuple[OperationalStatus, str]:
    if not session.contacted:
        return OperationalStatus.NO_CONTACT, session.last_error
    if session.mismatch:
        return OperationalStatus.PROTOCOL_MISMATCH, session.mismatch
    if not session.connected:
        return OperationalStatus.LOST_COMMUNICATION, session.last_error
    if session.contact() == Contact.LOST:
        return OperationalStatus.LOST_COMMUNICATION, "heartbeats stopped"
    if guest is None:
        return OperationalStatus.NO_CONTACT, out_of_date(session, spec, guest)
    if guest.version is None:
        return OperationalStatus.PROTOCOL_MISMATCH, out_of_date(session, spec, guest)
    if guest.startup == "disabled" and guest.state != "running":
        return OperationalStatus.ERROR, guest.limit or (
            f"{spec.guest_name} is disabled in the guest (StartupType Disabled); "
            "the host cannot start it"
        )
    if guest.state != "running":
        return OperationalStatus.NO_CONTACT, f"{spec.guest_name} is stopped in the guest"
    if guest.version < spec.versions[0]:
        return OperationalStatus.DEGRADED, (
            f"guest speaks version {'.'.join(map(str, guest.version))}, "
            f"the host {'.'.join(map(str, spec.versions[0]))}"
        )
    return OperationalStatus.OK, ""


def _versions(versions: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> str:
    return ", ".join(".".join(map(str, v)) for v in versions)
