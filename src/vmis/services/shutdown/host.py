"""Host half of Shutdown: Stop-VM and Restart-VM through the guest.

The request goes through the session's ``request``, so a service that is
disabled on the host, stopped or disabled in the guest, absent, or a VM
without contact fails with one clear :class:`ServiceUnavailable` before
anything is sent. Once the guest has accepted, the host waits (bounded) for
the VM to go: its channel closes when the guest's agent stops on the way
down. A restart then waits for a new agent (a new boot id) to connect.
Stop-VM -TurnOff cuts the power through the VM's hypervisor backend instead
(vmis.services.hypervisor).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

from vmis.errors import (
    ChannelClosed,
    RemoteServiceError,
    RequestTimeout,
    ServiceUnavailable,
    StateError,
    VmisError,
)
from vmis.protocol import encode_json
from vmis.services.catalog import by_key
from vmis.services.host_half import HostService, VmContext, VmPart
from vmis.services.hypervisor import known_state, turn_off
from vmis.services.link import GuestLink, NotificationHandler
from vmis.services.shutdown import PowerAction, ShutdownOp

__all__ = ["SERVICE", "ShutdownHost", "VmShutdown", "power_vm"]

SPEC = by_key("shutdown")
#: seconds the guest has to answer the request itself (it answers before acting)
ANSWER_TIMEOUT = 15.0
_POLL = 0.05


class VmShutdown(VmPart):
    """One VM's power requests: the guest's reports of power commands that failed."""

    def __init__(self, vm: VmContext) -> None:
        super().__init__(vm)
        self.failures: asyncio.Queue[str] = asyncio.Queue()

    def handlers(self) -> Mapping[int, NotificationHandler]:
        return {ShutdownOp.FAILED: self._on_failed}

    def _on_failed(self, payload: bytes) -> None:
        body = self.json_body(payload, "shutdown FAILED notification")
        if body is None:
            return
        error = str(body.get("error", "unknown error"))
        self.vm.log.error("the guest's %s failed: %s", body.get("action"), error)
        self.failures.put_nowait(error)


async def power_vm(session: VmContext, action: PowerAction, *, force: bool, reason: str,
                   timeout: float) -> dict[str, Any]:
    """Ask one guest to power off or restart and wait until it has.

    :return: ``{"VMName", "Action", "State", "Seconds", ...}``.
    :raise ServiceUnavailable: When Shutdown cannot take the request (the message
        says whether it is disabled on the host, stopped in the guest, or not answering).
    :raise StateError: When the guest refuses (blocked without -Force) or does not go
        down within *timeout*.
    """
    name = session.vm.name
    started = time.monotonic()
    session.require(SPEC)
    link = session.link
    old_boot = session.agent.get("boot_id")
    failures = session.part(ShutdownHost).failures
    while not failures.empty():
        failures.get_nowait()  # left over from an earlier attempt
    payload = encode_json({"action": action.value, "force": force, "reason": reason})
    try:
        await session.request(SPEC, ShutdownOp.SHUTDOWN, payload,
                              timeout=min(ANSWER_TIMEOUT, timeout))
    except RequestTimeout:
        raise ServiceUnavailable(
            f"{name}: the guest's Shutdown service did not answer within "
            f"{min(ANSWER_TIMEOUT, timeout):g} s") from None
    except ChannelClosed as exc:
        raise ServiceUnavailable(f"{name}: the channel closed before the guest answered "
                                 f"the {action.value} request ({exc})") from None
    except RemoteServiceError as exc:
        if exc.code == "busy":
            raise StateError(f"{name}: {exc}") from None
        raise
    session.log.info("%s accepted by the guest: %s", action.value, reason)
    assert link is not None
    deadline = started + timeout
    await _wait_gone(session, link, failures, deadline, timeout)
    gone_after = time.monotonic() - started
    result: dict[str, Any] = {
        "VMName": name, "Action": "Restart" if action is PowerAction.REBOOT else "Stop",
        "Force": force, "Reason": reason, "Kind": session.vm.kind, "Channel": session.vm.channel,
        "State": "Off", "Seconds": round(gone_after, 3),
    }
    if action is PowerAction.REBOOT:
        await _wait_back(session, old_boot, deadline, timeout)
        result["State"] = "Running"
        result["DownAfter"] = result["Seconds"]
        result["Seconds"] = round(time.monotonic() - started, 3)
    return result


async def _wait_gone(session: VmContext, link: GuestLink, failures: asyncio.Queue[str],
                     deadline: float, timeout: float) -> None:
    closed = asyncio.ensure_future(link.wait_closed())
    failed = asyncio.ensure_future(failures.get())
    try:
        done, _ = await asyncio.wait({closed, failed}, timeout=max(deadline - time.monotonic(),
                                                                   0),
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
        failed.cancel()
    if failed in done and not failed.cancelled():
        raise StateError(f"{session.vm.name}: the guest accepted but its power command "
                         f"failed: {failed.result()}")
    if closed not in done:
        raise StateError(f"{session.vm.name}: the guest accepted but is still running after "
                         f"{timeout:g} s (see the guest agent's log)")


async def _wait_back(session: VmContext, old_boot: Any, deadline: float,
                     timeout: float) -> None:
    session.reconnect_now()
    while True:
        if session.connected and session.agent.get("boot_id") != old_boot:
            return
        if time.monotonic() > deadline:
            raise StateError(f"{session.vm.name}: went down for the restart but did not come "
                             f"back within {timeout:g} s")
        # Dial again at once rather than after the backoff of the failed dials
        # made while the guest was rebooting.
        session.reconnect_now()
        await asyncio.sleep(_POLL * 4)


class ShutdownHost(HostService[VmShutdown]):
    """Shutdown on the host: Stop-VM and Restart-VM."""

    spec = SPEC
    needs = frozenset({ShutdownOp.SHUTDOWN})

    def new_part(self, vm: VmContext) -> VmShutdown:
        return VmShutdown(vm)

    async def power_vms(self, patterns: Sequence[str], action: PowerAction, *,
                        force: bool, reason: str, timeout: float,
                        cut_power: bool = False) -> list[dict[str, Any]]:
        """Stop-VM / Restart-VM on every matching VM, concurrently.

        *cut_power* (-TurnOff) cuts the power through the VM's hypervisor backend
        (vmis.services.hypervisor) instead of asking the guest. A guest that shut
        itself down is, where a hypervisor connection knows the VM, also waited
        for until the hypervisor says it is off (QEMU has exited), within the
        same *timeout*; a VM already off is left alone.

        :return: one record per VM, with ``"Error"`` set where it failed.
        :raise NotFoundError: When a name matches no VM.
        """
        sessions = self.host.match(patterns)

        async def one(session: VmContext) -> dict[str, Any]:
            try:
                if cut_power:
                    result = await turn_off(self.host, session, timeout)
                else:
                    result = await self._power_one(session, action, force=force, reason=reason,
                                                   timeout=timeout)
            except VmisError as exc:
                return {"VMName": session.vm.name, "Kind": session.vm.kind,
                        "Channel": session.vm.channel, "Error": str(exc),
                        "ErrorType": type(exc).__name__}
            result.setdefault("Error", None)
            return result

        return list(await asyncio.gather(*(one(s) for s in sessions)))

    async def _power_one(self, session: VmContext, action: PowerAction, *,
                         force: bool, reason: str, timeout: float) -> dict[str, Any]:
        started = time.monotonic()
        hypervisor = self.host.hypervisor_for(session.vm)
        state = await known_state(hypervisor, session) if hypervisor is not None else None
        if action is PowerAction.POWEROFF and state == "Off":
            return {"VMName": session.vm.name, "Action": "Stop", "Force": force,
                    "Reason": reason, "Kind": session.vm.kind, "Channel": session.vm.channel,
                    "State": "Off", "Seconds": 0.0, "AlreadyOff": True}
        result = await power_vm(session, action, force=force, reason=reason, timeout=timeout)
        if action is PowerAction.POWEROFF:
            session.powered_off = True
            if hypervisor is not None and state is not None:
                left = max(timeout - (time.monotonic() - started), 1.0)
                if not await hypervisor.wait_off(session.vm, left):
                    raise StateError(f"{session.vm.name}: the guest shut down but the "
                                     f"hypervisor still has it on after {timeout:g} s")
                result["PoweredOff"] = True
                result["Seconds"] = round(time.monotonic() - started, 3)
        return result


SERVICE = ShutdownHost
