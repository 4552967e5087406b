"""API of the hypervisor operations (vmis.host.hypervisor), through the manager's backends.

``POST /v1/vms/start``           Start-VM: power on or resume, through QMP or libvirt
``POST /v1/setup-disk/insert``   Insert-SetupDisk: the setup disk into the CD-ROM drive
``POST /v1/setup-disk/eject``    Eject-SetupDisk
``POST /v1/qemu/vms``            vm create: a VM from the project's guest image (QEMU, or libvirt)

Stop-VM -TurnOff is ``POST /v1/power/stop`` with ``turn_off`` (vmis.api.services.shutdown).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from vmis.api.context import manager_of
from vmis.host.hypervisor import create_vm, eject_setup_disks, insert_setup_disks, start_vms

__all__ = ["router"]

router = APIRouter(prefix="/v1")


class VmsIn(BaseModel):
    vms: list[str] = Field(min_length=1)


class InsertIn(VmsIn):
    #: a disc image on the host; default: this host's setup disk
    path: str | None = None


class CreateIn(BaseModel):
    #: checked by create_vm (vmis.host.vmname), which says what is wrong with it
    name: str
    memory_mib: int = Field(default=512, ge=128, le=65536)
    cpus: int = Field(default=1, ge=1, le=64)
    clock_offset: float = Field(default=0.0, ge=-10 * 365 * 86400, le=10 * 365 * 86400)
    persistent: bool = False


@router.post("/vms/start")
async def start(request: Request, body: VmsIn) -> list[dict[str, Any]]:
    return await start_vms(manager_of(request), body.vms)


@router.post("/setup-disk/insert")
async def insert(request: Request, body: InsertIn) -> list[dict[str, Any]]:
    image = Path(body.path).absolute() if body.path else None
    return await insert_setup_disks(manager_of(request), body.vms, image)


@router.post("/setup-disk/eject")
async def eject(request: Request, body: VmsIn) -> list[dict[str, Any]]:
    return await eject_setup_disks(manager_of(request), body.vms)


@router.post("/qemu/vms", status_code=201)
async def create(request: Request, body: CreateIn) -> dict[str, Any]:
    return await create_vm(manager_of(request), body.name, memory_mib=body.memory_mib,
                           cpus=body.cpus, clock_offset=body.clock_offset,
                           persistent=body.persistent)
