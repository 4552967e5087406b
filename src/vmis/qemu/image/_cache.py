"""The image cache: where images live, who may build one, how a build is published.

Layout under the cache directory (``$VMIS_CACHE_DIR``, default ``~/.cache/vmis``)::

    images/base-<key>/       a finished base image (kernel, initramfs, rootfs tree and disk)
    images/agent-<key>/      a finished agent layer (disk only; kernel from its base)
    images/.tmp-*            builds in progress (or left behind by a killed build)
    locks/<name>.lock        one flock(2) per image name: one builder at a time
    debootstrap/             debootstrap's package cache, reused across base builds
    debs/                    downloaded kernel packages
    logs/                    one log per build

Rule 1: a directory named ``base-*`` or ``agent-*`` is complete. Builds happen
in a ``.tmp-*`` directory on the same file system and are renamed into place
as their last step, so a reader never sees half an image, and a killed build
leaves only a ``.tmp-*`` directory, which the next builder of that name removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from vmis.errors import ImageBuildError

__all__ = [
    "build_lock",
    "cache_dir",
    "images_dir",
    "publish",
    "remove_tree",
    "tree_digest",
]

#: How long a second process waits for another's build of the same image.
LOCK_TIMEOUT = 30 * 60.0


def cache_dir() -> Path:
    """The cache directory.

    ``$VMIS_CACHE_DIR``, else ``$XDG_CACHE_HOME/vmis``, else ``~/.cache/vmis``.
    """
    explicit = os.environ.get("VMIS_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return (base / "vmis").absolute()


def images_dir(cache: Path) -> Path:
    """Where the finished images of *cache* live, and its builds in progress."""
    return cache / "images"


@contextlib.contextmanager
def build_lock(cache: Path, name: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the build lock of one image name.

    flock(2) is released by the kernel when the holder dies, so a killed build
    never leaves a stale lock behind.

    :raise ImageBuildError: When another process holds the lock for longer than ``timeout``.
    """
    locks = cache / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with (locks / f"{name}.lock").open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ImageBuildError(
                        "lock", f"another process has been building {name} for {timeout:.0f} s"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mounts_under(root: Path) -> list[Path]:
    """Mount points at or below ``root``, deepest first (from /proc/self/mounts)."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    prefix = str(root.resolve())
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) < 2:
            continue
        # /proc/self/mounts escapes spaces and tabs as octal (\040).
        point = fields[1].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_tree(path: Path) -> None:
    """Remove a build directory, first unmounting anything a killed build left mounted in it.

    debootstrap mounts ``proc`` and ``sys`` inside its target; removing the tree
    without unmounting them first would walk into the kernel's file systems.
    """
    if not path.exists() and not path.is_symlink():
        return
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False, timeout=60)
    if _mounts_under(path):
        raise ImageBuildError("cleanup", f"cannot unmount file systems under {path}")
    shutil.rmtree(path, ignore_errors=False)


def publish(tmp: Path, final: Path) -> None:
    """Rename a finished build into place (Rule 1).

    :raise ImageBuildError: When the rename fails.
    """
    try:
        os.rename(tmp, final)
    except OSError as err:
        raise ImageBuildError("publish", f"cannot rename {tmp} to {final}: {err}") from err


def tree_digest(root: Path, *, ignore: tuple[str, ...] = ("__pycache__",)) -> str:
    """SHA-256 over a directory tree's names, types, permissions, link targets and contents.

    Modification times and owners are left out, so installing the same files
    twice gives the same digest. Directories named in ``ignore`` are skipped
    (byte-code caches embed timestamps).
    """
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ignore)
        here = Path(dirpath)
        for name in sorted([*dirnames, *filenames]):
            path = here / name
            info = path.lstat()
            rel = path.relative_to(root).as_posix()
            digest.update(
                f"{rel}\0{stat.S_IFMT(info.st_mode):o}\0{info.st_mode & 0o7777:o}\0".encode()
            )
            if stat.S_ISLNK(info.st_mode):
                digest.update(os.readlink(path).encode())
            elif stat.S_ISREG(info.st_mode):
                with path.open("rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
            digest.update(b"\0")
    return digest.hexdigest()
