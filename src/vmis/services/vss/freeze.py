"""Freeze and thaw the guest's filesystems for a consistent backup.

Which filesystems, in which order (the Linux ``hv_vss_daemon``'s rules, facts
section 5.3):

* every line of ``<root>/proc/mounts`` whose source starts with ``/dev/``;
* except block devices backed by a loop device, directly or through the
  devices under them (``/sys/dev/block/M:m/loop``, ``.../slaves/*``,
  recursively): freezing the loop's backing filesystem and then the loop
  filesystem would deadlock;
* except read-only mounts (nothing to flush) and ``vfat`` (no freeze support);
* ``/`` last, so that the daemon can still work while the rest is frozen.

The freeze itself goes through a :class:`Freezer`: :class:`IoctlFreezer` on
a real guest (``FIFREEZE``/``FITHAW`` on a descriptor of the mount point) or
:class:`FakeFreezer` in tests and the lab.  If any filesystem fails to freeze,
everything already frozen is thawed before :class:`FreezeError` is raised: a
half-frozen guest is the worst outcome.

Nothing here logs: a caller that logs while filesystems are frozen could block
on its own log file.  Errors carry everything worth saying after the thaw.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vmis.errors import FreezeError, ThawError

__all__ = [
    "FIFREEZE",
    "FITHAW",
    "FakeFreezer",
    "FilesystemFreeze",
    "Freezer",
    "IoctlFreezer",
    "Mount",
    "freeze_candidates",
    "read_mounts",
]

#: ``_IOWR('X', 119, int)`` from ``<linux/fs.h>``.
FIFREEZE = 0xC0045877
#: ``_IOWR('X', 120, int)`` from ``<linux/fs.h>``.
FITHAW = 0xC0045878

#: Maps a device path (``/dev/sda1``) to its ``(major, minor)``, or ``None``.
DeviceNumberT = Callable[[str], "tuple[int, int] | None"]


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of ``/proc/mounts``."""

    #: the source, e.g. ``/dev/sda1``
    source: str
    #: the mount point, octal escapes decoded
    mountpoint: str
    #: the filesystem type
    fstype: str
    #: the mount options
    options: tuple[str, ...]


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as \ooo.
    out: list[str] = []
    i = 0
    while i < len(field):
        c = field[i]
        digits = field[i + 1 : i + 4]
        if c == "\\" and len(digits) == 3 and all(d in "01234567" for d in digits):
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(c)
            i += 1
    return "".join(out)


def read_mounts(root: str | os.PathLike[str] = "/") -> list[Mount]:
    """Parse ``<root>/proc/mounts``.

    :param root: where ``/proc`` is found (a fixture tree in tests).
    :raise OSError: When the file cannot be read.
    :return: the mounts, in the file's order.
    """
    text = (Path(root) / "proc/mounts").read_text(encoding="utf-8", errors="surrogateescape")
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mounts.append(
            Mount(
                source=_unescape(fields[0]),
                mountpoint=_unescape(fields[1]),
                fstype=fields[2],
                options=tuple(fields[3].split(",")),
            )
        )
    return mounts


def _stat_device(root: Path) -> DeviceNumberT:
    def device_number(source: str) -> tuple[int, int] | None:
        try:
            st = os.stat(root / source.lstrip("/"))
        except OSError:
            return None
        return os.major(st.st_rdev), os.minor(st.st_rdev)

    return device_number


def _is_loop_backed(blockdir: Path, depth: int = 0) -> bool:
    if (blockdir / "loop").exists():
        return True
    if depth > 16:  # slaves never nest this deep; a cycle would be a sysfs bug
        return False
    try:
        slaves = sorted((blockdir / "slaves").iterdir())
    except OSError:
        return False
    return any(_is_loop_backed(s, depth + 1) for s in slaves)


def freeze_candidates(
    root: str | os.PathLike[str] = "/",
    *,
    device_number: DeviceNumberT | None = None,
) -> list[Mount]:
    """The filesystems to freeze, in freeze order (``/`` last).

    :param root: where ``/proc``, ``/sys`` and ``/dev`` are found.
    :param device_number: how to learn a device's ``(major, minor)``; by default
        ``stat`` of ``<root>/<source>``.  A device whose number is unknown is
        not treated as loop-backed (as the C daemon does when ``stat`` fails).
    :raise OSError: When ``<root>/proc/mounts`` cannot be read.
    :return: the mounts to freeze.
    """
    rootp = Path(root)
    number_of = device_number or _stat_device(rootp)
    chosen: list[Mount] = []
    root_mount: Mount | None = None
    for m in read_mounts(rootp):
        if not m.source.startswith("/dev/"):
            continue
        number = number_of(m.source)
        if number is not None and _is_loop_backed(
            rootp / "sys/dev/block" / f"{number[0]}:{number[1]}"
        ):
            continue
        if "ro" in m.options or m.fstype == "vfat":
            continue
        if m.mountpoint == "/":
            root_mount = m
            continue
        chosen.append(m)
    if root_mount is not None:
        chosen.append(root_mount)
    return chosen


# Section: freezers


class Freezer(Protocol):
    """Freezes and thaws one filesystem, named by its mount point."""

    def freeze(self, mountpoint: str) -> None:
        """Freeze the filesystem mounted at ``mountpoint``.

        :raise OSError: When it cannot be frozen.
        """

    def thaw(self, mountpoint: str) -> None:
        """Thaw the filesystem mounted at ``mountpoint``.

        :raise OSError: When it cannot be thawed.
        """


IoctlT = Callable[[int, int, int], object]


class IoctlFreezer:
    """The real freezer: ``FIFREEZE``/``FITHAW`` on a read-only descriptor of
    the mount point.  Needs ``CAP_SYS_ADMIN``.

    ``EBUSY`` on freeze and ``EINVAL`` on thaw are not errors: the same
    filesystem mounted twice (bind mounts, btrfs subvolumes) is frozen by its
    first mount point and answers the second this way.

    :param ioctl: the ioctl call, replaceable in tests (never freeze the
        test machine's filesystems).
    :param open_dir: how to open the mount point, likewise.
    """

    def __init__(
        self,
        ioctl: IoctlT = fcntl.ioctl,
        open_dir: Callable[[str], int] | None = None,
    ) -> None:
        self._ioctl = ioctl
        self._open = open_dir or (lambda p: os.open(p, os.O_RDONLY | os.O_CLOEXEC))

    def _call(self, mountpoint: str, request: int, ignored: int) -> None:
        fd = self._open(mountpoint)
        try:
            self._ioctl(fd, request, 0)
        except OSError as err:
            if err.errno != ignored:
                raise
        finally:
            os.close(fd)

    def freeze(self, mountpoint: str) -> None:
        """``FIFREEZE`` the filesystem at ``mountpoint`` (``EBUSY`` ignored)."""
        self._call(mountpoint, FIFREEZE, errno.EBUSY)

    def thaw(self, mountpoint: str) -> None:
        """``FITHAW`` the filesystem at ``mountpoint`` (``EINVAL`` ignored)."""
        self._call(mountpoint, FITHAW, errno.EINVAL)


class FakeFreezer:
    """A freezer that only remembers: for tests and the lab.

    :param fail_freeze: mount points whose freeze fails, with the errno to raise.
    :param fail_thaw: mount points whose thaw fails, likewise.
    """

    def __init__(
        self,
        fail_freeze: dict[str, int] | None = None,
        fail_thaw: dict[str, int] | None = None,
    ) -> None:
        #: every call, in order: ``("freeze" | "thaw", mountpoint)``
        self.calls: list[tuple[str, str]] = []
        #: mount points currently frozen
        self.frozen: set[str] = set()
        #: freeze failures to inject
        self.fail_freeze = dict(fail_freeze or {})
        #: thaw failures to inject
        self.fail_thaw = dict(fail_thaw or {})

    def freeze(self, mountpoint: str) -> None:
        """Record a freeze, or raise the injected error."""
        self.calls.append(("freeze", mountpoint))
        if mountpoint in self.fail_freeze:
            code = self.fail_freeze[mountpoint]
            raise OSError(code, os.strerror(code), mountpoint)
        self.frozen.add(mountpoint)

    def thaw(self, mountpoint: str) -> None:
        """Record a thaw, or raise the injected error."""
        self.calls.append(("thaw", mountpoint))
        if mountpoint in self.fail_thaw:
            code = self.fail_thaw[mountpoint]
            raise OSError(code, os.strerror(code), mountpoint)
        self.frozen.discard(mountpoint)


# Section: the whole-guest operation


def _thaw_each(freezer: Freezer, mountpoints: Iterable[str]) -> list[tuple[str, int | None]]:
    failures: list[tuple[str, int | None]] = []
    for mp in mountpoints:
        try:
            freezer.thaw(mp)
        except OSError as err:
            failures.append((mp, err.errno))
    return failures


class FilesystemFreeze:
    """Freeze every candidate filesystem of a guest, and thaw them.

    :param freezer: does the per-filesystem work.
    :param root: where ``/proc``, ``/sys`` and ``/dev`` are read.
    :param device_number: see :func:`freeze_candidates`.
    """

    def __init__(
        self,
        freezer: Freezer,
        root: str | os.PathLike[str] = "/",
        *,
        device_number: DeviceNumberT | None = None,
    ) -> None:
        self._freezer = freezer
        self._root = root
        self._device_number = device_number
        #: mount points frozen by the last :meth:`freeze`, in freeze order
        self.frozen: list[str] = []

    def candidates(self) -> list[Mount]:
        """Re-read the mount table; see :func:`freeze_candidates`."""
        return freeze_candidates(self._root, device_number=self._device_number)

    def freeze(self) -> list[str]:
        """Freeze every candidate, ``/`` last.

        :raise FreezeError: When one fails; the ones already frozen (and the
            failed one) have been thawed again.
        :raise OSError: When the mount table cannot be read (nothing frozen).
        :return: the frozen mount points, in order.
        """
        self.frozen = []
        for m in self.candidates():
            try:
                self._freezer.freeze(m.mountpoint)
            except OSError as err:
                _thaw_each(self._freezer, [*reversed(self.frozen), m.mountpoint])
                self.frozen = []
                raise FreezeError(m.mountpoint, err) from err
            self.frozen.append(m.mountpoint)
        return list(self.frozen)

    def thaw(self) -> list[str]:
        """Thaw every candidate of the current mount table, ``/`` first, plus
        anything this object froze that is no longer listed.

        Thawing a filesystem that is not frozen is harmless (``EINVAL``,
        ignored), so this also recovers from a daemon that died frozen.  Every
        filesystem is tried even after a failure.

        :raise ThawError: When any thaw failed (after trying all).
        :return: the mount points thawed, in order.
        """
        try:
            current = [m.mountpoint for m in self.candidates()]
        except OSError:
            current = []
        order = list(reversed(current))
        order += [mp for mp in reversed(self.frozen) if mp not in order]
        failures = _thaw_each(self._freezer, order)
        self.frozen = []
        if failures:
            raise ThawError(failures)
        return order
