"""A writer for the cpio "newc" format the Linux kernel unpacks as an initramfs.

Written here rather than driving ``cpio(1)`` so the archive is a pure function
of its entries (fixed mtime, owner and inode numbers): the same inputs give the
same bytes, which keeps the image reproducible.
Format: ``Documentation/driver-api/early-userspace/buffer-format.rst`` in Linux.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

__all__ = ["CpioEntry", "newc_archive"]

_MAGIC = b"070701"


@dataclass(frozen=True, slots=True)
class CpioEntry:
    """One archive member: a directory, a regular file, a symbolic link or a device node."""

    #: path inside the archive, without a leading slash
    name: str
    #: full ``st_mode`` (type bits and permissions)
    mode: int
    #: file contents, or the link target of a symbolic link
    data: bytes = b""
    #: (major, minor) of a device node
    rdev: tuple[int, int] = (0, 0)

    @classmethod
    def directory(cls, name: str) -> CpioEntry:
        return cls(name, stat.S_IFDIR | 0o755)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> CpioEntry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def chardev(cls, name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
        return cls(name, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(ino: int, entry: CpioEntry, name: bytes) -> bytes:
    is_dir = stat.S_ISDIR(entry.mode)
    fields = (
        ino,
        entry.mode,
        0,  # uid
        0,  # gid
        2 if is_dir else 1,  # nlink
        0,  # mtime: fixed, for reproducible archives
        len(entry.data),
        0,  # devmajor
        0,  # devminor
        entry.rdev[0],
        entry.rdev[1],
        len(name) + 1,  # namesize includes the NUL
        0,  # check
    )
    return _MAGIC + b"".join(b"%08X" % value for value in fields)


def newc_archive(entries: list[CpioEntry]) -> bytes:
    """Serialise entries, in the given order, into one newc archive with its trailer.

    Parents must come before their children; the kernel creates members in order.
    """
    out = bytearray()
    for ino, entry in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], start=1):
        name = entry.name.lstrip("/").encode()
        head = _header(0 if entry.name == "TRAILER!!!" else ino, entry, name)
        out += head + name + b"\0"
        out += _pad4(len(head) + len(name) + 1)
        out += entry.data + _pad4(len(entry.data))
    return bytes(out)
