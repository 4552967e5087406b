"""A built guest image in the cache: what it is made of and how QEMU boots it.

Every published image directory holds a ``manifest.json`` written last
(:mod:`vmis.qemu.image._cache`, rule 1); :meth:`GuestImage.load` reads it
back, and an agent layer borrows the kernel and initramfs of its base image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmis.errors import ImageBuildError
from vmis.qemu.cmdline import BootSpec
from vmis.qemu.image._build import QBOOT

__all__ = ["GuestImage", "read_manifest"]


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
        base = manifest if kind == "base" else read_manifest(base_dir)
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


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of the image in *directory*, or None if it is not a complete image."""
    try:
        data: dict[str, Any] = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return data
