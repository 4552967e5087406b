"""The two layers of the guest image, each built once and cached by a key of its inputs.

:func:`ensure_base_image` gives the Debian base (kernel, initramfs, root file
system) for the current recipe and kernel package; :func:`ensure_agent_image`
gives that base plus an installed agent, keyed by the files the installer
writes. Each builds only what the cache lacks, under the image's lock, and
publishes whole (:mod:`vmis.qemu.image._cache`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vmis.errors import ImageBuildError
from vmis.qemu.image._build import BUILD_TOOLS, build_agent_tree, build_base_tree, smoke_boot
from vmis.qemu.image._cache import (
    build_lock,
    cache_dir,
    images_dir,
    publish,
    remove_tree,
    tree_digest,
)
from vmis.qemu.image._debian import KernelPackage, debian_mirror, resolve_kernel
from vmis.qemu.image._recipe import APPEND, PACKAGES, RECIPE_VERSION, SUITE, recipe_digest
from vmis.qemu.image._steps import BuildLog, require_tools
from vmis.qemu.image.guest_image import GuestImage, read_manifest
from vmis.qemu.image.pruning import prune_images

__all__ = [
    "SMOKE_BOOT_TIMEOUT",
    "AgentInstaller",
    "base_image_key",
    "default_agent_installer",
    "ensure_agent_image",
    "ensure_base_image",
    "find_base_image",
]

log = logging.getLogger(__name__)

#: Installs the guest agent into a root file system tree (the argument).
#:
#: Contract: it only creates or overwrites files below the root it is given
#: (no chroot, no network, no running services), and it is deterministic, so
#: installing into an empty directory yields the files that key the layer.
AgentInstaller = Callable[[Path], None]

#: Seconds the build's smoke boot may take to reach multi-user.target.
SMOKE_BOOT_TIMEOUT = 240.0


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _touch(image: GuestImage) -> None:
    """Mark an image as used now (pruning keeps the most recently used)."""
    with contextlib.suppress(OSError):
        os.utime(image.directory / "manifest.json")


def _new_log(cache: Path, name: str) -> BuildLog:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return BuildLog(cache / "logs" / f"{name}-{stamp}-{os.getpid()}.log")


def _clear_stale(images: Path, name: str) -> None:
    """Remove builds of ``name`` that died (we hold its lock, so none is alive)."""
    for stale in images.glob(f".tmp-{name}-*"):
        remove_tree(stale)


# Section: base image


def _base_inputs(kernel: KernelPackage) -> dict[str, Any]:
    return {
        "recipe": RECIPE_VERSION,
        "recipe_digest": recipe_digest(),
        "suite": SUITE,
        "packages": list(PACKAGES),
        "kernel_package": kernel.name,
        "kernel_version": kernel.version,
    }


def _key(inputs: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _resolve_kernel_after_update(err: ImageBuildError) -> KernelPackage:
    """Refresh apt's package lists once (root only) and ask again.

    A fresh CI machine may come with empty lists: the Debian packages the
    build needs are installed, but apt has never been updated.
    """
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise err
    log.warning("%s; running apt-get update", err)
    try:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600, check=True)
    except (OSError, subprocess.SubprocessError) as update_err:
        raise ImageBuildError("resolve kernel", f"apt-get update failed: {update_err}") from err
    return resolve_kernel()


def base_image_key() -> str:
    """The cache key of the base image apt's current kernel and this recipe would build.

    :raise ImageBuildError: When apt cannot tell which kernel that is.
    """
    return _key(_base_inputs(resolve_kernel()))


def find_base_image(cache: Path | None = None) -> GuestImage | None:
    """The most recently built base image in the cache, whatever its inputs."""
    images = images_dir(cache or cache_dir())
    found = []
    for directory in images.glob("base-*"):
        manifest = read_manifest(directory)
        if manifest is not None:
            found.append((str(manifest.get("built_at", "")), directory))
    if not found:
        return None
    return GuestImage.load(max(found)[1])


def ensure_base_image(*, cache: Path | None = None, rebuild: bool = False) -> GuestImage:
    """The base image for the current inputs, built first if the cache lacks it.

    If apt cannot resolve the kernel (no Debian tools, no package lists) and
    some base image is cached, that one is used, with a warning in the log.

    :param cache: the cache directory (default :func:`cache_dir`).
    :param rebuild: build even if the image is cached.
    :raise ImageBuildError: When the build fails; the message names the step and the log.
    """
    cache = cache or cache_dir()
    try:
        kernel = resolve_kernel()
    except ImageBuildError as err:
        fallback = find_base_image(cache)
        if fallback is not None and not rebuild:
            log.warning("%s; using the cached base image %s", err, fallback.directory)
            _touch(fallback)
            return fallback
        kernel = _resolve_kernel_after_update(err)
    inputs = _base_inputs(kernel)
    key = _key(inputs)
    name = f"base-{key}"
    final = images_dir(cache) / name
    if not rebuild and (final / "manifest.json").is_file():
        image = GuestImage.load(final)
        _touch(image)
        return image
    require_tools(BUILD_TOOLS)
    if os.geteuid() != 0:
        raise ImageBuildError(
            "check privileges",
            "building the guest image needs root (debootstrap, chroot, device nodes); "
            "run `python -m vmis.qemu.image build` as root",
        )

    def fill(tmp: Path, build: BuildLog) -> dict[str, Any]:
        mirror = debian_mirror(SUITE)
        build.note(f"mirror: {mirror}")
        pvh = build_base_tree(tmp, cache=cache, key=key, kernel=kernel, mirror=mirror, log=build)
        smoke = smoke_boot(tmp, append=APPEND, pvh=pvh, log=build, timeout=SMOKE_BOOT_TIMEOUT)
        if smoke.boot != "pvh":
            (tmp / "vmlinux").unlink(missing_ok=True)
        return {
            "kind": "base",
            "key": key,
            "inputs": inputs,
            "mirror": mirror,
            "kernel_release": kernel.release,
            "boot": smoke.boot,
            "append": APPEND,
            "boot_seconds": round(smoke.seconds, 2),
            "guest_uptime_at_multi_user": smoke.guest_uptime,
        }

    return _build_image(cache, name, f"building {name} from {inputs}", fill, rebuild=rebuild)


def _build_image(
    cache: Path,
    name: str,
    note: str,
    fill: Callable[[Path, BuildLog], dict[str, Any]],
    *,
    rebuild: bool,
) -> GuestImage:
    """Build image ``name`` under its lock in a temporary directory and publish it whole.

    ``fill`` builds the tree and returns its manifest; the build's times and
    log are added here. A failed build leaves nothing behind but its log.
    """
    final = images_dir(cache) / name
    with build_lock(cache, name):
        if not rebuild and (final / "manifest.json").is_file():
            return GuestImage.load(final)  # another process built it while we waited
        images = images_dir(cache)
        images.mkdir(parents=True, exist_ok=True)
        _clear_stale(images, name)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=images))
        begin = time.monotonic()
        with _new_log(cache, name) as build:
            build.note(note)
            try:
                manifest = fill(tmp, build)
                manifest.update(
                    built_at=_now(),
                    build_seconds=round(time.monotonic() - begin, 1),
                    step_seconds={k: round(v, 1) for k, v in build.timings.items()},
                    log=str(build.path),
                )
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
                if rebuild and final.exists():
                    remove_tree(final)
                publish(tmp, final)
            except BaseException:
                remove_tree(tmp)
                raise
            build.note(f"published {final}")
    prune_images(cache)
    return GuestImage.load(final)


# Section: agent layer


def default_agent_installer() -> AgentInstaller:
    """:func:`vmis.packaging.install.install_agent`, the installer a user runs.

    :raise ImageBuildError: When that module is not importable.
    """
    try:
        from vmis.packaging.install import install_agent
    except ImportError as err:
        raise ImageBuildError(
            "install agent", f"the default installer is not available: {err}"
        ) from err
    installer: AgentInstaller = install_agent
    return installer


def ensure_agent_image(
    installer: AgentInstaller | None = None,
    *,
    base: GuestImage | None = None,
    cache: Path | None = None,
    rebuild: bool = False,
) -> GuestImage:
    """The base image plus an installed agent, built first if the cache lacks it.

    The installer runs once into an empty directory to key the layer by the
    files it writes; only a new key costs a build (copy the base tree, install
    into it, ``mkfs.ext4 -d``: a few seconds).

    :param installer: installs the agent into a root tree; default
        :func:`default_agent_installer`.
    :param base: the base image (default: :func:`ensure_base_image`).
    :param cache: the cache directory (default :func:`cache_dir`).
    :param rebuild: build even if the layer is cached.
    :raise ImageBuildError: When the installer or a build step fails.
    """
    cache = cache or cache_dir()
    installer = installer or default_agent_installer()
    base = base or ensure_base_image(cache=cache)
    with tempfile.TemporaryDirectory(prefix="vmis-agent-files-") as staging:
        try:
            installer(Path(staging))
        except Exception as err:
            # The installer is the caller's code; any failure is a failed step.
            raise ImageBuildError("install agent", f"{type(err).__name__}: {err}") from err
        files = tree_digest(Path(staging))
    key = _key({"base": base.key, "agent_files": files})
    name = f"agent-{key}"
    final = images_dir(cache) / name
    if not rebuild and (final / "manifest.json").is_file():
        image = GuestImage.load(final)
        _touch(image)
        return image

    def fill(tmp: Path, build: BuildLog) -> dict[str, Any]:
        build_agent_tree(tmp, base_tree=base.tree, key=key, installer=installer, log=build)
        return {
            "kind": "agent",
            "key": key,
            "base_key": base.key,
            "agent_files_digest": files,
            "installer": f"{installer.__module__}.{installer.__qualname__}",
        }

    note = f"building {name} on base-{base.key}, agent files {files}"
    return _build_image(cache, name, note, fill, rebuild=rebuild)
