"""The event stream's routes (docs/events.md): ``GET /v1/events`` as Server-Sent
Events, ``GET /v1/events/recent`` as one JSON answer. Both only read.

Filters, on both: ``vm`` (repeated; names, wildcards, case-insensitive),
``type`` (repeated or comma-separated; vmis.host.events.TYPES) and ``after``
(an event id: only later ones). The stream resumes after the id in the
``Last-Event-ID`` header, which a browser's EventSource sends when it
reconnects and which wins over ``after``; without either it starts with the
next event published.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from vmis.api.access import account_of, resolve_account
from vmis.api.context import manager_of
from vmis.api.docs import text_response
from vmis.api.sse import KEEPALIVE, KEEPALIVE_COMMENT, EncodedEvents, retry_field
from vmis.errors import AccessError, ConfigError
from vmis.host.events import Event, event_filter

__all__ = ["router"]

router = APIRouter(prefix="/v1")

#: the most events one write of the stream carries (the rest follow at once)
BATCH = 256
#: seconds between two looks at whether a stream's token is still there
RECHECK = 5.0
#: the blocks the streams send, shared by them
_encode = EncodedEvents()

Names = Annotated[list[str] | None, Query()]


def _types(types: list[str] | None) -> list[str]:
    return [t.strip() for value in types or [] for t in value.split(",") if t.strip()]


def _event_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"Last-Event-ID must be an event id, not {text!r}") from None


@router.get("/events", response_model=None, responses=text_response(
    "Server-Sent Events: one event per change, keepalive comments between (docs/events.md)",
    # an event's fields; its data is the event as JSON (docs/events.md)
    "text/event-stream", {"type": "object", "required": ["data"], "properties": {
        "data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"},
        "retry": {"type": "integer"}}}))
async def events(  # noqa: PLR0917 (FastAPI's parameters, each a query field)
    request: Request, vm: Names = None, type: Names = None, after: int | None = None,
    keepalive: Annotated[float, Query(ge=0.05, le=300)] = KEEPALIVE,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    hub = manager_of(request).events
    accept = event_filter(vm or [], _types(type))
    if last_event_id:
        after = _event_id(last_event_id)
    # "From now on" is from this request: what is published before the
    # generator's first step (which subscribes, so that an answer never sent
    # leaves no subscription behind) is not missed.
    start = hub.last_id if after is None else after

    signed_in = _still_signed_in(request)

    async def stream() -> AsyncIterator[bytes]:
        subscription = hub.subscribe(start, accept)
        loop = asyncio.get_running_loop()
        written = checked = loop.time()
        try:
            yield retry_field()
            while True:
                now = loop.time()
                if now - checked >= RECHECK:
                    checked = now
                    if not signed_in():
                        return  # its token was removed, its session ended
                try:
                    async with asyncio.timeout(min(RECHECK, written + keepalive - now)):
                        event = await anext(subscription)
                except TimeoutError:
                    if loop.time() - written >= keepalive:
                        written = loop.time()
                        yield KEEPALIVE_COMMENT
                    continue
                except StopAsyncIteration:
                    return  # the manager is going down; its last event was host Down
                # What else is queued goes in the same write: a burst (a thousand
                # VMs' statuses) is a few writes, not one per event.
                chunk = [_encode(event)]
                while len(chunk) < BATCH and (more := subscription.get_nowait()) is not None:
                    chunk.append(_encode(more))
                written = loop.time()
                yield b"".join(chunk)
        finally:
            subscription.close()

    # no-cache: what a proxy keeps is stale; X-Accel-Buffering: nginx passes each write on
    return StreamingResponse(stream(), media_type="text/event-stream", headers={
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _still_signed_in(request: Request) -> Callable[[], bool]:
    """Whether the stream's caller still has its account: a stream outlives the
    request's check, and a removed token (or an ended console session) must not
    go on reading (the socket's caller always has its account)."""
    account = account_of(request)
    accounts = request.app.state.accounts

    def check() -> bool:
        if account.via == "socket":
            return True
        try:
            resolve_account(request, accounts)
        except AccessError:
            return False
        return True

    return check


@router.get("/events/recent")
async def recent(request: Request, vm: Names = None, type: Names = None, after: int = 0,
                 newest: Annotated[int | None, Query(ge=1)] = None) -> dict[str, Any]:
    """The kept events that match, oldest first (the newest *newest* of them), and the
    hub's last id, after which a stream continues from where this answer ends."""
    hub = manager_of(request).events
    found: list[Event] = hub.recent(after, event_filter(vm or [], _types(type)))
    if newest is not None:
        found = found[-newest:]
    return {"LastId": hub.last_id, "Events": [e.to_json() for e in found]}
