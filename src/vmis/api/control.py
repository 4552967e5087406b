"""The control plane's routes: the VM registry, Enable-/Disable-VMIntegrationService,
and the fleet's hosts (Get-VMHost, Move-VM; docs/fleet.md).

Each route is a thin translation of one :class:`~vmis.host.manager.HostManager`
method. ``computer`` (a query parameter, or a request's member) is
``-ComputerName``: host names, ``localhost``, ``.`` or ``*``; without it a
route answers for this host alone.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

import vmis
from vmis.api.context import manager_of

__all__ = ["router"]


class VmIn(BaseModel):
    #: checked by the manager (vmis.host.vmname), which says what is wrong with it
    name: str
    channel: str
    qmp: str | None = None
    kind: str = "external"
    #: the guest agent it runs: "vmis" or "qemu-ga"
    guest_agent: str = "vmis"
    heartbeat_interval_ms: int | None = Field(default=None, ge=100, le=600_000)


class VmPatch(BaseModel):
    channel: str | None = None
    qmp: str | None = None
    guest_agent: str | None = None
    heartbeat_interval_ms: int | None = Field(default=None, ge=100, le=600_000)
    heartbeat_latency_ms: int | None = Field(default=None, ge=0, le=600_000)
    heartbeat_error_threshold: int | None = Field(default=None, ge=1, le=100)


class ServiceChange(BaseModel):
    vms: list[str] = Field(min_length=1)
    names: list[str] = Field(min_length=1)
    computer: list[str] | None = None


class MoveIn(BaseModel):
    destination: str
    #: the host the VM is on (-ComputerName; default this host)
    computer: str | None = None
    #: the VM's channel address on the destination, if not the one it has
    channel: str | None = None
    qmp: str | None = None


#: ``-ComputerName`` as a query parameter
Computers = Annotated[list[str] | None, Query()]


def _control_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/ping")
    async def ping() -> dict[str, Any]:
        return {"version": vmis.__version__}

    @router.get("/host")
    async def this_host(request: Request) -> dict[str, Any]:
        manager = manager_of(request)
        return {"ComputerName": manager.fleet.me.name, "Version": vmis.__version__,
                "Database": manager.engine.url.render_as_string(hide_password=True),
                "Shared": manager.fleet.shared}

    @router.get("/hosts")
    async def get_hosts(request: Request, computer: Computers = None) -> list[dict[str, Any]]:
        return manager_of(request).fleet.host_rows(computer)

    @router.get("/vms")
    async def list_vms(request: Request, computer: Computers = None) -> list[dict[str, Any]]:
        return manager_of(request).list_vms(computer)

    @router.post("/vms/{name}/move")
    async def move_vm(request: Request, name: str, move: MoveIn) -> dict[str, Any]:
        return await manager_of(request).fleet.move_vm(
            name, move.destination, source=move.computer, channel=move.channel, qmp=move.qmp)

    @router.post("/vms", status_code=201)
    async def add_vm(request: Request, vm: VmIn) -> dict[str, Any]:
        manager = manager_of(request)
        record = manager.add_vm(vm.name, vm.channel, qmp=vm.qmp, kind=vm.kind,
                                guest_agent=vm.guest_agent,
                                heartbeat_interval_ms=vm.heartbeat_interval_ms)
        return manager.vm_info(manager.sessions[record.id])

    @router.patch("/vms/{name}")
    async def update_vm(request: Request, name: str, patch: VmPatch) -> dict[str, Any]:
        manager = manager_of(request)
        record = manager.update_vm(name, **patch.model_dump(exclude_none=True))
        return manager.vm_info(manager.sessions[record.id])

    @router.post("/vms/{name}/reconnect")
    async def reconnect(request: Request, name: str) -> dict[str, Any]:
        session = manager_of(request).session(name)
        session.reconnect_now()
        return {"Name": session.vm.name}

    @router.delete("/vms/{name}")
    async def remove_vm(request: Request, name: str, by_id: bool = False) -> dict[str, Any]:
        # by_id: *name* is the VM's id (a VM registered under a name no URL can carry)
        record = await manager_of(request).remove_vm(name, by_id=by_id)
        return {"Name": record.name, "Id": record.id}

    @router.get("/vm-status", response_model=list[dict[str, Any]])
    async def get_vms(
        request: Request, name: Annotated[list[str] | None, Query()] = None,
        computer: Computers = None,
    ) -> Response:
        # JSON text as the manager makes it: FastAPI's encoder would walk every one
        # of a fleet's 10,240 rows again (bench/fleet_scale.py)
        return Response(await manager_of(request).get_vms_json(name, computer),
                        media_type="application/json")

    @router.get("/services")
    async def services(
        request: Request,
        vm: Annotated[list[str], Query()],
        name: Annotated[list[str] | None, Query()] = None,
        computer: Computers = None,
    ) -> list[dict[str, Any]]:
        return await manager_of(request).services(vm, name, computer)

    @router.post("/services/enable")
    async def enable(request: Request, change: ServiceChange) -> list[dict[str, Any]]:
        return await manager_of(request).set_enabled(change.vms, change.names, True,
                                                     change.computer)

    @router.post("/services/disable")
    async def disable(request: Request, change: ServiceChange) -> list[dict[str, Any]]:
        return await manager_of(request).set_enabled(change.vms, change.names, False,
                                                     change.computer)

    return router


router = _control_router()
