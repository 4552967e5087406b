"""Keeping the image cache small: the least recently used images and the oldest logs go.

An image counts as used when it is built or handed out (its manifest's
modification time); an agent layer whose base image is gone cannot boot and
goes first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vmis.errors import ImageBuildError
from vmis.qemu.image._cache import build_lock, cache_dir, images_dir
from vmis.qemu.image.guest_image import read_manifest

__all__ = ["KEEP_AGENT_LAYERS", "KEEP_BASE_IMAGES", "KEEP_LOGS", "prune_images"]

#: How many agent layers and base images the cache keeps (most recently used).
KEEP_AGENT_LAYERS = 4
KEEP_BASE_IMAGES = 2
#: How many build logs the cache keeps (newest).
KEEP_LOGS = 20


def prune_images(
    cache: Path | None = None,
    *,
    keep_agent: int = KEEP_AGENT_LAYERS,
    keep_base: int = KEEP_BASE_IMAGES,
) -> list[Path]:
    """Remove the least recently used images beyond the given counts, and old build logs.

    A machine already running from a removed image is unaffected (its open
    file lives on); a stopped machine with a persistent overlay on it is not,
    so keep that in mind before lowering the counts.

    :return: the directories removed.
    """
    images = images_dir(cache or cache_dir())
    removed: list[Path] = []
    for kind, keep in (("base", keep_base), ("agent", keep_agent)):
        found = []
        for directory in images.glob(f"{kind}-*"):
            manifest = read_manifest(directory)
            if manifest is None:
                continue
            used = (directory / "manifest.json").stat().st_mtime
            if kind == "agent" and not (images / f"base-{manifest.get('base_key')}").is_dir():
                used = -1.0  # its base image is gone: unusable, pruned first
            found.append((used, directory))
        ranked = sorted(found, reverse=True)
        doomed = ranked[keep:] + [item for item in ranked[:keep] if item[0] < 0]
        for _, directory in doomed:
            try:
                with build_lock(images.parent, directory.name, timeout=0):
                    shutil.rmtree(directory, ignore_errors=True)
            except ImageBuildError:
                continue  # someone is (re)building it right now
            removed.append(directory)
    logs = sorted((images.parent / "logs").glob("*.log"), key=_mtime, reverse=True)
    for old in logs[KEEP_LOGS:]:
        old.unlink(missing_ok=True)
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
