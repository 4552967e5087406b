"""Guest paths for file copy: resolved inside a root, checked against a policy.

docs/services/fcopy.md §5. A guest path is resolved one component at a time
with directory descriptors (``openat``), the way ``openat2(RESOLVE_IN_ROOT)``
would:

- the path must be absolute, and a ``..`` component in it is refused
  (``denied``): callers name what they mean;
- a symbolic link met on the way is followed *inside the root*: an absolute
  target starts again at the root, a ``..`` in a target stops at the root. A
  lab VM's links therefore never reach the machine the lab runs on, and a
  real guest's resolve exactly as the kernel would;
- every directory is opened with ``O_NOFOLLOW``, so a link swapped in after
  it was examined makes the open fail instead of being followed; the file
  operations that follow are made relative to the final directory's
  descriptor, never by name from the root again;
- the *resolved* path (links followed) must lie inside one of the allowed
  roots, themselves resolved the same way; so does every directory
  ``-CreateFullPath`` creates.

Standard library only: this runs in guests, and in the host manager with
the root ``/`` and no restriction.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmis.errors import ServiceError

__all__ = ["Resolved", "RootedPaths", "check_name", "check_token", "parse_roots", "shown",
           "split_path"]

#: symbolic links followed while resolving one path (Linux's MAXSYMLINKS)
MAX_LINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def shown(path: str) -> str:
    """A path for messages and results: bytes that are not UTF-8 as ``\\xNN``.

    Paths themselves are ``str`` decoded with ``surrogateescape`` (as
    ``os.fsdecode`` does): they keep every byte of a Linux name, and travel
    so (docs/protocol.md §2.2), but a terminal or a JSON answer gets this.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return path


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False  # a surrogate no file name byte decodes to
    return True


def split_path(path: str) -> list[str]:
    """The components of an absolute guest path.

    :raise ServiceError: ``bad-request`` for a relative or malformed path,
        ``denied`` for a ``..`` component.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise ServiceError("bad-request", f"guest paths must be absolute: {path!r}")
    if "\0" in path or not _encodable(path):
        raise ServiceError("bad-request", f"not a valid path: {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ServiceError("denied", f"'..' is not allowed in a guest path: {shown(path)}")
    return parts


def check_name(name: object) -> str:
    """A single file name (no separator, not ``.`` or ``..``), as sent by a peer.

    :raise ServiceError: ``bad-request`` otherwise.
    """
    if (not isinstance(name, str) or not name or "/" in name or "\0" in name
            or name in (".", "..") or not _encodable(name)):
        raise ServiceError("bad-request", f"not a valid file name: {name!r}")
    return name


def check_token(token: object) -> str:
    """A copy's resume token, as sent by a peer: 16 to 64 ASCII letters or digits
    (vmis sends 32 hex digits, docs/services/fcopy.md §4). Its start names the
    partial file, so a separator or a NUL in it would name another file, or none.

    :raise ServiceError: ``bad-request`` otherwise.
    """
    if not isinstance(token, str) or not 16 <= len(token) <= 64 or not (
            token.isascii() and token.isalnum()):
        raise ServiceError("bad-request", f"not a valid copy token: {token!r}")
    return token


def split_rel(rel: object) -> list[str]:
    """The names of a path relative to a tree's top (``a/b/c``), as sent by a peer.

    :raise ServiceError: ``bad-request`` for an empty or absolute path, or a
        component that is not a valid name (``..`` included).
    """
    if not isinstance(rel, str) or not rel or rel.startswith("/"):
        raise ServiceError("bad-request", f"not a relative path: {rel!r}")
    return [check_name(name) for name in rel.split("/")]


def parse_roots(text: str) -> list[str]:
    """The ``allowed_roots`` setting: absolute paths separated by spaces, commas or colons."""
    roots = [r for r in text.replace(",", " ").replace(":", " ").split() if r]
    for root in roots:
        split_path(root)
    return roots


def _display(parts: Sequence[str]) -> str:
    return shown("/" + "/".join(parts))


@dataclass
class Resolved:
    """Where a guest path leads: an open parent directory and a name in it.

    ``name`` is None when the path is the root itself. ``exists`` tells
    whether ``name`` exists in the directory (a dangling link counts as
    existing: it is not followed further when ``follow_last`` was False).
    The caller owns ``dir_fd`` and must :meth:`close` it.
    """

    dir_fd: int
    name: str | None
    #: the resolved guest path's components (links followed)
    parts: list[str]
    #: lstat of ``name`` in ``dir_fd``, None when it does not exist
    st: os.stat_result | None

    @property
    def path(self) -> str:
        """The resolved guest path, as answers carry it (:func:`shown` for messages)."""
        return "/" + "/".join(self.parts)

    @property
    def shown(self) -> str:
        """The resolved guest path for messages and results."""
        return _display(self.parts)

    @property
    def is_dir(self) -> bool:
        return self.st is not None and stat.S_ISDIR(self.st.st_mode)

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __enter__(self) -> Resolved:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RootedPaths:
    """Resolves guest paths inside *root* and applies the allowed-roots policy.

    :param root: the directory guest paths live in (``/`` in a real guest,
        the lab VM's root in a lab).
    :param allowed: allowed guest roots (``["/"]`` allows everything).
    """

    def __init__(self, root: Path, allowed: Sequence[str]) -> None:
        self.root = root
        self.allowed = list(allowed)

    # Section: resolution

    def open_root(self) -> int:
        """A descriptor of the root (the caller closes it)."""
        return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def resolve(self, path: str | Sequence[str], *, follow_last: bool = True,
                create_dirs: bool = False) -> Resolved:
        """Resolve a guest path (a string, or components from :func:`split_path`).

        :param follow_last: follow a link in the last component too.
        :param create_dirs: create missing directories on the way (mode
            0755), each of which must be inside an allowed root.
        :raise ServiceError: ``not-found`` for a missing directory on the way
            or a dangling link, ``denied`` for a directory the policy does
            not allow creating, ``failed`` for a link loop.
        """
        todo = list(split_path(path) if isinstance(path, str) else path)
        todo.reverse()
        fd = self.open_root()
        cur: list[str] = []
        links = 0
        try:
            while todo:
                comp = todo.pop()
                last = not todo
                if comp == "..":  # only ever from a link target
                    if cur:
                        parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
                        os.close(fd)
                        fd = parent
                        cur.pop()
                    continue
                try:
                    st = os.lstat(comp, dir_fd=fd)
                except FileNotFoundError:
                    if last:
                        return Resolved(fd, comp, [*cur, comp], None)
                    if not create_dirs:
                        raise ServiceError(
                            "not-found", f"{_display([*cur, comp])} does not exist "
                            "(-CreateFullPath creates missing directories)") from None
                    self._check_allowed([*cur, comp], f"creating {_display([*cur, comp])}")
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(comp, 0o755, dir_fd=fd)
                    st = os.lstat(comp, dir_fd=fd)
                if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
                    links += 1
                    if links > MAX_LINKS:
                        raise ServiceError("failed", f"too many levels of symbolic links in "
                                                     f"{_display([*cur, comp])}")
                    target = os.readlink(comp, dir_fd=fd)
                    if target.startswith("/"):
                        os.close(fd)
                        fd = self.open_root()
                        cur = []
                    todo.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
                    if not todo:  # a link to "/": the root itself
                        return Resolved(fd, None, cur, None)
                    continue
                if last:
                    return Resolved(fd, comp, [*cur, comp], st)
                if not stat.S_ISDIR(st.st_mode):
                    raise ServiceError("not-found",
                                       f"{_display([*cur, comp])} is not a directory")
                try:
                    child = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise ServiceError("denied", f"{_display([*cur, comp])} changed while "
                                                     "being resolved") from None
                    raise
                os.close(fd)
                fd = child
                cur.append(comp)
            return Resolved(fd, None, cur, None)
        except BaseException:
            os.close(fd)
            raise

    def open_dir(self, resolved: Resolved) -> int:
        """A descriptor of the directory *resolved* names (the caller closes it)."""
        if resolved.name is None:
            return os.dup(resolved.dir_fd)
        return os.open(resolved.name, _DIR_FLAGS, dir_fd=resolved.dir_fd)

    def destination(self, path: str, name: str, *, create: bool, exact: bool, force: bool,
                    what: str) -> Resolved:
        """Where a copied file goes, by Copy-VMFile's rules (docs/services/fcopy.md §3.1).

        - *path* names the file; if it is an existing directory (or ends in
          ``/``), the file goes into it under *name*, the source's name;
        - *create* (-CreateFullPath) creates missing directories, ``path/``
          included;
        - an existing file is refused with ``exists`` unless *force* (-Force);
        - *exact* (a file inside a tree copy): *path* is the file itself,
          and a directory there is refused with ``exists``.

        :param what: the operation, for the policy's messages ("" for none).
        :raise ServiceError: ``exists``, ``not-found``, ``denied``.
        """
        r = self.resolve(split_path(path), create_dirs=create)
        try:
            if path.endswith("/") and r.st is None and r.name is not None:
                if not create:
                    raise ServiceError("not-found", f"{r.shown} does not exist "
                                                    "(-CreateFullPath creates it)")
                self.check(r, "creating a directory")
                os.mkdir(r.name, 0o755, dir_fd=r.dir_fd)
                r.st = os.lstat(r.name, dir_fd=r.dir_fd)
            if r.name is None or r.is_dir:
                if exact:
                    raise ServiceError("exists", f"{r.shown} is a directory")
                inner = self.resolve([*r.parts, check_name(name)])
                r.close()
                r = inner
                if r.is_dir:
                    raise ServiceError("exists", f"{r.shown} is a directory")
            self.check(r, what)
            if r.st is not None and not stat.S_ISREG(r.st.st_mode):
                raise ServiceError("exists", f"{r.shown} exists and is not a regular file")
            if r.st is not None and not force:
                raise ServiceError("exists", f"{r.shown} exists (-Force overwrites it)")
            return r
        except BaseException:
            r.close()
            raise

    def tree_top(self, path: str, name: str, *, create: bool, what: str) -> Resolved:
        """Where a copied directory tree goes (cp -r's rules, docs/services/fcopy.md §3.2).

        An existing directory *path* receives the tree under *name*, its
        source's name; a path that does not exist becomes the tree's top (its
        parent must exist, or *create*); a file in the way is ``exists``.

        :return: the top, resolved (``st`` None: it does not exist yet); the
            caller owns it.
        :raise ServiceError: ``exists``, ``not-found``, ``denied``.
        """
        r = self.resolve(split_path(path), create_dirs=create)
        try:
            if r.name is None or r.is_dir:
                inner = self.resolve([*r.parts, check_name(name)])
                r.close()
                r = inner
            self.check(r, what)
            if r.st is not None and not r.is_dir:
                raise ServiceError("exists", f"{r.shown} exists and is not a directory")
            return r
        except BaseException:
            r.close()
            raise

    # Section: policy

    def resolved_roots(self) -> list[list[str]]:
        """The allowed roots, resolved (links followed); a root that does not exist is left out.

        Resolving them costs a few system calls per root: a caller that checks
        many paths at once (a tree) resolves them once and passes them on.
        """
        return list(self._resolved_roots())

    def _resolved_roots(self) -> Iterator[list[str]]:
        for root in self.allowed:
            try:
                with self.resolve(root) as r:
                    if r.name is None or r.is_dir:
                        yield r.parts
            except (ServiceError, OSError):
                continue  # a root that does not exist allows nothing

    def allowed_path(self, parts: Sequence[str],
                     roots: Sequence[Sequence[str]] | None = None) -> bool:
        """True if a resolved path lies inside an allowed root (*roots*: resolved already)."""
        return any(list(parts[: len(root)]) == list(root)
                   for root in (self._resolved_roots() if roots is None else roots))

    def _check_allowed(self, parts: Sequence[str], what: str) -> None:
        if self.allowed_path(parts):
            return
        prefix = f"{what}: " if what else ""
        for root in self.allowed:
            rparts = split_path(root)
            if list(parts[: len(rparts)]) == rparts:
                raise ServiceError(
                    "denied", f"{prefix}the allowed root {root} does not exist in the guest")
        raise ServiceError(
            "denied", f"{prefix}{_display(parts)} is outside the guest's allowed roots "
            f"({' '.join(self.allowed) or 'none'}; [fcopy] allowed_roots in agent.conf)")

    def check(self, resolved: Resolved, what: str) -> None:
        """Refuse a resolved path outside every allowed root.

        :raise ServiceError: ``denied``.
        """
        self._check_allowed(resolved.parts, what)
