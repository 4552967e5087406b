"""API routes of Key-Value Pair Exchange: Get-, Set-, Remove-VMKvp (docs/services/kvp.md §3)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from vmis.api.context import manager_of
from vmis.services.kvp.host import KvpHost

__all__ = ["router"]

router = APIRouter(prefix="/v1")


class KvpSet(BaseModel):
    vms: list[str] = Field(min_length=1)
    key: str
    value: str


class KvpRemove(BaseModel):
    vms: list[str] = Field(min_length=1)
    key: str


@router.get("/kvp")
async def get_kvp(request: Request, vm: Annotated[list[str], Query()],
                  pool: str | None = None) -> list[dict[str, Any]]:
    return manager_of(request).service(KvpHost).rows(vm, pool)


@router.get("/kvp/limits")
async def get_kvp_limits(request: Request,
                         vm: Annotated[list[str], Query()]) -> list[dict[str, str]]:
    return manager_of(request).service(KvpHost).limits(vm)


@router.post("/kvp/set")
async def set_kvp(request: Request, change: KvpSet) -> list[dict[str, Any]]:
    return await manager_of(request).service(KvpHost).set(change.vms, change.key, change.value)


@router.post("/kvp/remove")
async def remove_kvp(request: Request, change: KvpRemove) -> list[dict[str, Any]]:
    return await manager_of(request).service(KvpHost).remove(change.vms, change.key)
