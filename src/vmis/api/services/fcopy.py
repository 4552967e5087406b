"""API of the Guest Service Interface (docs/services/fcopy.md §7).

``POST /v1/vms/{name}/copy`` starts Copy-VMFile. Without ``?stream=true``
the answer is the copy's result. With it, the answer is JSON lines:
``{"type": "progress", ...}`` at most ten times a second while the copy
runs, then one ``{"type": "result", ...}`` or ``{"type": "error", "error":
..., "code": ...}``. The copy is a task of the manager's: a client that
disconnects stops it at once, and the partial files stay, so the same copy
resumes when asked again.

``GET /v1/copies`` lists the copies (Get-VMFileCopy), ``POST
/v1/vms/{name}/copies/stop`` stops them (Stop-VMFileCopy).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from vmis.api.context import manager_of
from vmis.api.copy_events import CopyEvents
from vmis.api.docs import ndjson_response
from vmis.api.errors import error_to_json
from vmis.api.guard import note
from vmis.errors import InternalError, StateError, VmisError
from vmis.services.fcopy.copies import RunningCopy
from vmis.services.fcopy.file_copier import CopyProgress
from vmis.services.fcopy.host import FcopyHost

__all__ = ["router"]

router = APIRouter(prefix="/v1")
_log = logging.getLogger("vmis.host.fcopy")

#: seconds between two progress lines
PROGRESS_INTERVAL = 0.1
NDJSON = "application/x-ndjson"


class CopyIn(BaseModel):
    source: str = Field(min_length=1, max_length=4096)
    destination: str = Field(min_length=1, max_length=4096)
    file_source: Literal["Host", "Guest"] = "Host"
    create_full_path: bool = False
    force: bool = False
    recurse: bool = False
    #: what a tree's symbolic links become (-CopySymlinks, -FollowSymlinks)
    links: Literal["skip", "copy", "follow"] = "skip"


class StopIn(BaseModel):
    id: list[int] = []
    path: list[str] = []
    all: bool = False
    discard: bool = False


def _line(item: dict[str, Any]) -> bytes:
    # ASCII JSON: a path may hold bytes that are not UTF-8 (docs/protocol.md §2.2)
    return json.dumps(item).encode() + b"\n"


_STREAM = ndjson_response("with ?stream=true: progress lines, then the result or the error",
                          "progress", "result")


@router.post("/vms/{name}/copy", response_model=None, responses=_STREAM)
async def copy(request: Request, name: str, body: CopyIn,
               stream: bool = Query(False)) -> dict[str, Any] | Response:
    fcopy = manager_of(request).service(FcopyHost)
    # Errors found before any byte moves come back as ordinary error answers.
    running = await fcopy.start_copy(name, body.source, body.destination, body.file_source,
                                     create_full_path=body.create_full_path, force=body.force,
                                     recurse=body.recurse, links=body.links)
    task = running.task
    assert task is not None
    _publish(request, name, body, running, task)
    if not stream:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            running.stop("the client went away")
            raise
        # Encoded here, not by FastAPI's jsonable_encoder, which walks every
        # value in Python: 17-24 ms for the 2,000 items of a tree's result.
        return Response(_line(result), media_type="application/json")
    try:
        # A copy over before its first progress line needs no stream: its one
        # line is a plain answer, without a streaming response's machinery.
        await asyncio.wait({task}, timeout=PROGRESS_INTERVAL)
    except asyncio.CancelledError:
        running.stop("the client went away")
        raise
    if task.done():
        return Response(_line(_final(request, task, running, name)), media_type=NDJSON)

    async def lines() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        last = 0.0

        def progress(p: CopyProgress) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= PROGRESS_INTERVAL:
                last = now
                queue.put_nowait({"type": "progress", **p.to_json()})

        running.listeners.append(progress)
        task.add_done_callback(lambda _: queue.put_nowait({"type": "done"}))
        try:
            while True:
                item = await queue.get()
                if item["type"] == "done":
                    break
                yield _line(item)
            yield _line(_final(request, task, running, name))
        finally:
            # Only stops the copy, never waits for it here: this generator may be
            # cancelled again and again while its client is gone.
            if not task.done():
                running.stop("the client went away")

    return StreamingResponse(lines(), media_type=NDJSON)


def _publish(request: Request, name: str, body: CopyIn, running: RunningCopy,
             task: asyncio.Task[dict[str, Any]]) -> None:
    """Put the copy on the event stream (vmis.api.copy_events), whoever waits for it."""
    events = CopyEvents(manager_of(request), name, body.file_source, body.source,
                        body.destination, copy_id=str(running.id))
    running.listeners.append(events.progress(None))
    tracked = asyncio.ensure_future(events.track(task, lambda: running.stopping))
    # its outcome is the copy's, which the caller reads from the copy's own task
    tracked.add_done_callback(lambda done: done.cancelled() or done.exception())


def _final(request: Request, task: asyncio.Task[dict[str, Any]], running: RunningCopy,
           name: str) -> dict[str, Any]:
    """The last line of a copy's stream: its result, or why it failed (in the audit
    log too: the stream's status was 200 when it began)."""
    error: VmisError
    try:
        return {"type": "result", **task.result()}
    except asyncio.CancelledError:
        error = StateError(f"the copy was stopped ({running.stopping or 'cancelled'}); the "
                           "same command resumes it")
    except VmisError as exc:
        error = exc
    except Exception as exc:
        _log.exception("Copy-VMFile %s failed", name)
        error = InternalError(f"the copy failed: {exc}")
    note(request, failure=error)
    return {"type": "error", **error_to_json(error, type_key="class")}


@router.get("/copies")
async def copies(request: Request,
                 vm: Annotated[list[str] | None, Query()] = None) -> list[dict[str, Any]]:
    return await manager_of(request).service(FcopyHost).list_copies(vm or [])


@router.post("/vms/{name}/copies/stop")
async def stop(request: Request, name: str, body: StopIn) -> dict[str, Any]:
    return await manager_of(request).service(FcopyHost).stop_copies(
        name, body.id, body.path, everything=body.all, discard=body.discard)
