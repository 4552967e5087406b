"""The receiving end of a tree copy: the whole tree made durable, then put in place.

docs/services/fcopy.md §3.2. :func:`open_tree` starts receiving a tree at
its destination, by cp -r's rules, in one of two ways:

- **staged**, when the destination's top does not exist yet (the usual
  case): the tree is written into a hidden directory beside it,
  ``.<name>.<tag>.vmis-part``, every file straight under its own name; the
  commit makes it durable (one ``syncfs``) and renames that one directory
  into place. A file costs what it costs ``tar x``, and nothing of the tree
  is visible until all of it is;
- **merged**, into an existing directory (-Force replaces files there):
  each file is written into a partial file beside its destination and the
  commit makes them all durable at once, then moves each into place.

Large files come from a :class:`~.receiver.Receiver` each (resumable;
:meth:`~.receiver.Receiver.commit` with ``place=False``) and are taken in
with :meth:`TreeWriter.adopt`. The staging directory's name depends only
on the copy (its tag), so the same copy run again finds it and resumes its
large files. Either way a destination never holds a partial file.

Both ends use it: the guest service for trees copied into the guest, the
host's engine for trees copied out of it. Blocking (a worker thread runs
it); standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from vmis.errors import ServiceError
from vmis.services.fcopy.claims import CLAIMS, Claim
from vmis.services.fcopy.dir_cache import DIR_FLAGS, DirCache
from vmis.services.fcopy.file_io import os_error, place_file, sync_filesystem
from vmis.services.fcopy.metadata import file_mode, set_times
from vmis.services.fcopy.partials import PartialIndex, part_names
from vmis.services.fcopy.paths import RootedPaths, check_name, shown, split_rel

__all__ = ["DirMeta", "TreeWriter", "open_tree"]

#: ``(rel, mode, atime_ns, mtime_ns)`` of a directory; rel "" is the top
DirMeta = tuple[str, int, int, int]
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def open_tree(paths: RootedPaths, path: str, name: str, *, create: bool, force: bool,
              tag: str, what: str, gate: Callable[[], None] | None = None,
              index: PartialIndex | None = None) -> TreeWriter:
    """Start receiving a tree at *path* (cp -r's rules: :meth:`RootedPaths.tree_top`).

    :param name: the source's name (the tree goes inside an existing *path* under it).
    :param tag: 16 hex digits naming this copy: the same copy gets the same tag.
    :raise ServiceError: ``exists``, ``not-found``, ``denied``, ``busy``.
    """
    with paths.tree_top(path, name, create=create, what=what) as r:
        if r.name is None or r.st is not None:
            return TreeWriter(paths.open_dir(r), r.path, tag, force=force, gate=gate,
                              index=index)
        claim = CLAIMS.take(CLAIMS.key(r.dir_fd, r.name), r.shown)
        try:
            fd, tag, reused = _staging(r.dir_fd, r.name, tag)
            return TreeWriter(fd, r.path, tag, force=force, gate=gate, index=index,
                              staged=_Staging(os.dup(r.dir_fd), r.name,
                                              part_names(r.name, tag)[0], claim, reused))
        except OSError as exc:
            CLAIMS.release(claim)
            raise os_error(exc, f"cannot make {r.shown}") from exc
        except BaseException:
            CLAIMS.release(claim)
            raise


def _staging(parent_fd: int, name: str, tag: str) -> tuple[int, str, bool]:
    """The staging directory of a tree copy: ``(its descriptor, the tag, reused)``.

    An earlier run's is taken again (its large files resume) only if it is
    this process's own, 0700, as it was made: the tag can be worked out from
    the copy's paths, and a directory someone else made there could hold
    links to files this copy would then overwrite. Otherwise a fresh tag.
    """
    for attempt in (tag, secrets.token_hex(8)):
        staging = part_names(name, attempt)[0]
        try:
            os.mkdir(staging, 0o700, dir_fd=parent_fd)
            return os.open(staging, DIR_FLAGS, dir_fd=parent_fd), attempt, False
        except FileExistsError:
            pass
        try:
            fd = os.open(staging, DIR_FLAGS, dir_fd=parent_fd)
        except OSError:
            continue
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and not st.st_mode & 0o077:
            return fd, attempt, True
        os.close(fd)
    raise ServiceError("failed", f"cannot make a staging directory beside {shown(name)}")


@dataclass
class _Staging:
    """A staged tree: the directory beside its destination that becomes it."""

    parent_fd: int
    name: str
    staging: str
    claim: Claim
    #: an earlier run left it: what that run left in it is removed at commit
    reused: bool


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
    #: the link's own access and modification times
    times: tuple[int, int] = (0, 0)


class TreeWriter:
    """A tree being received into the directory *top_fd* (made by :func:`open_tree`).

    :param top_fd: the directory written into (the writer takes ownership).
    :param top: the tree's destination (answers and the partial index).
    :param tag: the copy's tag (16 hex digits) in its partial files' names.
    :param force: -Force: existing files are replaced.
    :param gate: waited on before writing (the guest's thaw), or None.
    :param index: notes the tree so that a killed copy's partial files are found.
    """

    def __init__(self, top_fd: int, top: str, tag: str, *, force: bool,
                 gate: Callable[[], None] | None = None, index: PartialIndex | None = None,
                 staged: _Staging | None = None) -> None:
        self.top = top.rstrip("/") or "/"
        self.tag = tag[:16]
        self.force = force
        self._gate = gate
        self._dirs = DirCache(top_fd, self.top)
        self._index = index
        self._staged = staged
        self._pending: list[_Pending] = []
        #: directory names checked already (a peer's names are checked once each)
        self._checked: dict[str, tuple[str, ...]] = {"": ()}
        #: device -> a directory on it: what commit() syncs
        self._devices: dict[int, tuple[str, ...]] = {}
        #: what this run wrote: a reused staging directory keeps nothing else
        self._made: set[tuple[str, ...]] = {()}
        self._written: set[tuple[tuple[str, ...], str]] = set()
        self.files = 0
        self.bytes = 0
        #: a large file was started: its partial file may outlive the tree
        self._resumable = False
        self._indexed = self.top.rsplit("/", 1)[0] or "/" if staged else self.top
        if index is not None:
            index.hold(self.tag)
            index.add(self._indexed, self.tag, tree=staged is None)

    def _shown(self, names: Sequence[str]) -> str:
        return shown(f"{self.top.rstrip('/')}/{'/'.join(names)}")

    def _wait(self) -> None:
        if self._gate is not None:
            self._gate()

    def _split(self, rel: str) -> tuple[tuple[str, ...], str]:
        """A peer's path below the top: its directory's names and its own, checked."""
        if not isinstance(rel, str) or rel.startswith("/"):
            raise ServiceError("bad-request", f"not a relative path: {rel!r}")
        where, _, name = rel.rpartition("/")
        names = self._checked.get(where)
        if names is None:
            names = self._checked[where] = tuple(split_rel(where))
        return names, check_name(name)

    # Section: receiving

    def make_dirs(self, rels: Iterable[str]) -> None:
        """Make directories (parents first; existing ones are fine, mode 0755 until commit)."""
        self._wait()
        for rel in rels:
            where, name = self._split(rel)
            parent = self._dirs.get(where)
            self._made.add((*where, name))
            try:
                os.mkdir(name, 0o755, dir_fd=parent)
            except FileExistsError:
                st = os.lstat(name, dir_fd=parent)
                if not stat.S_ISDIR(st.st_mode):
                    raise ServiceError("exists", f"{self._shown([*where, name])} exists and "
                                                 "is not a directory") from None
            except OSError as exc:
                raise os_error(exc, f"cannot make {self._shown([*where, name])}") from exc

    def _destination(self, rel: str,
                     claim: bool = True) -> tuple[tuple[str, ...], int, str, Claim | None]:
        """A file's directory, its descriptor and its name, checked and (*claim*) claimed.

        A staged tree's files need neither: nothing else writes there.
        """
        where, name = self._split(rel)
        dir_fd = self._dirs.get(where)
        if self._staged is not None:
            return where, dir_fd, name, None
        try:
            st: os.stat_result | None = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            st = None
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise ServiceError("exists", f"{self._shown([*where, name])} is a directory")
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise ServiceError("exists", f"{self._shown([*where, name])} exists and is "
                                             "not a regular file")
            if not self.force:
                raise ServiceError("exists", f"{self._shown([*where, name])} exists (-Force "
                                             "overwrites it)")
        dev_ino = os.fstat(dir_fd)
        self._devices.setdefault(dev_ino.st_dev, where)
        if not claim:
            return where, dir_fd, name, None
        return where, dir_fd, name, CLAIMS.take((dev_ino.st_dev, dev_ino.st_ino, name),
                                                self._shown([*where, name]))

    def put(self, rel: str, data: bytes | memoryview, *, mode: int, atime_ns: int,
            mtime_ns: int, sha256: str | None) -> str:
        """Write one whole file; return its SHA-256.

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
        target = name if self._staged is not None else part_names(name, self.tag)[0]
        flags = _NEW_FILE
        if self._staged is None or not self._staged.reused:
            flags |= os.O_EXCL  # never write through a name someone else made
            if self._staged is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target, dir_fd=dir_fd)  # a killed run's, or planted
        try:
            fd = os.open(target, flags, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            CLAIMS.release(claim)
            raise os_error(exc, f"cannot create a file in {self._shown(where)}") from exc
        if self._staged is None:
            self._pending.append(_Pending(where, target, name, claim))
        else:
            self._written.add((where, name))
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
        where, name = self._split(rel)
        self._pending.append(_Pending(where, part, name, claim, record))
        self._written.add((where, name))
        self.files += 1

    def link(self, rel: str, target: str, atime_ns: int, mtime_ns: int) -> None:
        """A symbolic link to make at commit (-CopySymlinks), with its own times."""
        if not isinstance(target, str) or not target or "\0" in target:
            raise ServiceError("bad-request", f"{shown(rel)}: not a valid link target")
        where, _, name, claim = self._destination(rel)
        self._pending.append(_Pending(where, part_names(name, self.tag)[0], name, claim,
                                      target=target, times=(atime_ns, mtime_ns)))
        self._written.add((where, name))

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
            if self._staged is not None and self._staged.reused:
                self._clear_leftovers()
            if self._staged is None:
                self._sync()  # every file durable before the first is in place
            for item in self._pending:
                self._place(item)
                placed += 1
                CLAIMS.release(item.claim)
                item.claim = None
            for rel, mode, atime_ns, mtime_ns in dirs:
                where, name = self._split(rel) if rel else ((), "")
                fd = self._dirs.get((*where, name) if rel else ())
                os.fchmod(fd, file_mode(mode))
                set_times(fd, atime_ns, mtime_ns)
            self._sync()  # the names, modes and times (staged: all of it, before the rename)
            if self._staged is not None:
                self._unstage(dirs)
        except BaseException as exc:
            del self._pending[:placed]
            self.abort()
            if isinstance(exc, OSError):
                raise os_error(exc, f"cannot finish {shown(self.top)}") from exc
            raise
        self._pending.clear()
        self._forget()
        self._dirs.close()
        return self.files

    def _sync(self) -> None:
        # Merged: before any file is placed; staged: before the tree is.
        for where in self._devices.values() or [()]:
            sync_filesystem(self._dirs.get(where))

    def _unstage(self, dirs: Sequence[DirMeta]) -> None:
        staged = self._staged
        assert staged is not None
        try:
            os.lstat(staged.name, dir_fd=staged.parent_fd)
        except FileNotFoundError:
            pass
        else:
            raise ServiceError("exists", f"{shown(self.top)} appeared during the copy")
        os.rename(staged.staging, staged.name, src_dir_fd=staged.parent_fd,
                  dst_dir_fd=staged.parent_fd)
        top = [d for d in dirs if d[0] == ""]
        if top:  # the rename may have touched the top's times
            set_times(self._dirs.base_fd, top[0][2], top[0][3])
            os.fsync(self._dirs.base_fd)
        os.fsync(staged.parent_fd)
        self._release_staging()

    def _place(self, item: _Pending) -> None:
        dir_fd = self._dirs.get(item.dir)
        what = self._shown([*item.dir, item.name])
        # Inside a staging directory nothing but this tree's own files can be in the way.
        force = self.force or self._staged is not None
        if item.target is None:
            place_file(dir_fd, item.part, item.name, force, what)
            if item.record is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(item.record, dir_fd=dir_fd)
            return
        if not force:
            try:
                os.symlink(item.target, item.name, dir_fd=dir_fd)
            except FileExistsError:
                raise ServiceError("exists", f"{what} exists (-Force overwrites it)") from None
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(item.part, dir_fd=dir_fd)
            os.symlink(item.target, item.part, dir_fd=dir_fd)
            place_file(dir_fd, item.part, item.name, True, what)
        os.utime(item.name, ns=item.times, dir_fd=dir_fd, follow_symlinks=False)

    def _clear_leftovers(self) -> None:
        """Remove what an earlier run of this copy left in the staging directory and this
        run did not write (its source changed since): the tree is this run's only."""
        keep = {(p.dir, p.part) for p in self._pending} | self._written
        self._clear((), keep)

    def _clear(self, where: tuple[str, ...], keep: set[tuple[tuple[str, ...], str]]) -> None:
        fd = self._dirs.get(where)
        for entry in list(os.scandir(fd)):
            if entry.is_dir(follow_symlinks=False):
                self._clear((*where, entry.name), keep)
                if (*where, entry.name) not in self._made:
                    os.rmdir(entry.name, dir_fd=self._dirs.get(where))
            elif (where, entry.name) not in keep:
                os.unlink(entry.name, dir_fd=self._dirs.get(where))

    def abort(self) -> None:
        """Give the tree up: small files go, large files' partial files stay for a resume."""
        kept = self._resumable
        for item in self._pending:
            if item.record is not None:
                kept = True
            elif item.target is None and self._staged is None:
                with contextlib.suppress(OSError, ServiceError):
                    os.unlink(item.part, dir_fd=self._dirs.get(item.dir))
            CLAIMS.release(item.claim)
        self._pending.clear()
        if self._staged is not None and not kept:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._staged.staging, dir_fd=self._staged.parent_fd)
        self._release_staging()
        self._forget(remove=not kept)
        self._dirs.close()

    def _release_staging(self) -> None:
        if self._staged is not None:
            CLAIMS.release(self._staged.claim)
            if self._staged.parent_fd >= 0:
                os.close(self._staged.parent_fd)
                self._staged.parent_fd = -1

    def _forget(self, remove: bool = True) -> None:
        if self._index is not None:
            if remove:
                self._index.remove(self._indexed, self.tag)
            self._index.release(self.tag)
            self._index = None

