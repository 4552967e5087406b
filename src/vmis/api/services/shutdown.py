"""API routes of Shutdown: Stop-VM and Restart-VM through the guest."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from vmis.api.context import manager_of
from vmis.services.shutdown import MAX_REASON_BYTES, PowerAction
from vmis.services.shutdown.host import ShutdownHost

__all__ = ["router"]

router = APIRouter(prefix="/v1")


class PowerRequest(BaseModel):
    vms: list[str] = Field(min_length=1)
    force: bool = False
    reason: str = Field(default="requested by the host", max_length=MAX_REASON_BYTES)
    #: seconds to wait until the VM is down (and, for a restart, back)
    timeout: float = Field(default=300.0, gt=0, le=3600)
    turn_off: bool = False
    #: -ComputerName (docs/fleet.md): another host's VM gets a request to its owner
    computer: list[str] | None = None


async def _power(request: Request, body: PowerRequest, action: PowerAction,
                 name: str) -> list[dict[str, Any]]:
    manager = manager_of(request)

    async def here(names: list[str]) -> list[dict[str, Any]]:
        return await manager.service(ShutdownHost).power_vms(
            names, action, force=body.force, reason=body.reason, timeout=body.timeout,
            cut_power=body.turn_off)

    params = {"force": body.force, "reason": body.reason, "timeout": body.timeout,
              "turn_off": body.turn_off}
    return await manager.fleet.across(name, body.vms, body.computer, params, local=here)


@router.post("/power/stop")
async def stop(request: Request, body: PowerRequest) -> list[dict[str, Any]]:
    return await _power(request, body, PowerAction.POWEROFF, "stop")


@router.post("/power/restart")
async def restart(request: Request, body: PowerRequest) -> list[dict[str, Any]]:
    return await _power(request, body, PowerAction.REBOOT, "restart")
