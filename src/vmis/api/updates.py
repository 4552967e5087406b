"""API of the online update: ``POST /v1/update`` (vmis.host.update).

The answer is JSON lines: ``{"type": "progress", "VMName", "Stage", ...}``
as each VM moves through copying, installing, restarting and done, then one
``{"type": "result", "VMs": [...]}``. With ``computer`` (-ComputerName,
docs/fleet.md) another host's VM is updated by its owner, with the owner's
own agent, through a request: its progress is one ``requested`` line, then
its result with the others. With ``batch_percent`` it is a staged rollout
(vmis.host.rollout): ``{"type": "rollout", "Stage", "Batch", ...}`` lines
as batches start, prove healthy or not and are rolled back, and each VM's
result says its ``Batch``, whether it was ``Healthy`` and why not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from vmis.api.context import manager_of
from vmis.api.docs import ndjson_response
from vmis.api.errors import error_to_json
from vmis.api.guard import note
from vmis.errors import ConfigError, VmisError
from vmis.host.rollout import RolloutPlan, rollout
from vmis.host.update import RESTART_TIMEOUT, Bundle, Progress, update_vms

__all__ = ["router"]

router = APIRouter(prefix="/v1")


class UpdateIn(BaseModel):
    vms: list[str] = Field(min_length=1)
    #: a bundle file on the host; default: the agent of this host's vmis
    bundle: str | None = None
    timeout: float = Field(default=RESTART_TIMEOUT, gt=0, le=3600)
    computer: list[str] | None = None
    #: a staged rollout (vmis.host.rollout): batches of at most this % of the VMs
    batch_percent: float | None = Field(default=None, gt=0, le=100)
    #: seconds each batch is watched before the next (with batch_percent)
    health_wait: float = Field(default=60.0, ge=0, le=3600)


@router.post("/update", responses=ndjson_response(
    "progress lines as each VM moves on, then the result of every VM", "progress", "result"))
async def update(request: Request, body: UpdateIn) -> StreamingResponse:
    manager = manager_of(request)
    # unknown VMs fail here, as an ordinary error answer
    targets = manager.fleet.targets(body.vms, body.computer) if body.computer else None
    if targets is None:
        manager.match(body.vms)
    if targets is not None and targets.remote and body.bundle:
        raise ConfigError("-BundlePath names a file on this host; another host's VMs get "
                          "that host's own agent: update them without -BundlePath")
    bundle = Bundle.from_file(Path(body.bundle)) if body.bundle else \
        await asyncio.to_thread(Bundle.current)

    async def everywhere(progress: Progress) -> list[dict[str, Any]]:
        if body.batch_percent is not None:
            plan = RolloutPlan(body.batch_percent, body.health_wait, body.timeout)
            return await rollout(manager, body.vms, body.computer, bundle, plan=plan,
                                 progress=progress)

        async def here(names: list[str]) -> list[dict[str, Any]]:
            return await update_vms(manager, names, bundle, progress, timeout=body.timeout)

        for vm in targets.remote if targets is not None else []:
            progress({"type": "progress", "VMName": vm.name, "Stage": "requested",
                      "ComputerName": vm.host_name})
        return await manager.fleet.across("update", body.vms, body.computer,
                                          {"timeout": body.timeout}, local=here)

    async def lines() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        task = asyncio.create_task(everywhere(queue.put_nowait))
        try:
            while not task.done() or not queue.empty():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield json.dumps(getter.result()).encode() + b"\n"
                else:
                    getter.cancel()
            try:
                results = task.result()
            except VmisError as exc:
                note(request, failure=exc)
                yield json.dumps({"type": "error", **error_to_json(exc, type_key="class")}
                                 ).encode() + b"\n"
                return
            failed = [r["VMName"] for r in results if r.get("Result") not in ("updated", "current")]
            if failed:
                note(request, failure=f"not updated: {', '.join(failed)}")
            yield json.dumps({"type": "result", "VMs": results}).encode() + b"\n"
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return StreamingResponse(lines(), media_type="application/x-ndjson")
