"""Copy-VMFile on the event stream: one ``copy`` event when a copy starts, at most
one a second while it runs, and one when it ends (docs/events.md §3).

The copy's API face (vmis.api.services.fcopy) runs every copy through a
:class:`CopyEvents`; the metrics' copy totals come from the last event
(vmis.api.metrics).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from vmis.errors import VmisError
from vmis.host.manager import HostManager
from vmis.services.fcopy.file_copier import CopyProgress

__all__ = ["PROGRESS_EVENT_INTERVAL", "CopyEvents"]

T = TypeVar("T")

#: seconds between two progress events of one copy
PROGRESS_EVENT_INTERVAL = 1.0


class CopyEvents:
    """The events of one copy of one VM's files.

    :param file_source: ``Host`` (host to guest) or ``Guest``.
    :param copy_id: the copy's id in Get-VMFileCopy (a fresh one when not given).
    """

    def __init__(self, manager: HostManager, vm_name: str, file_source: str, source: str,
                 destination: str, *, copy_id: str | None = None) -> None:
        session = manager.session(vm_name)
        self._publish = session.publish
        self._common = {"CopyId": copy_id or uuid.uuid4().hex[:12], "FileSource": file_source,
                        "Source": source, "Destination": destination}
        self._last = 0.0
        self._progress = CopyProgress()

    def _send(self, status: str, **data: Any) -> None:
        self._publish("copy", **self._common, Status=status, **data)

    def _counts(self) -> dict[str, int]:
        p = self._progress
        return {"Bytes": p.bytes_done, "TotalBytes": p.bytes_total, "Files": p.files_done,
                "TotalFiles": p.files_total}

    def progress(self, then: Callable[[CopyProgress], None] | None
                 ) -> Callable[[CopyProgress], None]:
        """A progress callback that publishes, and calls *then* (the API's own) too."""

        def progress(p: CopyProgress) -> None:
            self._progress = p
            now = time.monotonic()
            if now - self._last >= PROGRESS_EVENT_INTERVAL:
                self._last = now
                self._send("Running", **self._counts())
            if then is not None:
                then(p)

        return progress

    async def track(self, copy: Awaitable[T], why: Callable[[], str] | None = None) -> T:
        """Await the copy, publishing its start and its end.

        :param why: says why a copy was stopped (Stop-VMFileCopy, a client gone).
        """
        self._last = time.monotonic()
        self._send("Running", **self._counts())
        try:
            result = await copy
        except asyncio.CancelledError:
            said = (why() if why else "") or "the client went away"
            self._send("Stopped", **self._counts(), Error=said, ErrorType=None)
            raise
        except VmisError as exc:
            self._send("Failed", **self._counts(), Error=str(exc), ErrorType=type(exc).__name__)
            raise
        except Exception as exc:
            self._send("Failed", **self._counts(), Error=f"internal error: {exc}",
                       ErrorType="InternalError")
            raise
        done = result if isinstance(result, dict) else {}
        self._send("Completed", Bytes=done.get("Bytes", 0), TotalBytes=done.get("Bytes", 0),
                   Files=done.get("Files", 0), TotalFiles=done.get("Files", 0),
                   BytesSent=done.get("BytesSent", 0), Seconds=done.get("Seconds", 0.0))
        return result
