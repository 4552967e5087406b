"""API routes of Time Synchronization: Get-VMTimeSync and Set-VMTimeSync."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from vmis.api.context import manager_of
from vmis.services.timesync.host import MAX_INTERVAL_MS, MIN_INTERVAL_MS, TimeSyncHost

__all__ = ["router"]

router = APIRouter(prefix="/v1")


class TimeSyncPatch(BaseModel):
    vms: list[str] = Field(min_length=1)
    interval_ms: int = Field(ge=MIN_INTERVAL_MS, le=MAX_INTERVAL_MS)


@router.get("/timesync")
async def get_timesync(request: Request,
                       vm: Annotated[list[str], Query()]) -> list[dict[str, Any]]:
    return manager_of(request).service(TimeSyncHost).rows(vm)


@router.patch("/timesync")
async def set_timesync(request: Request, patch: TimeSyncPatch) -> list[dict[str, Any]]:
    return manager_of(request).service(TimeSyncHost).set_interval(patch.vms, patch.interval_ms)
