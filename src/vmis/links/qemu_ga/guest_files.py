"""Guest files through qemu-ga: what a path is, small reads, and, with guest-exec, the rest.

qemu-ga's own file commands open, read, write, seek and close one file by
handle. They cannot tell a file's mode or times, list a directory, make
one, rename or hash. Where guest-exec is allowed in a POSIX guest the link
runs coreutils for those (``stat``, ``find``, ``mkdir``, ``ln``, ``mv``,
``sha256sum``), always with the path as an argument of its own, never through
a shell's parsing; without it, :func:`probe` learns what it can from
guest-file-open alone.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vmis.errors import RemoteServiceError
from vmis.links.qemu_ga import guest_exec

if TYPE_CHECKING:
    from vmis.links.qemu_ga.translator import LinkContext

__all__ = ["GuestStat", "exec_stat", "listing", "probe", "read_small_file", "sha256_of"]

#: one qemu-ga command -> its return (a link's ``call``, or a connection's)
Call = Callable[..., Awaitable[Any]]

#: GNU stat's format for one path: type, size, raw mode (hex), atime and mtime in ns
_STAT_FORMAT = "%F\\0%s\\0%f\\0%.9X\\0%.9Y\\0"
#: GNU find's format for one entry: name, type letter, size, mode (octal), atime, mtime
_FIND_FORMAT = "%f\\0%y\\0%s\\0%m\\0%A@\\0%T@\\0"
_TYPES = {"regular file": "file", "regular empty file": "file", "directory": "dir"}
_FIND_TYPES = {"f": "file", "d": "dir", "l": "link"}


@dataclass(frozen=True, slots=True)
class GuestStat:
    """What a guest path is (docs/services/fcopy.md §2, STAT's answer)."""

    path: str
    #: ``file``, ``dir``, ``link``, ``other`` or ``none``
    type: str
    size: int = 0
    #: permission bits; 0o644 when qemu-ga alone cannot tell
    mode: int = 0o644
    atime_ns: int = 0
    mtime_ns: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "type": self.type, "size": self.size, "mode": self.mode,
                "atime_ns": self.atime_ns, "mtime_ns": self.mtime_ns}


def _ns(text: str) -> int:
    """``1796586854.425567548`` (seconds, fraction) as nanoseconds."""
    whole, _, fraction = text.partition(".")
    return int(whole) * 1_000_000_000 + int((fraction[:9] or "0").ljust(9, "0"))


async def read_small_file(call: Call, path: str, limit: int = 4096) -> bytes | None:
    """A small guest file's first *limit* bytes, None when it cannot be opened."""
    try:
        handle = await call("guest-file-open", {"path": path, "mode": "r"})
    except RemoteServiceError:
        return None
    try:
        answer = await call("guest-file-read", {"handle": handle, "count": limit})
        return base64.b64decode(answer.get("buf-b64", ""))
    except RemoteServiceError:
        return None
    finally:
        await call("guest-file-close", {"handle": handle})


async def exec_stat(link: LinkContext, path: str) -> GuestStat:
    """``stat -L`` of a guest path (guest-exec)."""
    done = await guest_exec.run(link, ["stat", "-L", f"--printf={_STAT_FORMAT}", "--", path])
    if not done.ok:
        if "No such file" in done.why():
            return GuestStat(path, "none")
        raise RemoteServiceError("denied" if "ermission" in done.why() else "failed",
                                 f"{link.agent.label}: stat {path}: {done.why()}")
    kind, size, mode, atime, mtime = done.stdout.decode("utf-8", "surrogateescape"
                                                        ).split("\0")[:5]
    return GuestStat(path, _TYPES.get(kind, "other"), int(size), int(mode, 16) & 0o7777,
                     _ns(atime), _ns(mtime))


async def probe(link: LinkContext, path: str) -> GuestStat:
    """What a guest path is, from guest-file-open alone (no guest-exec).

    Opening a directory read-only succeeds but reading it fails; a file's
    size is where a seek to its end lands. Mode and times stay unknown.
    """
    try:
        handle = await link.call("guest-file-open", {"path": path, "mode": "r"})
    except RemoteServiceError as exc:
        if exc.code == "not-found":
            return GuestStat(path, "none")
        raise
    try:
        try:
            await link.call("guest-file-read", {"handle": handle, "count": 1})
        except RemoteServiceError:
            return GuestStat(path, "dir")
        end = await link.call("guest-file-seek", {"handle": handle, "offset": 0,
                                                  "whence": "end"})
        now = time.time_ns()
        return GuestStat(path, "file", int(end["position"]), 0o644, now, now)
    finally:
        await link.call("guest-file-close", {"handle": handle})


async def sha256_of(link: LinkContext, path: str, length: int | None = None) -> str:
    """The SHA-256 of a guest file (its first *length* bytes if given), hashed in the guest."""
    if length is None:
        out = await guest_exec.check_output(link, ["sha256sum", "--", path], timeout=900)
    else:
        # head reads exactly the prefix; sh only joins the two, the path is "$1"
        out = await guest_exec.check_output(
            link, ["sh", "-c", 'head -c "$2" -- "$1" | sha256sum', "sh", path, str(length)],
            timeout=900)
    digest = out.split(b" ", 1)[0].decode("ascii", "replace")
    if len(digest) != 64:
        raise RemoteServiceError("failed", f"{link.agent.label}: sha256sum gave {out[:80]!r}")
    return digest


async def listing(link: LinkContext, path: str) -> tuple[list[dict[str, Any]], list[str]]:
    """A guest directory's entries, sorted by name, and the names that are not UTF-8."""
    out = await guest_exec.check_output(
        link, ["find", path, "-mindepth", "1", "-maxdepth", "1", "-printf", _FIND_FORMAT],
        timeout=300)
    fields = out.split(b"\0")
    entries: list[dict[str, Any]] = []
    skipped: list[str] = []
    for i in range(0, len(fields) - 5, 6):
        raw_name, kind, size, mode, atime, mtime = fields[i:i + 6]
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            skipped.append(raw_name.decode("utf-8", "replace"))
            continue
        entries.append({"name": name, "type": _FIND_TYPES.get(kind.decode(), "other"),
                        "size": int(size), "mode": int(mode, 8), "atime_ns": _ns(atime.decode()),
                        "mtime_ns": _ns(mtime.decode())})
    entries.sort(key=lambda e: e["name"].encode())
    return entries, skipped


def stat_from(entry: Mapping[str, Any], path: str) -> GuestStat:
    """A listing entry as a :class:`GuestStat`."""
    return GuestStat(path, str(entry["type"]), int(entry["size"]), int(entry["mode"]),
                     int(entry["atime_ns"]), int(entry["mtime_ns"]))
