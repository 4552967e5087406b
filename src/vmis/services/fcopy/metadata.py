"""A file's type, mode and times: what a copy tells its peer and what it keeps.

:func:`stat_entry` and :func:`list_dir` describe files for STAT and LIST
(docs/services/fcopy.md §2); :func:`file_mode` and :func:`set_times` are what
a copied file or directory keeps of its source (§3.2). Standard library only.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from vmis.services.fcopy import LIST_PAGE

__all__ = ["entry_type", "file_mode", "list_dir", "set_times", "stat_entry"]


def file_mode(mode: int) -> int:
    """The permission bits a copy keeps: rwx for all and the sticky bit, not setuid/setgid.

    A file copied by the agent belongs to root; keeping a set-user-ID bit
    would turn any host file into a root program in the guest.
    """
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


def set_times(fd: int, atime_ns: int, mtime_ns: int) -> None:
    """Set an open file's times."""
    os.utime(fd, ns=(atime_ns, mtime_ns))
