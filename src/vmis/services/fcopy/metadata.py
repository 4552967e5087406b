"""A file's type, mode and times: what a copy tells its peer and what it keeps.

:func:`stat_entry` and :func:`list_dir` describe files for STAT and LIST
(docs/services/fcopy.md §2); :func:`file_mode` and :func:`set_times` are what
a copied file or directory keeps of its source (§3.2). Standard library only.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from vmis.errors import ServiceError
from vmis.services.fcopy import LIST_PAGE

__all__ = ["check_times", "entry_type", "file_mode", "list_dir", "set_times", "stat_entry"]

#: the file times a file can hold, in nanoseconds: time_t's 64-bit seconds
_TIME_NS = (-(2**63) * 10**9, 2**63 * 10**9)


def file_mode(mode: int) -> int:
    """The permission bits a copy keeps: rwx for all and the sticky bit, not setuid/setgid.

    A file copied by the agent belongs to root; keeping a set-user-ID bit
    would turn any host file into a root program in the guest.

    :raise ServiceError: ``bad-request`` for a peer's mode that is no mode_t.
    """
    if not isinstance(mode, int) or not 0 <= mode <= 0xFFFFFFFF:
        raise ServiceError("bad-request", f"not a file mode: {mode!r}")
    return stat.S_IMODE(mode) & 0o1777


def entry_type(mode: int) -> str:
    """``file``, ``dir``, ``link`` or ``other`` for an lstat mode."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "link"
    return "other"


def stat_entry(st: os.stat_result) -> dict[str, Any]:
    """What the peer learns of a file: type, size, mode, times."""
    return {"type": entry_type(st.st_mode), "size": st.st_size,
            "mode": stat.S_IMODE(st.st_mode), "atime_ns": st.st_atime_ns,
            "mtime_ns": st.st_mtime_ns}


def list_dir(dir_fd: int, start: int) -> tuple[list[dict[str, Any]], int | None, list[str]]:
    """One page of a directory's entries, sorted by name.

    :return: ``(entries, next start or None, names skipped)``; a name that is
        not valid UTF-8 cannot travel in json and is skipped (reported
        with its bytes escaped).
    """
    names = sorted(os.listdir(dir_fd))
    page = names[start : start + LIST_PAGE]
    entries, skipped = [], []
    for name in page:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            skipped.append(name.encode("utf-8", "surrogateescape").decode("utf-8",
                                                                            "backslashreplace"))
            continue
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        entries.append({"name": name, **stat_entry(st)})
    nxt = start + LIST_PAGE if start + LIST_PAGE < len(names) else None
    return entries, nxt, skipped


def check_times(atime_ns: int, mtime_ns: int) -> None:
    """Check a peer's file times before a copy starts, not when it ends.

    :raise ServiceError: ``bad-request`` for a time no file can hold.
    """
    for value in (atime_ns, mtime_ns):
        if not isinstance(value, int) or isinstance(value, bool) \
                or not _TIME_NS[0] <= value < _TIME_NS[1]:
            raise ServiceError("bad-request", f"not a file time (ns): {value!r}")


def set_times(fd: int, atime_ns: int, mtime_ns: int) -> None:
    """Set an open file's times.

    :raise ServiceError: ``bad-request`` for a time no file can hold.
    """
    check_times(atime_ns, mtime_ns)
    os.utime(fd, ns=(atime_ns, mtime_ns))
