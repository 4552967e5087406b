"""Integration service policies, VM tags and compliance (docs/fleet.md §5).

Set-/Get-/Remove-VMIntegrationServicePolicy, Set-VM -Tag and
Get-VMIntegrationServiceCompliance: thin translations of
:class:`~vmis.host.fleet.policies.Policies` and
vmis.host.fleet.compliance.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from vmis.api.context import manager_of
from vmis.host.fleet.compliance import compliance

__all__ = ["router"]

router = APIRouter(prefix="/v1")


class PolicyIn(BaseModel):
    #: -ComputerName and -VMName patterns (default: every host, every VM)
    computer: str | None = None
    vm_name: str | None = None
    #: ``key=value`` items, every one of which a VM's tags must have
    tags: list[str] = []
    enable: list[str] = []
    disable: list[str] = []
    minimum_version: str | None = None


class TagsIn(BaseModel):
    vms: list[str] = Field(min_length=1)
    #: ``key=value`` items to set
    tags: list[str] = []
    #: tag names to take away
    remove: list[str] = []


@router.get("/policies")
async def get_policies(request: Request,
                       name: Annotated[list[str] | None, Query()] = None) -> list[dict[str, Any]]:
    return manager_of(request).policies.get_policies(name)


@router.put("/policies/{name}")
async def set_policy(request: Request, name: str, policy: PolicyIn) -> dict[str, Any]:
    return await manager_of(request).policies.set_policy(
        name, computer=policy.computer, vm_name=policy.vm_name, tags=policy.tags,
        enable=policy.enable, disable=policy.disable, minimum_version=policy.minimum_version)


@router.delete("/policies/{name}")
async def remove_policy(request: Request, name: str) -> list[dict[str, Any]]:
    return await manager_of(request).policies.remove_policies([name])


@router.post("/vms/tags")
async def set_tags(request: Request, change: TagsIn) -> list[dict[str, Any]]:
    return await manager_of(request).policies.set_vm_tags(change.vms, change.tags,
                                                           change.remove)


@router.get("/compliance")
async def get_compliance(
    request: Request,
    vm: Annotated[list[str] | None, Query()] = None,
    computer: Annotated[list[str] | None, Query()] = None,
) -> list[dict[str, Any]]:
    return await compliance(manager_of(request), vm, computer)
