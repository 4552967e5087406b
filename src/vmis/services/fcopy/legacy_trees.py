"""Trees file by file: the host's end of a tree copy with a guest that speaks fcopy 1.0.

docs/services/fcopy.md §3.2 (an older guest). An agent older than the tree
operations still copies trees: directories are made one request each, every
file is its own copy (:class:`~vmis.services.fcopy.file_copier.FileCopier`),
placed as soon as it is verified; the directories' modes and times are set
last. Such an agent cannot carry names that are not UTF-8 or make
symbolic links: those are skipped and listed. No host-only dependency.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vmis.errors import ServiceError
from vmis.services.fcopy import FcopyOp
from vmis.services.fcopy.file_copier import FileCopier
from vmis.services.fcopy.metadata import file_mode
from vmis.services.fcopy.paths import check_name, split_path
from vmis.services.fcopy.tree_source import walk

__all__ = ["LegacyTrees"]

_NOT_UTF8 = "a name that is not UTF-8 (the guest's agent is older than fcopy 1.1)"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class LegacyTrees(FileCopier):
    """Tree copies through the 1.0 operations; constructed as :class:`FileCopier`."""

    async def _tree_to_guest_legacy(self, source: Path, destination: str, create: bool,
                                    force: bool) -> str:
        tree = await self._in_worker(walk, self._local, tuple(split_path(str(source))), "skip")
        self._stats.skipped += [(f"{source}/{rel}", why) for rel, why in tree.skipped]
        self._stats.skipped += [(f"{source}/{e.rel}", _NOT_UTF8) for e in tree.entries()
                                if not _utf8(e.rel)]
        dirs = [d for d in tree.dirs if _utf8(d.rel)]
        files = [f for f in tree.files if _utf8(f.rel)]
        self.progress.files_total = len(files)
        self.progress.bytes_total = sum(f.size for f in files)
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
            await self._file_to_guest(Path("/" + "/".join(f.parts)), f"{top}/{f.rel}",
                                      f.parts[-1], exact=True, create=False, force=force)
        for d in reversed(dirs):
            await self._json(FcopyOp.SETMETA, {"path": f"{top}/{d.rel}" if d.rel else top,
                                               "mode": file_mode(d.mode),
                                               "atime_ns": d.atime_ns, "mtime_ns": d.mtime_ns})
        self._stats.directories = len(dirs)
        return top

    async def _tree_from_guest_legacy(self, source: str, destination: Path, create: bool,
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
            await self._in_worker(_set_meta, path, d)
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
                    self._stats.skipped.append((f"{path}/{skipped}", _NOT_UTF8))
                for entry in page["entries"]:
                    name = check_name(entry["name"])
                    rel = f"{parent['rel']}/{name}" if parent["rel"] else name
                    if entry["type"] == "dir":
                        dirs.append({**entry, "rel": rel})
                    elif entry["type"] == "file":
                        files.append({**entry, "rel": rel})
                    else:
                        why = "a symbolic link" if entry["type"] == "link" else \
                            "not a regular file"
                        self._stats.skipped.append((f"{path}/{name}", why))
                start = page.get("next")
        return dirs, files


def _set_meta(path: Path, d: dict[str, Any]) -> None:
    os.chmod(path, file_mode(int(d["mode"])))
    os.utime(path, ns=(int(d["atime_ns"]), int(d["mtime_ns"])))
