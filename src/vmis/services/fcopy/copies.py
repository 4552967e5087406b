"""The copies the host manager is making now: what Get-VMFileCopy lists first, Stop-VMFileCopy
stops.

docs/services/fcopy.md §4.1. Every copy runs as a task the manager owns,
not the client that asked for it: a client that goes away (Ctrl-C, killed)
only stops it, once, and the copy then gives back everything it had open
in the guest. The same copy asked again while its predecessor is still
stopping waits for it (briefly) and resumes where it stopped; asked while
it is still running for another client, it is refused as busy.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vmis.errors import NotFoundError, TargetBusy
from vmis.services.fcopy.file_copier import CopyProgress
from vmis.services.fcopy.paths import shown

__all__ = ["CopyRegistry", "RunningCopy"]

#: seconds a new copy waits for the same copy to finish stopping
STOPPING_WAIT = 30.0


@dataclass(eq=False)
class RunningCopy:
    """One copy in progress."""

    id: int
    vm_id: str
    vm: str
    file_source: str
    source: str
    destination: str
    #: the id the guest's handles of this copy carry (fcopy 1.1)
    owner: str = field(default_factory=lambda: secrets.token_hex(8))
    started: float = field(default_factory=time.time)
    progress: CopyProgress = field(default_factory=CopyProgress)
    task: asyncio.Task[dict[str, Any]] | None = None
    #: why it is being stopped ("" while it runs)
    stopping: str = ""
    listeners: list[Callable[[CopyProgress], None]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What makes two copies the same copy: VM, direction, source, destination."""
        return (self.vm_id, self.file_source, self.source, self.destination)

    def on_progress(self, progress: CopyProgress) -> None:
        for listener in list(self.listeners):
            listener(progress)

    def stop(self, why: str) -> None:
        """Stop the copy (once; its partial files stay for a resume)."""
        if self.task is not None and not self.task.done() and not self.stopping:
            self.stopping = why
            self.task.cancel()

    def row(self) -> dict[str, Any]:
        """Its line in Get-VMFileCopy."""
        p = self.progress
        return {"VMName": self.vm, "Id": self.id,
                "State": "Stopping" if self.stopping else "Running",
                "FileSource": self.file_source, "Source": shown(self.source),
                "Destination": shown(self.destination), "Path": shown(self.destination),
                "File": shown(p.current),
                "Bytes": p.bytes_done, "Size": p.bytes_total, "Files": p.files_done,
                "FilesTotal": p.files_total,
                "Started": datetime.fromtimestamp(self.started, UTC).isoformat(),
                "Seconds": round(time.time() - self.started, 1)}


class CopyRegistry:
    """The copies in progress, by id."""

    def __init__(self) -> None:
        self._copies: dict[int, RunningCopy] = {}
        self._next = 1

    async def begin(self, vm_id: str, vm: str, file_source: str, source: str,
                    destination: str) -> RunningCopy:
        """Register a new copy (its task is the caller's to set).

        :raise TargetBusy: When the same copy runs for someone else.
        """
        key = (vm_id, file_source, source, destination)
        while True:
            other = next((c for c in self._copies.values() if c.key == key), None)
            if other is None or other.task is None:
                break
            if not other.stopping:
                raise TargetBusy(f"the same copy is already running (Id {other.id}; "
                                 f"Stop-VMFileCopy -VMName {vm} -Id {other.id} stops it)")
            # Its client went away: it is giving back what it holds; then resume it.
            done, _ = await asyncio.wait({other.task}, timeout=STOPPING_WAIT)
            if not done:
                raise TargetBusy(f"the same copy (Id {other.id}) is still stopping; "
                                 "try again in a moment")
            self.end(other)
        copy = RunningCopy(self._next, vm_id, vm, file_source, source, destination)
        self._next += 1
        self._copies[copy.id] = copy
        return copy

    def end(self, copy: RunningCopy) -> None:
        self._copies.pop(copy.id, None)

    def running(self, vm_id: str | None = None) -> list[RunningCopy]:
        return [c for c in self._copies.values() if vm_id is None or c.vm_id == vm_id]

    def get(self, vm_id: str, copy_id: int) -> RunningCopy:
        """A copy of the VM by id.

        :raise NotFoundError: When there is none.
        """
        copy = self._copies.get(copy_id)
        if copy is None or copy.vm_id != vm_id:
            raise NotFoundError(f"no copy with Id {copy_id} is running on this VM "
                                "(Get-VMFileCopy lists them)")
        return copy
