"""The guest's open copies and partial files: listed, given up, swept on a schedule.

docs/services/fcopy.md §4.1. COPIES answers the host's Get-VMFileCopy,
DISCARD its Stop-VMFileCopy, and ``vmis-guest fcopy status`` shows the
same. :meth:`GuestAdmin.maintain` runs while the service runs: it closes
open copies whose lease ran out and, at start and every
:data:`~vmis.services.fcopy.SWEEP_INTERVAL`, removes partial files no copy
can use any more. Standard library only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from vmis.errors import ServiceError
from vmis.protocol import RequestReceived, decode_json, encode_json
from vmis.services.fcopy import LEASE, PARTIAL_MAX_AGE, SWEEP_INTERVAL, FcopyOp
from vmis.services.fcopy.guest_handles import Handles, TreeIn, WriteOpen
from vmis.services.fcopy.partials import PartFile, PartialIndex
from vmis.services.fcopy.paths import RootedPaths
from vmis.services.guest_half import GuestContext

__all__ = ["GuestAdmin", "index_file"]

#: seconds between two looks for open copies whose lease ran out
LEASE_CHECK = 30.0


def index_file(ctx: GuestContext) -> Path | None:
    """Where the guest's partial file index lives: the agent's state directory."""
    state_dir = getattr(ctx.config, "state_dir", None)
    return ctx.path(state_dir) / "fcopy-partials.json" if state_dir else None


class _Service(Protocol):
    ctx: GuestContext
    paths: RootedPaths
    handles: Handles
    index: PartialIndex
    log: logging.Logger

    def drop(self, handle: int, keep: bool) -> asyncio.Future[None] | None: ...


class GuestAdmin:
    """Leases, sweeps, and the operations that list and discard copies."""

    def __init__(self, service: _Service) -> None:
        self.svc = service
        #: seconds an open copy may go unused (tests shorten it)
        self.lease = LEASE
        self.lease_check = LEASE_CHECK
        self.sweep_interval = SWEEP_INTERVAL

    @property
    def max_age(self) -> float:
        """``[fcopy] partial_max_age``: seconds a resumable partial file may stay untouched."""
        return float(getattr(self.svc.ctx.config, "partial_max_age", PARTIAL_MAX_AGE))

    def handlers(self) -> dict[int, Callable[[RequestReceived], Awaitable[bytes]]]:
        return {FcopyOp.COPIES: self._copies, FcopyOp.DISCARD: self._discard}

    # Section: the schedule

    async def maintain(self) -> None:
        """Expire leases and sweep partial files while the service runs."""
        await self.sweep()
        since_sweep = 0.0
        while True:
            await asyncio.sleep(self.lease_check)
            self.expire()
            since_sweep += self.lease_check
            if since_sweep >= self.sweep_interval:
                since_sweep = 0.0
                await self.sweep()

    def expire(self) -> None:
        """Close the open copies no request has used for a lease."""
        for handle in self.svc.handles.expired(self.lease):
            self.svc.log.info("closing copy %d: unused for %.0f s (its host went away)",
                              handle, self.lease)
            self.svc.drop(handle, keep=True)

    async def sweep(self) -> list[str]:
        """Remove the partial files no copy can use any more; those removed."""
        try:
            return await asyncio.to_thread(self.svc.index.sweep, self.max_age,
                                           self.svc.handles.tags())
        except OSError as exc:
            self.svc.log.warning("sweeping partial files: %s", exc)
            return []

    # Section: listing and discarding

    def open_rows(self) -> list[dict[str, Any]]:
        return [{"handle": handle, **item.row()} for handle, item in self.svc.handles.items()]

    async def _copies(self, request: RequestReceived) -> bytes:
        parts = await asyncio.to_thread(self.svc.index.scan)
        return encode_json({"open": self.open_rows(), "partials": [p.to_json() for p in parts],
                            "max_age": self.max_age, "lease": self.lease})

    async def _discard(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        everything = bool(body.get("all"))
        path = body.get("path")
        if not everything and not isinstance(path, str):
            raise ServiceError("bad-request", "name a path, or all")
        closed = []
        for handle, item in self.svc.handles.items():
            where = item.receiver.path if isinstance(item, WriteOpen) else \
                item.writer.top if isinstance(item, TreeIn) else None
            if where is not None and (everything or where == path):
                done = self.svc.drop(handle, keep=False)
                if done is not None:
                    await done
                closed.append(handle)

        def gone(part: PartFile) -> bool:
            return everything or path in (part.destination, part.path)

        removed = await asyncio.to_thread(self.svc.index.discard, lambda p: not gone(p))
        return encode_json({"closed": closed, "removed": removed})

    async def status(self, request: dict[str, Any]) -> Any:
        """``vmis-guest fcopy status``: the policy, the open copies, the partial files."""
        parts = await asyncio.to_thread(self.svc.index.scan)
        return {"allowed_roots": self.svc.paths.allowed, "frozen": self.svc.ctx.frozen,
                "copies": self.open_rows(), "partials": [p.to_json() for p in parts],
                "partial_max_age": self.max_age}
