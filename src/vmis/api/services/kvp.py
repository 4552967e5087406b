"""API routes of Key-Value Pair Exchange: Get-, Set-, Remove-VMKvp (docs/services/kvp.md §3).

``computer`` is ``-ComputerName`` (docs/fleet.md): another host's VM is read
from what its owner reported, and written as a pending write in the store
with a request that has its owner deliver it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection

from vmis.api.context import manager_of
from vmis.host.fleet.hosts import RemoteVm
from vmis.host.fleet.reports import kvp_rows
from vmis.services.kvp.host import KvpHost, check_write, enqueue

__all__ = ["router"]

router = APIRouter(prefix="/v1")


class KvpSet(BaseModel):
    vms: list[str] = Field(min_length=1)
    key: str
    value: str
    computer: list[str] | None = None


class KvpRemove(BaseModel):
    vms: list[str] = Field(min_length=1)
    key: str
    computer: list[str] | None = None


@router.get("/kvp")
async def get_kvp(request: Request, vm: Annotated[list[str], Query()],
                  pool: str | None = None,
                  computer: Annotated[list[str] | None, Query()] = None) -> list[dict[str, Any]]:
    manager = manager_of(request)
    if not computer:
        return manager.service(KvpHost).rows(vm, pool)
    targets = manager.fleet.targets(vm, computer)
    rows = []
    if targets.local:
        rows = [{**row, **manager.fleet.local_columns()} for row in manager.service(
            KvpHost).rows([s.vm.name for s in targets.local], pool)]
    return sorted(rows + kvp_rows(manager.engine, targets.remote, pool),
                  key=lambda row: str(row["VMName"]).lower())


async def _write(request: Request, vms: list[str], key: str, value: str | None,
                 computer: list[str] | None) -> list[dict[str, Any]]:
    manager = manager_of(request)
    kvp = manager.service(KvpHost)
    check_write(key, value or "")

    async def here(names: list[str]) -> list[dict[str, Any]]:
        return await (kvp.set(names, key, value) if value is not None else kvp.remove(names, key))

    def pending(conn: Connection, remote: Sequence[RemoteVm]) -> dict[str, Any]:
        return {vm.id: {"writes": [{"Id": enqueue(conn, vm.id, key, value), "Key": key,
                                    "Value": value}]} for vm in remote}

    return await manager.fleet.across("kvp", vms, computer, {}, local=here, prepare=pending)


@router.get("/kvp/limits")
async def get_kvp_limits(request: Request,
                         vm: Annotated[list[str], Query()]) -> list[dict[str, str]]:
    return manager_of(request).service(KvpHost).limits(vm)


@router.post("/kvp/set")
async def set_kvp(request: Request, change: KvpSet) -> list[dict[str, Any]]:
    return await _write(request, change.vms, change.key, change.value, change.computer)


@router.post("/kvp/remove")
async def remove_kvp(request: Request, change: KvpRemove) -> list[dict[str, Any]]:
    return await _write(request, change.vms, change.key, None, change.computer)
