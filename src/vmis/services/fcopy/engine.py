"""Host half of the Guest Service Interface: the copy engine.

docs/services/fcopy.md. :class:`CopyEngine` copies what Copy-VMFile names
between this machine and a guest: a file, or with -Recurse a directory tree
(§3.2): as a stream of batches with a guest that speaks fcopy 1.1
(:class:`~vmis.services.fcopy.tree_copier.TreeCopier`), file by file with
an older one (:class:`~vmis.services.fcopy.legacy_trees.LegacyTrees`); each
large file through :class:`~vmis.services.fcopy.file_copier.FileCopier`.
It returns the result (§7). It has no host-only dependency.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from vmis.errors import (
    LocalFileError,
    NotFoundError,
    RequestRefused,
    StateError,
    TargetBusy,
)
from vmis.protocol import Version
from vmis.services.fcopy import TREES, FcopyOp
from vmis.services.fcopy.bulk_memory import BULK_MEMORY
from vmis.services.fcopy.legacy_trees import LegacyTrees
from vmis.services.fcopy.paths import shown
from vmis.services.fcopy.tree_copier import TreeCopier

__all__ = ["CopyEngine"]


class CopyEngine(TreeCopier, LegacyTrees):
    """Copies between this machine and one guest (docs/services/fcopy.md §3).

    Constructed as :class:`~vmis.services.fcopy.file_copier.FileCopier`, and:

    :param version: the fcopy version the guest speaks.
    :param links: what a tree's symbolic links become: ``skip``, ``copy`` or ``follow``.
    """

    def __init__(self, *args: Any, version: Version = TREES, links: str = "skip",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams = version >= TREES
        self.links = links

    # Section: public interface

    async def to_guest(self, source: Path, destination: str, *, create_full_path: bool = False,
                       force: bool = False, recurse: bool = False) -> dict[str, Any]:
        """Copy a host file (or with *recurse* a directory tree) into the guest.

        :param source: an absolute host path.
        :param destination: an absolute guest path (docs/services/fcopy.md §3.1).
        :return: the result (docs/services/fcopy.md §7).
        :raise NotFoundError: When the source does not exist.
        :raise TargetBusy: When another copy writes the destination, or the guest is frozen.
        :raise VmisError: The guest's refusal or the copy's failure, with its reason.
        """
        started = time.monotonic()
        try:
            st = os.stat(source)
        except FileNotFoundError:
            raise NotFoundError(f"{shown(str(source))} does not exist on the host") from None
        except OSError as exc:
            raise LocalFileError(f"cannot read {shown(str(source))}: {exc.strerror}") from exc
        if stat.S_ISDIR(st.st_mode):
            if not recurse:
                raise StateError(f"{shown(str(source))} is a directory; -Recurse copies "
                                 "directories")
            self._check_links()
            top = await self._run(self._tree_to_guest_stream(
                source, destination, create_full_path, force, self.links) if self.streams else
                self._tree_to_guest_legacy(source, destination, create_full_path, force))
        elif stat.S_ISREG(st.st_mode):
            self.progress.bytes_total, self.progress.files_total = st.st_size, 1
            item = await self._run(self._file_to_guest(
                source, destination, source.name, exact=False, create=create_full_path,
                force=force))
            top = item["Path"]
        else:
            raise StateError(f"{shown(str(source))} is not a regular file or a directory")
        return self._result("Host", str(source), top, started, tree=stat.S_ISDIR(st.st_mode))

    async def from_guest(self, source: str, destination: str, *,
                         create_full_path: bool = False, force: bool = False,
                         recurse: bool = False) -> dict[str, Any]:
        """Copy a guest file (or with *recurse* a directory tree) to this machine.

        :param source: an absolute guest path.
        :param destination: an absolute host path; the same rules as for guest
            destinations apply (docs/services/fcopy.md §3.1), a trailing ``/``
            included.
        """
        started = time.monotonic()
        inline = memoryview(b"")
        if self.streams:
            # One round trip: a file is opened at once, a directory says so.
            info, inline = await self._run(self._open_guest_file(source, probe=True))
        else:
            info = await self._run(self._json(FcopyOp.STAT, {"path": source}))
        if info.get("type") == "dir":
            if not recurse:
                raise StateError(f"{shown(source)} is a directory in the guest; -Recurse "
                                 "copies directories")
            self._check_links()
            where = str(info["path"])
            top = await self._run(self._tree_from_guest_stream(
                where, Path(destination), create_full_path, force, self.links) if self.streams
                else self._tree_from_guest_legacy(where, Path(destination), create_full_path,
                                                  force))
        elif info.get("type") == "file":
            self.progress.bytes_total, self.progress.files_total = int(info["size"]), 1
            item = await self._run(self._file_from_opened(
                info, inline, destination, exact=False, create=create_full_path,
                force=force) if self.streams else self._file_from_guest(
                str(info["path"]), destination, exact=False, create=create_full_path,
                force=force))
            top = item["Path"]
        elif info.get("type") == "none":
            raise NotFoundError(f"{shown(source)} does not exist in the guest")
        else:
            raise StateError(f"{shown(source)} is not a regular file or a directory in the "
                             "guest")
        return self._result("Guest", source, top, started, tree=info.get("type") == "dir")

    def _check_links(self) -> None:
        if self.links != "skip" and not self.streams:
            flag = "-CopySymlinks" if self.links == "copy" else "-FollowSymlinks"
            raise StateError(f"{flag} needs a guest agent that speaks fcopy 1.1 or newer "
                             "(Update-VMIntegrationServices updates it)")

    async def _run(self, work: Awaitable[Any]) -> Any:
        """Run part of a copy with the bulk buffers kept and the worker thread let go after;
        a destination that is busy is :class:`TargetBusy`, whichever end found it."""
        BULK_MEMORY.acquire()
        try:
            return await work
        except RequestRefused as exc:
            if exc.code == "busy" and not isinstance(exc, TargetBusy):
                raise TargetBusy(str(exc)) from exc
            raise
        finally:
            BULK_MEMORY.release()

    def close(self) -> None:
        """Let the worker thread go (the copy is over)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def _result(self, file_source: str, source: str, destination: str, started: float,
                tree: bool) -> dict[str, Any]:
        seconds = max(time.monotonic() - started, 1e-9)
        total = sum(i["Bytes"] for i in self._stats.items)
        result: dict[str, Any] = {
            "FileSource": file_source, "Source": shown(source),
            "Destination": shown(destination), "Files": len(self._stats.items),
            "Directories": self._stats.directories, "Bytes": total,
            "BytesSent": self._stats.sent, "BytesResumed": self._stats.resumed,
            "Seconds": round(seconds, 6), "BytesPerSecond": round(self._stats.sent / seconds),
            "Sha256": None if tree else self._stats.items[0]["Sha256"],
            "Skipped": [{"Path": shown(p), "Reason": why} for p, why in self._stats.skipped],
        }
        if tree:
            result["Items"] = self._stats.items
        return result

