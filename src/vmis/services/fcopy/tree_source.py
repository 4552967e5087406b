"""The sending end of a tree copy: the tree walked, and its small files read and hashed.

docs/services/fcopy.md §3.2. :func:`walk` lists a directory tree once, for
the totals and for the receiver: directories (parents first), regular
files, and symbolic links by the copy's link policy; everything else is
skipped with its reason. :class:`TreeSource` then reads the files in
batches, each whole, with its SHA-256. The guest service and the host's
engine both use them (each with its own :class:`~.paths.RootedPaths`: the
guest's policy, or ``/`` on the host). Blocking; standard library only.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from vmis.errors import ServiceError
from vmis.services.fcopy.dir_cache import DIR_FLAGS, DirCache
from vmis.services.fcopy.file_io import os_error
from vmis.services.fcopy.metadata import entry_type
from vmis.services.fcopy.paths import RootedPaths, shown

__all__ = ["LINK_POLICIES", "Entry", "Tree", "TreeSource", "walk"]

#: what a tree copy does with a symbolic link: skip it (the default), copy
#: the link itself (-CopySymlinks) or what it points to (-FollowSymlinks)
LINK_POLICIES = ("skip", "copy", "follow")

_SPECIAL = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
            stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


@dataclass(slots=True)
class Entry:
    """One directory, file or link of a tree."""

    #: its path below the top ("" for the top), names separated by "/"
    rel: str
    #: ``dir``, ``file`` or ``link``
    kind: str
    size: int
    mode: int
    atime_ns: int
    mtime_ns: int
    #: where it is: a path from the root without links (a followed link's target)
    parts: tuple[str, ...]
    #: a link's target, as it reads (-CopySymlinks)
    target: str | None = None

    @classmethod
    def of(cls, rel: str, kind: str, st: os.stat_result, parts: tuple[str, ...],
           target: str | None = None) -> Entry:
        return cls(rel, kind, st.st_size if kind == "file" else 0, stat.S_IMODE(st.st_mode),
                   st.st_atime_ns, st.st_mtime_ns, parts, target)

    def to_wire(self) -> list[Any]:
        """``[rel, kind, size, mode, atime_ns, mtime_ns, target]`` (docs/services/fcopy.md §2)."""
        return [self.rel, self.kind, self.size, self.mode, self.atime_ns, self.mtime_ns,
                self.target]


@dataclass
class Tree:
    """A walked tree."""

    #: the top, resolved (links followed)
    top: tuple[str, ...]
    #: the top first, every directory after its parent
    dirs: list[Entry] = field(default_factory=list)
    files: list[Entry] = field(default_factory=list)
    #: symbolic links to copy as links (-CopySymlinks)
    links: list[Entry] = field(default_factory=list)
    #: ``(rel, why)`` of what is not copied
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def entries(self) -> list[Entry]:
        """Everything to copy, in the order a receiver makes it: directories first."""
        return [*self.dirs, *self.files, *self.links]


def walk(paths: RootedPaths, top: tuple[str, ...], links: str = "skip") -> Tree:
    """Walk the directory *top* (resolved, allowed, a directory).

    :param links: one of :data:`LINK_POLICIES`. Followed links resolve as
        every path does (inside the root; chroot-style), and one whose
        target is outside the allowed roots, missing, or a directory that
        contains it (a loop) is skipped.
    :raise ServiceError: When a directory cannot be listed.
    """
    if links not in LINK_POLICIES:
        raise ServiceError("bad-request", f"links must be one of {', '.join(LINK_POLICIES)}")
    walker = _Walker(paths, links)
    cache = DirCache(paths.open_root(), "")
    try:
        fd = cache.get(top)
        tree = Tree(top)
        tree.dirs.append(Entry.of("", "dir", os.fstat(fd), top))
        walker.tree = tree
        walker.walk_dir(os.dup(fd), "", top, frozenset())
    finally:
        cache.close()
    return tree


class _Walker:
    def __init__(self, paths: RootedPaths, links: str) -> None:
        self.paths = paths
        self.links = links
        self.roots = paths.resolved_roots() if links == "follow" else []
        self.tree = Tree(())

    def walk_dir(self, fd: int, rel: str, parts: tuple[str, ...],
                 ancestors: frozenset[tuple[int, int]]) -> None:
        """Walk one directory (*fd*, closed here) and, depth first, those below it."""
        try:
            st = os.fstat(fd)
            ancestors = ancestors | {(st.st_dev, st.st_ino)}
            try:
                found = sorted(os.scandir(fd), key=lambda e: e.name)
            except OSError as exc:
                raise os_error(exc, f"cannot list {shown('/' + '/'.join(parts))}") from exc
            below: list[tuple[str, tuple[str, ...], bool]] = []
            for e in found:
                crel = f"{rel}/{e.name}" if rel else e.name
                try:
                    est = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone since the listing
                self._entry(fd, e.name, crel, (*parts, e.name), st=est, below=below)
            for crel, cparts, followed in below:
                self._descend(fd, crel, cparts, followed, ancestors)
        finally:
            os.close(fd)

    def _entry(self, fd: int, name: str, rel: str, parts: tuple[str, ...], *,
               st: os.stat_result, below: list[tuple[str, tuple[str, ...], bool]]) -> None:
        kind = entry_type(st.st_mode)
        followed = False
        if kind == "link":
            if self.links == "copy":
                self.tree.links.append(Entry.of(rel, "link", st, parts,
                                                os.readlink(name, dir_fd=fd)))
                return
            if self.links == "skip":
                self.tree.skipped.append((rel, "a symbolic link"))
                return
            target = self._follow(rel, parts)
            if target is None:
                return
            st, parts = target
            kind, followed = entry_type(st.st_mode), True
        if kind == "dir":
            self.tree.dirs.append(Entry.of(rel, "dir", st, parts))
            below.append((rel, parts, followed))
        elif kind == "file":
            self.tree.files.append(Entry.of(rel, "file", st, parts))
        else:
            self.tree.skipped.append((rel, _SPECIAL.get(stat.S_IFMT(st.st_mode),
                                                        "not a regular file")))

    def _follow(self, rel: str,
                parts: tuple[str, ...]) -> tuple[os.stat_result, tuple[str, ...]] | None:
        try:
            r = self.paths.resolve(list(parts))
        except ServiceError as exc:
            self.tree.skipped.append((rel, "a symbolic link loop" if exc.code == "failed"
                                      else "a dangling symbolic link"))
            return None
        with r:
            if not self.paths.allowed_path(r.parts, self.roots):
                self.tree.skipped.append((rel, "a symbolic link to outside the allowed roots"))
                return None
            if r.name is None:
                return os.fstat(r.dir_fd), tuple(r.parts)
            if r.st is None:
                self.tree.skipped.append((rel, "a dangling symbolic link"))
                return None
            return r.st, tuple(r.parts)

    def _descend(self, fd: int, rel: str, parts: tuple[str, ...], followed: bool,
                 ancestors: frozenset[tuple[int, int]]) -> None:
        try:
            if followed:
                with self.paths.resolve(list(parts)) as r:
                    child = self.paths.open_dir(r)
            else:
                child = os.open(parts[-1], DIR_FLAGS, dir_fd=fd)
        except (OSError, ServiceError):
            self.tree.skipped.append((rel, "a directory that vanished or changed"))
            self._drop_dir(rel)
            return
        st = os.fstat(child)
        if (st.st_dev, st.st_ino) in ancestors:
            os.close(child)
            self.tree.skipped.append((rel, "a symbolic link to a directory that contains it"))
            self._drop_dir(rel)
            return
        self.walk_dir(child, rel, parts, ancestors)

    def _drop_dir(self, rel: str) -> None:
        self.tree.dirs = [d for d in self.tree.dirs if d.rel != rel]


class TreeSource:
    """Reads the files of a walked tree: small ones whole, in batches, with their SHA-256.

    :param paths: the same paths the tree was walked with.
    """

    def __init__(self, paths: RootedPaths) -> None:
        self._dirs = DirCache(paths.open_root(), "")

    def _open(self, entry: Entry) -> tuple[int, os.stat_result]:
        try:
            fd = os.open(entry.parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                         | os.O_NONBLOCK, dir_fd=self._dirs.get(entry.parts[:-1]))
        except OSError as exc:
            raise os_error(exc, f"cannot read {_where(entry)}") from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ServiceError("failed", f"{_where(entry)} is no longer a regular file")
        return fd, st

    def open(self, entry: Entry) -> int:
        """Open a file of the tree for reading (the caller closes the descriptor).

        :raise ServiceError: When it is gone, or no longer a regular file.
        """
        return self._open(entry)[0]

    def read(self, entry: Entry) -> tuple[bytes, os.stat_result, str]:
        """A whole file: its bytes, its stat, its SHA-256.

        :raise ServiceError: ``failed`` when it changed while it was read.
        """
        fd, st = self._open(entry)
        try:
            data = os.read(fd, st.st_size) if st.st_size else b""
            while len(data) < st.st_size:
                more = os.read(fd, st.st_size - len(data))
                if not more:
                    break
                data += more
            # A file that grew or shrank or was written meanwhile has another
            # size or time now: the same check as a large file's (Reader.finish).
            after = os.fstat(fd)
        except OSError as exc:
            raise os_error(exc, f"reading {_where(entry)}") from exc
        finally:
            os.close(fd)
        if len(data) != st.st_size or (after.st_size, after.st_mtime_ns) != \
                (st.st_size, st.st_mtime_ns):
            raise ServiceError("failed", f"{_where(entry)} changed while being copied")
        return data, st, hashlib.sha256(data).hexdigest()

    def close(self) -> None:
        self._dirs.close()


def _where(entry: Entry) -> str:
    return shown("/" + "/".join(entry.parts))
