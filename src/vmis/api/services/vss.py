"""API routes of VSS: checkpoints, their history, snapshot settings (docs/services/vss.md §5)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from vmis.api.access import require
from vmis.api.context import manager_of
from vmis.api.guard import note
from vmis.host.accounts import Role
from vmis.services.vss import MAX_FREEZE_TIMEOUT, SnapshotType
from vmis.services.vss.host import VssHost

__all__ = ["router"]

router = APIRouter(prefix="/v1")


class CheckpointIn(BaseModel):
    #: the checkpoint's name (default: Hyper-V's "VM - (date - time)")
    name: str | None = Field(default=None, min_length=1, max_length=255)
    snapshot_type: SnapshotType = SnapshotType.PRODUCTION
    #: a snapshot command for this checkpoint only
    snapshot_command: str | None = Field(default=None, min_length=1)
    #: seconds the guest may stay frozen (at most the guest's own limit)
    freeze_timeout: float | None = Field(default=None, gt=0, le=MAX_FREEZE_TIMEOUT)


class VssSettingsIn(BaseModel):
    snapshot_command: str | None = None
    clear: bool = False
    snapshot_timeout: float | None = Field(default=None, gt=0, le=86400)


@router.post("/vms/{name}/checkpoints")
async def checkpoint(request: Request, name: str, body: CheckpointIn) -> dict[str, Any]:
    """Freeze, snapshot, thaw; a failed checkpoint is a report with Status Failed."""
    if body.snapshot_command is not None:
        # the command runs on the host, as the manager's user: not an Operator's to give
        require(request, Role.ADMINISTRATOR, "a checkpoint's own -SnapshotCommand")
    report = await manager_of(request).service(VssHost).checkpoint(
        name, name=body.name, snapshot_type=body.snapshot_type, command=body.snapshot_command,
        freeze_timeout=body.freeze_timeout,
    )
    if report.status == "Failed":
        note(request, failure=report.error or "the checkpoint failed")
    return report.to_json()


@router.get("/checkpoints")
async def checkpoints(request: Request,
                      vm: Annotated[list[str], Query()]) -> list[dict[str, Any]]:
    return manager_of(request).service(VssHost).history(vm)


@router.get("/vms/{name}/vss")
async def vss_status(request: Request, name: str) -> dict[str, Any]:
    return await manager_of(request).service(VssHost).status(name)


@router.patch("/vms/{name}/vss")
async def vss_settings(request: Request, name: str, body: VssSettingsIn) -> dict[str, Any]:
    return manager_of(request).service(VssHost).set_settings(
        name, command=body.snapshot_command, clear=body.clear, timeout=body.snapshot_timeout,
    )
