"""Host half of the Guest Service Interface: the copy engine.

docs/services/fcopy.md. :class:`CopyEngine` copies what Copy-VMFile names
between this machine and a guest: a file, or with -Recurse a directory tree
(walked first for the totals, directories made top down, their modes and
times set bottom up, links and special files skipped; §3.2), each file
through :class:`~vmis.services.fcopy.file_copier.FileCopier`, and returns
the result (§7). It has no host-only dependency.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmis.errors import LocalFileError, NotFoundError, ServiceError, StateError
from vmis.services.fcopy import FcopyOp
from vmis.services.fcopy.bulk_memory import BULK_MEMORY
from vmis.services.fcopy.file_copier import FileCopier
from vmis.services.fcopy.metadata import entry_type, file_mode
from vmis.services.fcopy.paths import check_name

__all__ = ["CopyEngine"]


@dataclass
class _LocalEntry:
    rel: str
    path: Path
    st: os.stat_result


class CopyEngine(FileCopier):
    """Copies between this machine and one guest (docs/services/fcopy.md §3).

    Constructed as :class:`~vmis.services.fcopy.file_copier.FileCopier`.
    """

    # Section: public interface

    async def to_guest(self, source: Path, destination: str, *, create_full_path: bool = False,
                       force: bool = False, recurse: bool = False) -> dict[str, Any]:
        """Copy a host file (or with *recurse* a directory tree) into the guest.

        :param source: an absolute host path.
        :param destination: an absolute guest path (docs/services/fcopy.md §3.1).
        :return: the result (docs/services/fcopy.md §7).
        :raise NotFoundError: When the source does not exist.
        :raise VmisError: The guest's refusal or the copy's failure, with its reason.
        """
        started = time.monotonic()
        BULK_MEMORY.acquire()
        try:
            return await self._to_guest(source, destination, started, create=create_full_path,
                                        force=force, recurse=recurse)
        finally:
            BULK_MEMORY.release()
            self._worker.shutdown(wait=False)

    async def _to_guest(self, source: Path, destination: str, started: float, *, create: bool,
                        force: bool, recurse: bool) -> dict[str, Any]:
        try:
            st = os.stat(source)
        except FileNotFoundError:
            raise NotFoundError(f"{source} does not exist on the host") from None
        except OSError as exc:
            raise LocalFileError(f"cannot read {source}: {exc.strerror}") from exc
        if stat.S_ISDIR(st.st_mode):
            if not recurse:
                raise StateError(f"{source} is a directory; -Recurse copies directories")
            top = await self._tree_to_guest(source, destination, create, force)
        elif stat.S_ISREG(st.st_mode):
            self.progress.bytes_total, self.progress.files_total = st.st_size, 1
            item = await self._file_to_guest(source, st, destination, source.name,
                                             exact=False, create=create, force=force)
            top = item["Path"]
        else:
            raise StateError(f"{source} is not a regular file or a directory")
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
        BULK_MEMORY.acquire()
        try:
            info = await self._json(FcopyOp.STAT, {"path": source})
            if info.get("type") == "dir":
                if not recurse:
                    raise StateError(f"{source} is a directory in the guest; -Recurse copies "
                                     "directories")
                top = await self._tree_from_guest(str(info["path"]), Path(destination),
                                                  create_full_path, force)
            elif info.get("type") == "file":
                self.progress.bytes_total, self.progress.files_total = int(info["size"]), 1
                item = await self._file_from_guest(str(info["path"]), destination,
                                                   exact=False, create=create_full_path,
                                                   force=force)
                top = item["Path"]
            elif info.get("type") == "none":
                raise NotFoundError(f"{source} does not exist in the guest")
            else:
                raise StateError(f"{source} is not a regular file or a directory in the guest")
        finally:
            BULK_MEMORY.release()
            self._worker.shutdown(wait=False)
        return self._result("Guest", source, top, started, tree=info.get("type") == "dir")

    def _result(self, file_source: str, source: str, destination: str, started: float,
                tree: bool) -> dict[str, Any]:
        seconds = max(time.monotonic() - started, 1e-9)
        total = sum(i["Bytes"] for i in self._stats.items)
        result: dict[str, Any] = {
            "FileSource": file_source, "Source": source, "Destination": destination,
            "Files": len(self._stats.items), "Directories": self._stats.directories,
            "Bytes": total, "BytesSent": self._stats.sent, "BytesResumed": self._stats.resumed,
            "Seconds": round(seconds, 6), "BytesPerSecond": round(self._stats.sent / seconds),
            "Sha256": None if tree else self._stats.items[0]["Sha256"],
            "Skipped": self._stats.skipped,
        }
        if tree:
            result["Items"] = self._stats.items
        return result

    # Section: trees

    async def _tree_to_guest(self, source: Path, destination: str, create: bool,
                             force: bool) -> str:
        dirs, files = self._walk_local(source)
        self.progress.files_total = len(files)
        self.progress.bytes_total = sum(f.st.st_size for f in files)
        info = await self._json(FcopyOp.STAT, {"path": destination})
        if info.get("type") == "dir":
            top = f"{str(info['path']).rstrip('/')}/{check_name(source.name)}"
        elif info.get("type") == "none":
            top = destination.rstrip("/") or "/"
        else:
            raise ServiceError("exists", f"{info.get('path')} exists in the guest and is not "
                                         "a directory")
        top = str((await self._json(FcopyOp.MKDIR, {"path": top, "parents": create}))["path"])
        for d in dirs[1:]:
            await self._json(FcopyOp.MKDIR, {"path": f"{top}/{d.rel}"})
        for f in files:
            await self._file_to_guest(f.path, f.st, f"{top}/{f.rel}", f.path.name, exact=True,
                                      create=False, force=force)
        for d in reversed(dirs):
            path = f"{top}/{d.rel}" if d.rel else top
            await self._json(FcopyOp.SETMETA, {"path": path, "mode": file_mode(d.st.st_mode),
                                               "atime_ns": d.st.st_atime_ns,
                                               "mtime_ns": d.st.st_mtime_ns})
        self._stats.directories = len(dirs)
        return top

    def _walk_local(self, source: Path) -> tuple[list[_LocalEntry], list[_LocalEntry]]:
        """Directories (top first) and regular files of a host tree; the rest is skipped."""
        dirs = [_LocalEntry("", source, os.stat(source))]
        files: list[_LocalEntry] = []
        i = 0
        while i < len(dirs):
            parent = dirs[i]
            i += 1
            try:
                entries = sorted(os.scandir(parent.path), key=lambda e: e.name)
            except OSError as exc:
                raise LocalFileError(f"cannot list {parent.path}: {exc.strerror}") from exc
            for entry in entries:
                rel = f"{parent.rel}/{entry.name}" if parent.rel else entry.name
                try:
                    entry.name.encode("utf-8")
                    st = entry.stat(follow_symlinks=False)
                except UnicodeEncodeError:
                    self._stats.skipped.append(os.fsencode(entry.path).decode("utf-8",
                                                                              "backslashreplace"))
                    continue
                kind = entry_type(st.st_mode)
                if kind == "dir":
                    dirs.append(_LocalEntry(rel, Path(entry.path), st))
                elif kind == "file":
                    files.append(_LocalEntry(rel, Path(entry.path), st))
                else:
                    self._stats.skipped.append(entry.path)
        return dirs, files

    async def _tree_from_guest(self, source: str, destination: Path, create: bool,
                               force: bool) -> str:
        dirs, files = await self._walk_guest(source)
        self.progress.files_total = len(files)
        self.progress.bytes_total = sum(int(f["size"]) for f in files)
        name = check_name(source.rstrip("/").rsplit("/", 1)[-1] or "root")
        if destination.is_dir():
            top = destination / name
        elif destination.exists() or destination.is_symlink():
            raise ServiceError("exists", f"{destination} exists and is not a directory")
        else:
            top = destination
        try:
            top.mkdir(parents=create, exist_ok=True)
        except FileNotFoundError:
            raise ServiceError("not-found", f"{top.parent} does not exist "
                                            "(-CreateFullPath creates it)") from None
        except FileExistsError:
            raise ServiceError("exists", f"{top} exists and is not a directory") from None
        for d in dirs[1:]:
            try:
                (top / d["rel"]).mkdir(exist_ok=True)
            except FileExistsError:
                raise ServiceError("exists", f"{top / d['rel']} exists and is not a "
                                             "directory") from None
        for f in files:
            await self._file_from_guest(f"{source.rstrip('/')}/{f['rel']}", str(top / f["rel"]),
                                        exact=True, create=False, force=force)
        for d in reversed(dirs):
            path = top / d["rel"] if d["rel"] else top
            os.chmod(path, file_mode(int(d["mode"])))
            os.utime(path, ns=(int(d["atime_ns"]), int(d["mtime_ns"])))
        self._stats.directories = len(dirs)
        return str(top)

    async def _walk_guest(self, source: str) -> tuple[list[dict[str, Any]],
                                                       list[dict[str, Any]]]:
        top = await self._json(FcopyOp.STAT, {"path": source})
        dirs: list[dict[str, Any]] = [{**top, "rel": ""}]
        files: list[dict[str, Any]] = []
        i = 0
        while i < len(dirs):
            parent = dirs[i]
            i += 1
            path = f"{source.rstrip('/')}/{parent['rel']}" if parent["rel"] else source
            start: int | None = 0
            while start is not None:
                page = await self._json(FcopyOp.LIST, {"path": path, "start": start})
                for skipped in page.get("skipped") or []:
                    self._stats.skipped.append(f"{path}/{skipped}")
                for entry in page["entries"]:
                    name = check_name(entry["name"])
                    rel = f"{parent['rel']}/{name}" if parent["rel"] else name
                    if entry["type"] == "dir":
                        dirs.append({**entry, "rel": rel})
                    elif entry["type"] == "file":
                        files.append({**entry, "rel": rel})
                    else:
                        self._stats.skipped.append(f"{path}/{name}")
                start = page.get("next")
        return dirs, files
