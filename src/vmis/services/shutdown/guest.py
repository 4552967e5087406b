"""Guest half of Shutdown: check, answer, then run the power command.

Without ``-Force`` the guest may refuse, as a locked Windows guest refuses
Hyper-V's non-forced shutdown (Msvm_ShutdownComponent 32781, "machine
locked"). The honest Linux counterpart is a logind **block inhibitor** on
``shutdown``: what a desktop session with unsaved work, a package upgrade
or a backup takes to say "not now". The power adapter lists them
(``Power.blockers()``); ``[shutdown] check_inhibitors = no`` turns the check
off, which is what Linux's own Hyper-V driver does (it always proceeds).
Logged-in users alone never block: systemd's poweroff logs them off.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vmis.errors import ServiceError, VmisError
from vmis.protocol import RequestReceived, ServiceId, decode_json, encode_json
from vmis.services.catalog import by_key
from vmis.services.guest_half import GuestContext, GuestService
from vmis.services.shutdown import ACT_DELAY, MAX_REASON_BYTES, PowerAction, ShutdownOp

__all__ = ["SERVICE", "ShutdownService"]


class ShutdownService(GuestService):
    """vmicshutdown: orderly power-off and restart requested by the host."""

    spec = by_key("shutdown")

    def __init__(self, ctx: GuestContext) -> None:
        super().__init__(ctx)
        self.handlers[ShutdownOp.SHUTDOWN] = self._shutdown
        #: the action accepted and not yet carried out, if any
        self.pending: PowerAction | None = None

    @property
    def power(self) -> Any:
        """The power adapter (vmis.guest.adapters.Power)."""
        power = self.ctx.adapters.get("power")
        if power is None:
            raise ServiceError("failed", "this agent has no power adapter")
        return power

    async def _shutdown(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        try:
            action = PowerAction(str(body.get("action")))
        except ValueError:
            raise ServiceError("bad-request", f"unknown power action {body.get('action')!r}; "
                               "use poweroff or reboot") from None
        force = bool(body.get("force", False))
        reason = str(body.get("reason") or "requested by the host")
        try:
            size = len(reason.encode())
        except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the json): no text
            raise ServiceError("bad-request", "the reason is not valid text") from None
        if size > MAX_REASON_BYTES:
            raise ServiceError("too-large", f"the reason is longer than {MAX_REASON_BYTES} bytes")
        if self.pending is not None:
            # Msvm_ShutdownComponent 32782: shutdown in progress
            raise ServiceError("busy", f"a {self.pending.value} is already in progress")
        power = self.power
        if not force and getattr(self.ctx.config, "check_inhibitors", True):
            blockers = await asyncio.to_thread(power.blockers)
            if blockers:
                raise ServiceError(
                    "busy", "the guest refuses to shut down: blocked by "
                    + "; ".join(blockers) + " (use -Force to shut down anyway)")
        self.pending = action
        self.log.warning("%s requested by the host%s: %s", action.value,
                         " (forced)" if force else "", reason)
        self.spawn(self._act(action, reason), action.value)
        return encode_json({"action": action.value, "force": force, "accepted": True})

    async def _act(self, action: PowerAction, reason: str) -> None:
        # The answer is written when the handler returns; act only after it.
        await asyncio.sleep(ACT_DELAY)
        try:
            if action is PowerAction.REBOOT:
                self.power.reboot(reason)
            else:
                self.power.poweroff(reason)
        except (VmisError, OSError) as exc:
            self.log.error("%s failed: %s", action.value, exc)
            self.pending = None
            self.ctx.notify(ServiceId.SHUTDOWN, ShutdownOp.FAILED,
                            encode_json({"action": action.value, "error": str(exc)}))


#: the agent offers the service this module defines (vmis.guest.services)
SERVICE = ShutdownService
