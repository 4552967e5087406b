"""API of the Guest Service Interface: ``POST /v1/vms/{name}/copy`` (docs/services/fcopy.md §7).

Without ``?stream=true`` the answer is the copy's result. With it, the
answer is JSON lines: ``{"type": "progress", ...}`` at most ten times a
second while the copy runs, then one ``{"type": "result", ...}`` or
``{"type": "error", "error": ..., "code": ...}``. A client that disconnects
cancels the copy; the partial file stays, so the same copy resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from vmis.api.context import manager_of
from vmis.api.copy_events import CopyEvents
from vmis.api.docs import ndjson_response
from vmis.api.errors import error_to_json
from vmis.api.guard import note
from vmis.errors import InternalError, VmisError
from vmis.services.fcopy.file_copier import CopyProgress
from vmis.services.fcopy.host import FcopyHost

__all__ = ["router"]

router = APIRouter(prefix="/v1")
_log = logging.getLogger("vmis.host.fcopy")

#: seconds between two progress lines
PROGRESS_INTERVAL = 0.1


class CopyIn(BaseModel):
    source: str = Field(min_length=1, max_length=4096)
    destination: str = Field(min_length=1, max_length=4096)
    file_source: Literal["Host", "Guest"] = "Host"
    create_full_path: bool = False
    force: bool = False
    recurse: bool = False


def _error_line(exc: VmisError) -> dict[str, Any]:
    return {"type": "error", **error_to_json(exc, type_key="class")}


_STREAM = ndjson_response("with ?stream=true: progress lines, then the result or the error",
                          "progress", "result")


@router.post("/vms/{name}/copy", response_model=None, responses=_STREAM)
async def copy(request: Request, name: str, body: CopyIn,
               stream: bool = Query(False)) -> dict[str, Any] | StreamingResponse:
    fcopy = manager_of(request).service(FcopyHost)
    # Errors found before any byte moves come back as ordinary error answers.
    fcopy.prepare_copy(name, body.source, body.destination, body.file_source)

    # on the event stream too (vmis.api.copy_events)
    events = CopyEvents(manager_of(request), name, body.file_source, body.source,
                        body.destination)

    def run(progress: Callable[[CopyProgress], None] | None = None) -> Awaitable[dict[str, Any]]:
        return events.track(fcopy.copy_vm_file(
            name, body.source, body.destination, body.file_source,
            create_full_path=body.create_full_path, force=body.force, recurse=body.recurse,
            progress=events.progress(progress)))

    if not stream:
        return await run()

    async def lines() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        last = 0.0

        def progress(p: CopyProgress) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= PROGRESS_INTERVAL:
                last = now
                queue.put_nowait({"type": "progress", **p.to_json()})

        task = asyncio.ensure_future(run(progress))
        task.add_done_callback(lambda _: queue.put_nowait({"type": "done"}))
        try:
            while True:
                item = await queue.get()
                if item["type"] == "done":
                    break
                yield json.dumps(item).encode() + b"\n"
            try:
                result = {"type": "result", **task.result()}
            except VmisError as exc:
                note(request, failure=exc)
                result = _error_line(exc)
            except Exception as exc:
                _log.exception("Copy-VMFile %s failed", name)
                note(request, failure=f"{type(exc).__name__}: {exc}")
                result = _error_line(InternalError(f"the copy failed: {exc}"))
            yield json.dumps(result).encode() + b"\n"
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    return StreamingResponse(lines(), media_type="application/x-ndjson")
