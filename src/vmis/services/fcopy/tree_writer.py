"""The receiving end of a tree copy: every file written beside its place, all placed at the end.

docs/services/fcopy.md §3.2. :class:`TreeWriter` receives a directory tree
into its top directory: it makes the directories, writes each small file
whole into a partial file beside its destination (verified against the
sender's SHA-256 before it is written), takes in the verified partial
files of large files (:meth:`~.receiver.Receiver.commit` with
``place=False``), and at :meth:`commit` makes them all durable at once
(one ``syncfs`` per filesystem rather than an fsync per file), moves them
into place, sets the directories' modes and times, and syncs again. A
destination never holds a partial file, and until the commit none of the
tree's files is in place.

Both ends use it: the guest service for trees copied into the guest, the
host's engine for trees copied out of it. Blocking (a worker thread runs
it); standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from vmis.errors import ServiceError
from vmis.services.fcopy.claims import CLAIMS, Claim
from vmis.services.fcopy.dir_cache import DirCache
from vmis.services.fcopy.file_io import os_error, place_file, sync_filesystem
from vmis.services.fcopy.metadata import file_mode, set_times
from vmis.services.fcopy.partials import PartialIndex, part_names
from vmis.services.fcopy.paths import shown, split_rel

__all__ = ["DirMeta", "TreeWriter"]

#: ``(rel, mode, atime_ns, mtime_ns)`` of a directory; rel "" is the top
DirMeta = tuple[str, int, int, int]


@dataclass
class _Pending:
    dir: tuple[str, ...]
    part: str
    name: str
    claim: Claim | None
    #: a large file's resume record, removed once the file is in place
    record: str | None = None
    #: a symbolic link to make (its target) instead of a file to move
    target: str | None = None


class TreeWriter:
    """A tree being received into the directory *top_fd*.

    :param top_fd: the tree's top directory (the writer takes ownership).
    :param top: its path (answers and the partial index).
    :param tag: the copy's tag (16 hex digits) in its partial files' names.
    :param force: -Force: existing files are replaced.
    :param gate: waited on before writing (the guest's thaw), or None.
    :param index: notes the tree so that a killed copy's partial files are found.
    """

    def __init__(self, top_fd: int, top: str, tag: str, *, force: bool,
                 gate: Callable[[], None] | None = None,
                 index: PartialIndex | None = None) -> None:
        self.top = top.rstrip("/") or "/"
        self.tag = tag[:16]
        self.force = force
        self._gate = gate
        self._dirs = DirCache(top_fd, self.top)
        self._index = index
        self._pending: list[_Pending] = []
        #: device -> a directory on it: what commit() syncs
        self._devices: dict[int, tuple[str, ...]] = {}
        self.files = 0
        self.bytes = 0
        #: a large file was started: its partial file may outlive the tree
        self._resumable = False
        if index is not None:
            index.hold(self.tag)
            index.add(self.top, self.tag, tree=True)

    def _shown(self, names: Sequence[str]) -> str:
        return shown(f"{self.top.rstrip('/')}/{'/'.join(names)}")

    def _wait(self) -> None:
        if self._gate is not None:
            self._gate()

    # Section: receiving

    def make_dirs(self, rels: Iterable[str]) -> None:
        """Make directories (parents first; existing ones are fine, mode 0755 until commit)."""
        self._wait()
        for rel in rels:
            names = split_rel(rel)
            parent = self._dirs.get(names[:-1])
            try:
                os.mkdir(names[-1], 0o755, dir_fd=parent)
            except FileExistsError:
                st = os.lstat(names[-1], dir_fd=parent)
                if not stat.S_ISDIR(st.st_mode):
                    raise ServiceError("exists", f"{self._shown(names)} exists and is not a "
                                                 "directory") from None
            except OSError as exc:
                raise os_error(exc, f"cannot make {self._shown(names)}") from exc

    def _destination(self, rel: str,
                     claim: bool = True) -> tuple[tuple[str, ...], int, str, Claim | None]:
        """A file's directory, its descriptor and its name, checked and (*claim*) claimed."""
        names = split_rel(rel)
        where, name = tuple(names[:-1]), names[-1]
        dir_fd = self._dirs.get(where)
        try:
            st: os.stat_result | None = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            st = None
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise ServiceError("exists", f"{self._shown(names)} is a directory")
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise ServiceError("exists", f"{self._shown(names)} exists and is not a "
                                             "regular file")
            if not self.force:
                raise ServiceError("exists", f"{self._shown(names)} exists (-Force "
                                             "overwrites it)")
        dev_ino = os.fstat(dir_fd)
        self._devices.setdefault(dev_ino.st_dev, where)
        if not claim:
            return where, dir_fd, name, None
        return where, dir_fd, name, CLAIMS.take((dev_ino.st_dev, dev_ino.st_ino, name),
                                                self._shown(names))

    def put(self, rel: str, data: bytes | memoryview, *, mode: int, atime_ns: int,
            mtime_ns: int, sha256: str | None) -> str:
        """Write one whole file into its partial file; return its SHA-256.

        :param sha256: the sender's hash: a mismatch writes nothing.
        :raise ServiceError: ``failed`` for a mismatch, ``exists`` by the rules
            of docs/services/fcopy.md §3.1.
        """
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and digest != sha256:
            raise ServiceError("failed", f"{shown(rel)}: SHA-256 mismatch (sent {sha256}, "
                                         f"received {digest}); nothing was written")
        self._wait()
        where, dir_fd, name, claim = self._destination(rel)
        part, _ = part_names(name, self.tag)
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            CLAIMS.release(claim)
            raise os_error(exc, f"cannot create a file in {self._shown(where)}") from exc
        self._pending.append(_Pending(where, part, name, claim))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, file_mode(mode))
            set_times(fd, atime_ns, mtime_ns)
        except OSError as exc:
            raise os_error(exc, f"writing {self._shown([*where, name])}") from exc
        finally:
            os.close(fd)
        self.files += 1
        self.bytes += len(data)
        return digest

    def large(self, rel: str) -> tuple[int, str]:
        """Where a large file goes, checked: a descriptor of its directory (the caller's,
        for a :class:`~.receiver.Receiver`, which claims it) and its name."""
        _, dir_fd, name, _ = self._destination(rel, claim=False)
        self._resumable = True
        return os.dup(dir_fd), name

    def adopt(self, rel: str, part: str, record: str, claim: Claim | None) -> None:
        """Take in a large file's verified partial file (and its claim), to place at commit."""
        names = split_rel(rel)
        self._pending.append(_Pending(tuple(names[:-1]), part, names[-1], claim, record))
        self.files += 1

    def link(self, rel: str, target: str) -> None:
        """A symbolic link to make at commit (-CopySymlinks)."""
        if not isinstance(target, str) or not target or "\0" in target:
            raise ServiceError("bad-request", f"{shown(rel)}: not a valid link target")
        where, _, name, claim = self._destination(rel)
        self._pending.append(_Pending(where, part_names(name, self.tag)[0], name, claim,
                                      target=target))

    # Section: finishing

    def commit(self, dirs: Sequence[DirMeta]) -> int:
        """Make every file durable, place it, set the directories' modes and times.

        :param dirs: the directories' metadata, children before parents.
        :return: the files and links placed.
        :raise ServiceError: ``exists`` when a destination appeared meanwhile
            (files placed before it stay, the rest are removed).
        """
        self._wait()
        placed = 0
        try:
            self._sync()
            for item in self._pending:
                self._place(item)
                placed += 1
                CLAIMS.release(item.claim)
                item.claim = None
            for rel, mode, atime_ns, mtime_ns in dirs:
                fd = self._dirs.get(split_rel(rel) if rel else ())
                os.fchmod(fd, file_mode(mode))
                set_times(fd, atime_ns, mtime_ns)
            self._sync()
        except BaseException as exc:
            del self._pending[:placed]
            self.abort()
            if isinstance(exc, OSError):
                raise os_error(exc, f"cannot finish {shown(self.top)}") from exc
            raise
        self._pending.clear()
        if self._index is not None:
            self._index.remove(self.top, self.tag)
            self._index.release(self.tag)
            self._index = None
        self._dirs.close()
        return self.files

    def _sync(self) -> None:
        for where in self._devices.values() or [()]:
            sync_filesystem(self._dirs.get(where))

    def _place(self, item: _Pending) -> None:
        dir_fd = self._dirs.get(item.dir)
        what = self._shown([*item.dir, item.name])
        if item.target is None:
            place_file(dir_fd, item.part, item.name, self.force, what)
            if item.record is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(item.record, dir_fd=dir_fd)
            return
        if not self.force:
            try:
                os.symlink(item.target, item.name, dir_fd=dir_fd)
            except FileExistsError:
                raise ServiceError("exists", f"{what} exists (-Force overwrites it)") from None
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(item.part, dir_fd=dir_fd)
        os.symlink(item.target, item.part, dir_fd=dir_fd)
        place_file(dir_fd, item.part, item.name, True, what)

    def abort(self) -> None:
        """Give the tree up: small files' partial files go, large files' stay for a resume."""
        kept = self._resumable
        for item in self._pending:
            if item.record is not None:
                kept = True
            elif item.target is None:
                with contextlib.suppress(OSError, ServiceError):
                    os.unlink(item.part, dir_fd=self._dirs.get(item.dir))
            CLAIMS.release(item.claim)
        self._pending.clear()
        if self._index is not None:
            if not kept:
                self._index.remove(self.top, self.tag)
            self._index.release(self.tag)
            self._index = None
        self._dirs.close()
