"""What a request may ask of a VM's owner: one :class:`Action` per kind of request.

An action applies a request on the host that owns the VM, through the same
code as that host's own command (Enable-VMIntegrationService's push, KVP's
delivery, Stop-VM, the update), and answers with the same entries; a
request it could not apply (yet) answers with :func:`pending_entries` or
:func:`failed_entries`, which have the same shape.

The desired state such a request brings to the owner's attention is in the
store already: ``service_settings`` for Enable-/Disable-VMIntegrationService,
``kvp_pending`` for Set-/Remove-VMKvp. The owner applies what the store says
when the request is applied, not what the request said when written, so
of two changes made one after the other the last one wins everywhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vmis.errors import VmisError
from vmis.host.session import SET_SERVICE_TIMEOUT
from vmis.services.catalog import match_host_names
from vmis.services.kvp.host import REQUEST_TIMEOUT, KvpHost
from vmis.services.shutdown import PowerAction
from vmis.services.shutdown.host import ShutdownHost

if TYPE_CHECKING:
    from vmis.host.manager import HostManager
    from vmis.host.session import VmSession

__all__ = ["ACTIONS", "GUEST_WAIT", "Action", "failed_entries", "pending_entries"]

#: seconds an owner that just started gives a VM's guest to connect before it
#: applies a request that needs the guest (one that came while the owner was down)
GUEST_WAIT = 30.0
#: seconds a caller waits beyond the time the action itself may take
MARGIN = 10.0

Params = Mapping[str, Any]
Entries = list[dict[str, Any]]


@dataclass(frozen=True)
class Action:
    """One kind of request."""

    name: str
    #: apply it on the owner: the entries its own command would answer
    apply: Callable[[HostManager, VmSession, Params], Awaitable[Entries]]
    #: the entries of a request that was not applied, before their outcome
    entries: Callable[[str, Params], Entries]
    #: seconds the caller waits for the outcome
    wait: Callable[[Params], float]
    #: whether the owner first waits (:data:`GUEST_WAIT`) for a guest it never reached
    needs_guest: Callable[[Params], bool] = lambda params: False


def pending_entries(action: Action, vm_name: str, params: Params, reason: str) -> Entries:
    """A request kept for later (its host down, or slow): ``Pending`` and why."""
    return [{**entry, "Error": None, "ErrorType": None, "Pending": True, "PendingReason": reason}
            for entry in action.entries(vm_name, params)]


def failed_entries(action: Action, vm_name: str, params: Params, error: VmisError) -> Entries:
    """A request that failed as a whole (its VM gone, moved, or not answering)."""
    return [{**entry, "Error": str(error), "ErrorType": type(error).__name__, "Pending": False}
            for entry in action.entries(vm_name, params)]


# Section: Enable-/Disable-VMIntegrationService


async def _services(manager: HostManager, session: VmSession, params: Params) -> Entries:
    session.update(manager.store.get_vm_by_id(session.vm.id))  # the store's word is the last
    return await manager.push_settings([session], match_host_names(params["names"]))


def _services_entries(vm_name: str, params: Params) -> Entries:
    return [{"VMName": vm_name, "Name": spec.host_name, "Enabled": params["enabled"],
             "Applied": False} for spec in match_host_names(params["names"])]


# Section: Set-/Remove-VMKvp


async def _kvp(manager: HostManager, session: VmSession, params: Params) -> Entries:
    part = session.part(KvpHost)
    part.recount()
    return await part.delivered([(w["Id"], w["Key"], w["Value"]) for w in params["writes"]])


def _kvp_entries(vm_name: str, params: Params) -> Entries:
    return [{"VMName": vm_name, "Pool": "External", "Key": w["Key"], "Value": w["Value"],
             "Delivered": False, "Reason": ""} for w in params["writes"]]


# Section: Stop-VM, Restart-VM


def _power(action: PowerAction) -> Callable[[HostManager, VmSession, Params], Awaitable[Entries]]:
    async def apply(manager: HostManager, session: VmSession, params: Params) -> Entries:
        return await manager.service(ShutdownHost).power_vms(
            [session.vm.name], action, force=params["force"], reason=params["reason"],
            timeout=params["timeout"], cut_power=params["turn_off"])
    return apply


def _power_entries(verb: str) -> Callable[[str, Params], Entries]:
    def entries(vm_name: str, params: Params) -> Entries:
        return [{"VMName": vm_name, "Action": "TurnOff" if params["turn_off"] else verb,
                 "Force": params["force"]}]
    return entries


# Section: Update-VMIntegrationServices


async def _update(manager: HostManager, session: VmSession, params: Params) -> Entries:
    import asyncio

    from vmis.host.update import Bundle, update_vms

    # the owner's own agent: a bundle file named on the caller's host is not here
    bundle = await asyncio.to_thread(Bundle.current)
    return await update_vms(manager, [session.vm.name], bundle, lambda line: None,
                            timeout=params["timeout"])


async def _rollback(manager: HostManager, session: VmSession, params: Params) -> Entries:
    import asyncio

    from vmis.errors import StateError
    from vmis.host.update import Bundle, update_vms

    # a staged rollout's unhealthy batch (vmis.host.rollout): back to the version the
    # VM had, which this host can give only when it is its own agent's
    bundle = await asyncio.to_thread(Bundle.current)
    if bundle.version != params["version"]:
        raise StateError(f"{session.vm.name}: cannot roll back to {params['version']}: host "
                         f"{manager.fleet.me.name} has the agent {bundle.version} only")
    return await update_vms(manager, [session.vm.name], bundle, lambda line: None,
                            timeout=params["timeout"])


def _update_entries(vm_name: str, params: Params) -> Entries:
    return [{"VMName": vm_name, "From": None, "To": None, "Result": "pending", "Version": None,
             "Seconds": None}]


# Section: Move-VM


async def _move(manager: HostManager, session: VmSession, params: Params) -> Entries:
    return [await manager.fleet.hand_over(session, params["destination"], params["changes"])]


def _move_entries(vm_name: str, params: Params) -> Entries:
    return [{"VMName": vm_name, "DestinationHost": params["destination"], "Moved": False}]


ACTIONS: dict[str, Action] = {a.name: a for a in (
    Action("services", _services, _services_entries, lambda p: SET_SERVICE_TIMEOUT + MARGIN),
    Action("kvp", _kvp, _kvp_entries, lambda p: REQUEST_TIMEOUT * 2 + MARGIN),
    Action("stop", _power(PowerAction.POWEROFF), _power_entries("Stop"),
           lambda p: float(p["timeout"]) + MARGIN, needs_guest=lambda p: not p["turn_off"]),
    Action("restart", _power(PowerAction.REBOOT), _power_entries("Restart"),
           lambda p: float(p["timeout"]) + MARGIN, needs_guest=lambda p: not p["turn_off"]),
    Action("update", _update, _update_entries, lambda p: float(p["timeout"]) + 150.0,
           needs_guest=lambda p: True),
    Action("rollback", _rollback, _update_entries, lambda p: float(p["timeout"]) + 150.0,
           needs_guest=lambda p: True),
    Action("move", _move, _move_entries, lambda p: 20.0),
)}
