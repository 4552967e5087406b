"""The project's guest image: a Debian 12 machine with systemd, Python and the vmis agent.

Two layers, each cached under :func:`cache_dir` by a key of its inputs:

- the **base image** (:func:`ensure_base_image`, about a minute cold): the
  Debian kernel, a busybox initramfs and a ``debootstrap`` root file system;
  keyed by the recipe (:mod:`._recipe`: package list, modules, configuration
  files, recipe version) and the kernel package version apt currently offers;
- an **agent layer** (:func:`ensure_agent_image`, seconds): the base root plus
  whatever an installer puts into it, by default
  :func:`vmis.packaging.install.install_agent`; keyed additionally by a digest of
  the files the installer writes.

Builds take a per-image lock, so concurrent test processes build once, and
are published by an atomic rename, so an interrupted build is never used.
Building needs root (debootstrap, chroot) and Debian's tools
(``dev/apt-packages-vm.txt``); using a built image needs only QEMU.

Usage::

    image = ensure_agent_image()          # builds what is missing
    machine = QemuMachine("vm1", workdir, image)

From a shell: ``python -m vmis.qemu.image build``.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmis.qemu.cmdline import BootSpec
from vmis.qemu.errors import ImageBuildError
from vmis.qemu.image._build import (
    BUILD_TOOLS,
    QBOOT,
    build_agent_tree,
    build_base_tree,
    smoke_boot,
)
from vmis.qemu.image._cache import build_lock, cache_dir, publish, remove_tree, tree_digest
from vmis.qemu.image._debian import KernelPackage, debian_mirror, resolve_kernel
from vmis.qemu.image._recipe import (
    APPEND,
    BOOT_MARKER,
    PACKAGES,
    RECIPE_VERSION,
    SUITE,
    recipe_digest,
)
from vmis.qemu.image._steps import BuildLog, require_tools

__all__ = [
    "BOOT_MARKER",
    "AgentInstaller",
    "GuestImage",
    "base_image_key",
    "cache_dir",
    "default_agent_installer",
    "ensure_agent_image",
    "ensure_base_image",
    "find_base_image",
    "prune_images",
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
#: How many agent layers and base images the cache keeps (most recently used).
KEEP_AGENT_LAYERS = 4
KEEP_BASE_IMAGES = 2
#: How many build logs the cache keeps (newest).
KEEP_LOGS = 20


@dataclass(frozen=True, slots=True)
class GuestImage:
    """A built image in the cache: what QEMU needs to boot it."""

    #: ``"base"`` or ``"agent"``
    kind: str
    #: the cache key (hex); the image's directory is ``<kind>-<key>``
    key: str
    #: the image's directory in the cache
    directory: Path
    #: the kernel to boot: ``vmlinux`` (PVH) or ``vmlinuz`` (bzImage)
    kernel: Path
    initrd: Path
    #: ``-bios`` firmware (qboot for PVH), or ``None`` for QEMU's default SeaBIOS
    firmware: Path | None
    #: the raw ext4 root disk; never written by machines (they use snapshots or overlays)
    rootfs: Path
    #: kernel command line
    append: str
    #: the guest kernel's release (``uname -r``)
    kernel_release: str
    #: key of the base image (equal to :attr:`key` for a base image)
    base_key: str
    #: everything recorded at build time (inputs, timings, boot time)
    manifest: Mapping[str, Any] = field(compare=False, repr=False)

    def boot_spec(self) -> BootSpec:
        """How QEMU boots this image (:class:`~vmis.qemu.machine.QemuMachine` calls it)."""
        return BootSpec(
            kernel=self.kernel,
            initrd=self.initrd,
            append=self.append,
            firmware=self.firmware,
            disk=self.rootfs,
            disk_format="raw",
        )

    @property
    def tree(self) -> Path:
        """The root file system as a directory (base images only): what agent layers copy."""
        return self.directory / "rootfs"

    @classmethod
    def load(cls, directory: Path) -> GuestImage:
        """Read a published image from its directory.

        :raise ImageBuildError: When the directory is not a complete image
            (or an agent layer's base image is gone).
        """
        try:
            manifest = json.loads((directory / "manifest.json").read_text())
        except (OSError, ValueError) as err:
            raise ImageBuildError("load", f"{directory} is not a complete image: {err}") from err
        kind = manifest["kind"]
        base_dir = (
            directory if kind == "base" else directory.parent / f"base-{manifest['base_key']}"
        )
        base = manifest if kind == "base" else _read_manifest(base_dir)
        if base is None:
            raise ImageBuildError("load", f"the base image of {directory} is gone")
        if base["boot"] == "pvh":
            kernel = base_dir / "vmlinux"
            firmware = QBOOT if QBOOT.exists() else None
        else:
            kernel, firmware = base_dir / "vmlinuz", None
        return cls(
            kind=kind,
            key=manifest["key"],
            directory=directory,
            kernel=kernel,
            initrd=base_dir / "initrd.img",
            firmware=firmware,
            rootfs=directory / "rootfs.ext4",
            append=base["append"],
            kernel_release=base["kernel_release"],
            base_key=base["key"],
            manifest=manifest,
        )


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return data


def _images(cache: Path) -> Path:
    return cache / "images"


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
    images = _images(cache or cache_dir())
    found = []
    for directory in images.glob("base-*"):
        manifest = _read_manifest(directory)
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
    final = _images(cache) / name
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
    final = _images(cache) / name
    with build_lock(cache, name):
        if not rebuild and (final / "manifest.json").is_file():
            return GuestImage.load(final)  # another process built it while we waited
        images = _images(cache)
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
    final = _images(cache) / name
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


# Section: pruning


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
    images = _images(cache or cache_dir())
    removed: list[Path] = []
    for kind, keep in (("base", keep_base), ("agent", keep_agent)):
        found = []
        for directory in images.glob(f"{kind}-*"):
            manifest = _read_manifest(directory)
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
