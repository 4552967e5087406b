"""API of the online update: ``POST /v1/update`` (vmis.host.update).

The answer is JSON lines: ``{"type": "progress", "VMName", "Stage", ...}``
as each VM moves through copying, installing, restarting and done, then one
``{"type": "result", "VMs": [...]}``.
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
from vmis.errors import VmisError
from vmis.host.update import RESTART_TIMEOUT, Bundle, update_vms

__all__ = ["router"]

router = APIRouter(prefix="/v1")


class UpdateIn(BaseModel):
    vms: list[str] = Field(min_length=1)
    #: a bundle file on the host; default: the agent of this host's vmis
    bundle: str | None = None
    timeout: float = Field(default=RESTART_TIMEOUT, gt=0, le=3600)


@router.post("/update", responses=ndjson_response(
    "progress lines as each VM moves on, then the result of every VM", "progress", "result"))
async def update(request: Request, body: UpdateIn) -> StreamingResponse:
    manager = manager_of(request)
    manager.match(body.vms)  # unknown VMs fail here, as an ordinary error answer
    bundle = Bundle.from_file(Path(body.bundle)) if body.bundle else \
        await asyncio.to_thread(Bundle.current)

    async def lines() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        task = asyncio.create_task(update_vms(manager, body.vms, bundle, queue.put_nowait,
                                              timeout=body.timeout))
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
