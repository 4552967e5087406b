"""Checks of a real VM from outside it: polling, and reading its disk images (real-VM tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ext4_of", "guest_file", "run", "until"]


def until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll *check* until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(every)


def run(argv: list[str], timeout: float = 120) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True,
                          timeout=timeout).stdout


def ext4_of(image: Path, work: Path) -> tuple[str, Path]:
    """The superblock summary (dumpe2fs -h) of a qcow2 disk chain, and a raw copy of it."""
    raw = work / f"{image.stem}.raw"
    run(["qemu-img", "convert", "-U", "-O", "raw", str(image), str(raw)])
    dumpe2fs = shutil.which("dumpe2fs", path="/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    assert dumpe2fs is not None, "dumpe2fs (e2fsprogs) is needed"
    return run([dumpe2fs, "-h", str(raw)]), raw


def guest_file(raw: Path, path: str) -> str:
    debugfs = shutil.which("debugfs", path="/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    assert debugfs is not None
    return run([debugfs, "-R", f"cat {path}", str(raw)])


