"""Partial files: their names, where each end left them, and their removal.

docs/services/fcopy.md §4. A copy writes ``.<name>.<tag>.vmis-part`` beside
its destination (``tag``: the first 16 hex digits of the copy's resume
token, or of a tree copy's own id) and, for a resumable file, a
``.vmis-resume`` record beside it. Each end keeps a small index of the
directories that may hold such files (:class:`PartialIndex`, a JSON file in
the agent's state directory or the manager's data directory), so that
they can be listed (Get-VMFileCopy), discarded (Stop-VMFileCopy) and swept
on a schedule without walking whole filesystems:

- a tree copy's own partial files (small files not yet placed) can never be
  resumed: they go as soon as no open copy has their tag;
- a resumable file's go once untouched for ``max_age`` seconds.

Standard library only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmis.errors import ServiceError
from vmis.services.fcopy.paths import RootedPaths, shown, split_path

__all__ = ["PART_SUFFIX", "RESUME_SUFFIX", "PartFile", "PartialIndex", "part_names"]

_log = logging.getLogger("vmis.fcopy.partials")

PART_SUFFIX = ".vmis-part"
RESUME_SUFFIX = ".vmis-resume"
#: bytes of the destination name kept in partial file names (NAME_MAX is 255)
NAME_KEEP = 200
_PATTERN = re.compile(r"^\.(?P<keep>.+)\.(?P<tag>[0-9a-f]{16})(?P<kind>"
                      + re.escape(PART_SUFFIX) + "|" + re.escape(RESUME_SUFFIX)
                      + r")(?:\.tmp)?$", re.DOTALL)


def part_names(name: str, tag: str) -> tuple[str, str]:
    """The partial file and resume record names of a destination name and tag."""
    raw = name.encode("utf-8", "surrogateescape")[:NAME_KEEP]
    keep = raw.decode("utf-8", "surrogateescape")
    return f".{keep}.{tag[:16]}{PART_SUFFIX}", f".{keep}.{tag[:16]}{RESUME_SUFFIX}"


@dataclass(frozen=True)
class PartFile:
    """A partial file found on disk."""

    #: the destination it would become (its name cut to NAME_KEEP bytes)
    destination: str
    #: the partial file's own path
    path: str
    tag: str
    #: bytes in the partial file
    size: int
    #: the whole file's size, from its resume record (None: not resumable)
    total: int | None
    #: seconds since it was last written
    age: float
    #: the tag belongs to a tree copy
    tree: bool
    #: a copy is writing it now
    writing: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"destination": self.destination, "part": self.path, "tag": self.tag,
                "size": self.size, "total": self.total, "age": round(self.age, 1),
                "tree": self.tree, "writing": self.writing}


class PartialIndex:
    """The directories where this end's copies may have left partial files.

    :param path: the JSON file that keeps it across restarts (None: memory only).
    :param paths: opens those directories (the guest's policy, or ``/`` on the host).
    """

    def __init__(self, path: Path | None, paths: RootedPaths) -> None:
        self.path = path
        self.paths = paths
        self._lock = threading.Lock()
        #: (directory, tag) -> {"tree": bool, "created": epoch seconds}
        self._entries: dict[tuple[str, str], dict[str, Any]] = {}
        #: tags of copies writing now, how many each (the sweep leaves them alone)
        self._writing: dict[str, int] = {}
        self._load()

    # Section: the index

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            _log.warning("ignoring unreadable %s: %s", self.path, exc)
            return
        for entry in data.get("entries", []) if isinstance(data, dict) else []:
            if isinstance(entry, dict) and isinstance(entry.get("dir"), str) \
                    and isinstance(entry.get("tag"), str):
                self._entries[(entry["dir"], entry["tag"][:16])] = {
                    "tree": bool(entry.get("tree")), "created": entry.get("created", 0)}

    def _save(self) -> None:
        if self.path is None:
            return
        body = json.dumps({"v": 1, "entries": [{"dir": d, "tag": t, **v} for (d, t), v
                                               in sorted(self._entries.items())]}).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_bytes(body)
            os.replace(tmp, self.path)
        except OSError as exc:
            # Only the clean-up misses them then; the copy itself goes on.
            _log.warning("cannot write %s: %s", self.path, exc)

    def add(self, directory: str, tag: str, tree: bool = False) -> None:
        """A copy may leave partial files tagged *tag* in *directory* (below it: *tree*)."""
        with self._lock:
            if (directory, tag[:16]) not in self._entries:
                self._entries[(directory, tag[:16])] = {"tree": tree, "created": time.time()}
                self._save()

    def remove(self, directory: str, tag: str) -> None:
        """Nothing tagged *tag* is left in *directory*."""
        with self._lock:
            if self._entries.pop((directory, tag[:16]), None) is not None:
                self._save()

    def hold(self, tag: str) -> None:
        """A copy tagged *tag* is writing: its partial files are not stale, whatever their age."""
        with self._lock:
            self._writing[tag[:16]] = self._writing.get(tag[:16], 0) + 1

    def release(self, tag: str) -> None:
        """The copy tagged *tag* stopped writing."""
        with self._lock:
            left = self._writing.get(tag[:16], 0) - 1
            if left > 0:
                self._writing[tag[:16]] = left
            else:
                self._writing.pop(tag[:16], None)

    def entries(self) -> list[tuple[str, str, bool]]:
        """``(directory, tag, tree)`` of every entry."""
        with self._lock:
            return [(d, t, bool(v["tree"])) for (d, t), v in self._entries.items()]

    # Section: what is on disk

    def scan(self) -> list[PartFile]:
        """The partial files of every entry (a tree's: anywhere below its top)."""
        found: list[PartFile] = []
        with self._lock:
            writing = set(self._writing)
        for directory, tag, tree in self.entries():
            found += [dataclasses.replace(p, writing=p.tag in writing)
                      for p, _, name in self._parts(directory, tag, tree)
                      if name.endswith(PART_SUFFIX)]
        return found

    def _parts(self, directory: str, tag: str,
               tree: bool) -> Iterator[tuple[PartFile, int, str]]:
        """Partial files and records of one entry: ``(file, its directory fd, name)``.

        A tree's top holds its own partial files (tag *tag*) and resumable
        ones of its large files (any tag); a plain entry holds *tag*'s only.
        """
        try:
            top = self.paths.resolve(split_path(directory))
        except (ServiceError, OSError):
            return
        with top:
            if top.name is not None and not top.is_dir:
                return
            try:
                self.paths.check(top, "")
                fd = self.paths.open_dir(top)
            except (ServiceError, OSError):
                return  # outside the policy now, or gone: not ours to touch
        now = time.time()
        stack = [(fd, directory.rstrip("/") or "/")]
        try:
            while stack:
                dir_fd, dir_path = stack.pop()
                try:
                    yield from self._in_dir(dir_fd, dir_path, tag, tree, now=now, below=stack)
                finally:
                    os.close(dir_fd)
        finally:
            for dir_fd, _ in stack:
                os.close(dir_fd)

    @staticmethod
    def _in_dir(dir_fd: int, dir_path: str, tag: str, tree: bool, *, now: float,
                below: list[tuple[int, str]]) -> Iterator[tuple[PartFile, int, str]]:
        base = dir_path.rstrip("/")
        for entry in os.scandir(dir_fd):
            match = _PATTERN.match(entry.name)
            if match is None or (not tree and match["tag"] != tag):
                if tree and match is None and entry.is_dir(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        below.append((os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY
                                              | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd),
                                      f"{base}/{entry.name}"))
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and entry.name.endswith(PART_SUFFIX):
                # a staged tree (tree_writer): its large files' records make it resumable
                resumable = _holds_records(dir_fd, entry.name)
                yield PartFile(destination=f"{base}/{match['keep']}", path=f"{base}/{entry.name}",
                               tag=match["tag"], size=st.st_size, total=None,
                               age=max(0.0, now - st.st_mtime), tree=not resumable), \
                    dir_fd, entry.name
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            total, name = None, None
            if entry.name.endswith(PART_SUFFIX):
                total, name = _record_of(
                    dir_fd, f".{match['keep']}.{match['tag']}{RESUME_SUFFIX}")
            part = PartFile(destination=f"{base}/{name or match['keep']}",
                            path=f"{base}/{entry.name}", tag=match["tag"], size=st.st_size,
                            total=total, age=max(0.0, now - st.st_mtime),
                            tree=tree and match["tag"] == tag)
            yield part, dir_fd, entry.name

    # Section: removal

    def sweep(self, max_age: float, open_tags: Collection[str] = ()) -> list[str]:
        """Remove what no copy can use any more; return the partial files removed.

        A tree copy's own partial files go once no copy with its tag writes
        (:meth:`hold`, or *open_tags*); a resumable file's once untouched for
        *max_age* seconds (and not being written). Entries with nothing left
        are dropped.
        """
        with self._lock:
            open_tags = {*open_tags, *self._writing}
        removed: list[str] = []
        for directory, tag, tree in self.entries():
            left = False
            for part, dir_fd, name in self._parts(directory, tag, tree):
                if part.tag in open_tags or not (part.tree or part.age >= max_age):
                    left = True
                    continue
                _remove(dir_fd, name)
                if name.endswith(PART_SUFFIX):
                    removed.append(part.path)
            if not left and tag not in open_tags:
                self.remove(directory, tag)
        if removed:
            _log.info("removed %d stale partial file(s): %s", len(removed),
                      ", ".join(shown(p) for p in removed[:5]))
        return removed

    def discard(self, keep: Callable[[PartFile], bool]) -> list[str]:
        """Remove every partial file (and record) *keep* says no to; return those removed."""
        removed: list[str] = []
        for directory, tag, tree in self.entries():
            for part, dir_fd, name in self._parts(directory, tag, tree):
                if keep(part):
                    continue
                _remove(dir_fd, name)
                if name.endswith(PART_SUFFIX):
                    removed.append(part.path)
        return removed


def _remove(dir_fd: int, name: str) -> None:
    """Remove a partial file, or a staged tree's whole directory."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except IsADirectoryError:
        shutil.rmtree(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _holds_records(dir_fd: int, name: str) -> bool:
    """Whether a staged tree holds resume records (of large files) anywhere below it."""
    try:
        top = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                      dir_fd=dir_fd)
    except OSError:
        return False
    for _, _, files, _ in os.fwalk(dir_fd=top):
        if any(f.endswith(RESUME_SUFFIX) for f in files):
            os.close(top)
            return True
    os.close(top)
    return False


def _record_of(dir_fd: int, name: str) -> tuple[int | None, str | None]:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            body = json.loads(os.read(fd, 65536))
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return None, None
    if not isinstance(body, dict):
        return None, None
    size, dest = body.get("size"), body.get("name")
    return (size if isinstance(size, int) else None), (dest if isinstance(dest, str) else None)
