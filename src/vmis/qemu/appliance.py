"""What libguestfs's appliance needs of this host, and one line saying what is missing.

An offline install into a disk image (:mod:`vmis.qemu.offline`) boots
libguestfs's appliance: a small VM that supermin builds from this host's own
files. It needs supermin, QEMU, the appliance's description (``supermin.d``)
on libguestfs's path, and a kernel with its modules, ext4 among them (the
appliance's own root and most guests' are ext4 or ext2).

A minimal Debian 12 (a debootstrap'd tree, a container) has no kernel:
supermin only recommends ``linux-image-amd64`` and ``dev/setup`` installs
without recommends, so ``dev/setup --test`` installs it by name. A host
without one still works as root: vmis lends supermin the Debian kernel it
downloads for its test image, shown at ``/usr/lib/modules/<release>`` in a
private mount namespace through an overlay whose writable layer is a tmpfs
of that namespace (on a host whose ``/tmp`` is itself an overlay, as in a
container, an upper layer there fails with mount(8)'s "... failed mount
system call"). The host's files are never touched.

Whatever is missing fails far from its cause, inside the appliance; so
:func:`check_appliance` and :func:`appliance_kernel` look first and say
what the host needs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmis.errors import ConfigError, QemuNotInstalled

__all__ = ["LentKernel", "appliance_kernel", "check_appliance", "find_host_kernel",
           "has_module"]

#: the appliance cannot mount its own root, nor most guests', without it
ROOT_FILESYSTEM = "ext4"
INSTALL_KERNEL = "apt-get install linux-image-amd64"

# mount(8) would only say "... failed mount system call".
_LEND = f"""set -u
layer=$1 modules=$2 release=$3
shift 3
if mount -t tmpfs vmis-lend "$layer" \
   && mkdir -p "$layer/upper/modules/$release" "$layer/work" \
   && mount -t overlay vmis-lend \
        -o "lowerdir=/usr/lib,upperdir=$layer/upper,workdir=$layer/work" /usr/lib \
   && mount --bind "$modules" "/usr/lib/modules/$release"; then
    exec "$@"
fi
echo "vmis: this host has no kernel for libguestfs's appliance and lending it the" \
    "Debian kernel failed (see the mount error above): {INSTALL_KERNEL}" >&2
exit 1
"""


def check_appliance(python: str) -> None:
    """Say in one line what libguestfs's appliance lacks on this host, before it boots.

    :param python: an interpreter that imports ``guestfs``.
    :raise QemuNotInstalled: Naming what to install (supermin, QEMU, the appliance).
    :raise ConfigError: Naming what to set (``VMIS_ACCEL=kvm`` without /dev/kvm).
    """
    if shutil.which("supermin") is None:
        raise QemuNotInstalled("libguestfs builds its appliance with supermin, which is missing: "
                          "apt-get install supermin")
    hv = os.environ.get("LIBGUESTFS_HV") or shutil.which("qemu-system-x86_64")
    if not hv:
        raise QemuNotInstalled("libguestfs boots its appliance with QEMU, which is missing: "
                          "apt-get install qemu-system-x86")
    if os.environ.get("VMIS_ACCEL") == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise ConfigError("VMIS_ACCEL=kvm but /dev/kvm is missing or not usable here: "
                          "unset VMIS_ACCEL to boot libguestfs's appliance under TCG")
    probe = subprocess.run(
        [python, "-c", "import guestfs; print(guestfs.GuestFS().get_path())"],
        capture_output=True, text=True, check=False)
    search = probe.stdout.strip()
    if probe.returncode != 0 or not any(_is_appliance(Path(d)) for d in search.split(":") if d):
        raise QemuNotInstalled(f"libguestfs finds no appliance on its path ({search or '?'}"
                          f"{', from LIBGUESTFS_PATH' if 'LIBGUESTFS_PATH' in os.environ else ''}):"
                          " unset LIBGUESTFS_PATH, or apt-get install --reinstall libguestfs0")


def _is_appliance(directory: Path) -> bool:
    # libguestfs's three kinds: supermin's description, a fixed appliance, an old-style one
    return ((directory / "supermin.d").is_dir() or (directory / "README.fixed").is_file()
            or all((directory / name).is_file() for name in ("kernel", "initrd", "root")))


def find_host_kernel(boot: Path = Path("/boot"),
                     modules: Path = Path("/lib/modules")) -> tuple[Path, Path] | None:
    """A kernel supermin finds by itself, as it looks: ``/lib/modules/R/vmlinuz`` or
    ``/boot/vmlinuz-R``, with its modules in ``/lib/modules/R``; the newest release.

    :return: ``(vmlinuz, modules directory)``, or None.
    """
    found: dict[str, Path] = {}
    for image in sorted(boot.glob("vmlinuz-*")):
        found[image.name.removeprefix("vmlinuz-")] = image
    for image in sorted(modules.glob("*/vmlinuz")):
        found[image.parent.name] = image
    usable = [r for r in found if (modules / r).is_dir()]
    if not usable:
        return None
    release = max(usable, key=_release_key)
    return found[release], modules / release


def _release_key(release: str) -> list[tuple[int, str]]:
    # 6.1.0-57-amd64 after 6.1.0-9-amd64
    parts = release.replace("-", ".").split(".")
    return [(int(p), "") if p.isdigit() else (-1, p) for p in parts]


def has_module(modules: Path, name: str) -> bool:
    """Whether the kernel whose modules are in *modules* can load (or has built in) *name*."""
    module = f"{name}.ko"
    try:
        builtin = (modules / "modules.builtin").read_text().split()
    except OSError:
        builtin = []
    if any(Path(line).name == module for line in builtin):
        return True
    return any(True for _ in modules.glob(f"kernel/**/{module}*"))


@dataclass(frozen=True)
class LentKernel:
    """The Debian kernel vmis lends supermin on a host without one."""

    vmlinuz: Path
    modules: Path
    release: str

    def env(self) -> dict[str, str]:
        return {"SUPERMIN_KERNEL": str(self.vmlinuz), "SUPERMIN_KERNEL_VERSION": self.release,
                "SUPERMIN_MODULES": f"/usr/lib/modules/{self.release}"}

    def wrap(self, argv: list[str], scratch: Path) -> list[str]:
        """*argv* run where ``/usr/lib/modules/<release>`` shows this kernel's modules.

        :param scratch: an empty directory of ours, covered by the namespace's tmpfs.
        """
        layer = scratch / "lend"
        layer.mkdir()
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _LEND,
                "vmis-lend", str(layer), str(self.modules), self.release, *argv]


def appliance_kernel(cache: Path) -> LentKernel | None:
    """None when supermin finds a usable kernel on this host; else the kernel vmis lends it.

    :raise ConfigError: When the host's kernel lacks ext4 or cannot be read.
    :raise QemuNotInstalled: When there is none and lending one is impossible here
        (not root, no ``unshare``).
    """
    host = find_host_kernel()
    if host is not None:
        vmlinuz, modules = host
        if not has_module(modules, ROOT_FILESYSTEM):
            raise ConfigError(f"the kernel libguestfs's appliance would boot ({modules.name}) has "
                              f"no {ROOT_FILESYSTEM} module in {modules}: {INSTALL_KERNEL}")
        if not os.access(vmlinuz, os.R_OK):
            raise ConfigError(f"supermin cannot read {vmlinuz}, the kernel of libguestfs's "
                              "appliance: run as root, or make it readable")
        return None
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        raise QemuNotInstalled("this host has no kernel of its own for libguestfs's appliance: "
                          f"{INSTALL_KERNEL} (or run as root: vmis then lends it the Debian "
                          "kernel in a private mount namespace)")
    return _lent_kernel(cache)


def _lent_kernel(cache: Path) -> LentKernel:
    from vmis.qemu.image._build import download_kernel
    from vmis.qemu.image._debian import resolve_kernel
    from vmis.qemu.image._steps import BuildLog

    kernel = resolve_kernel()
    tree = cache / "libguestfs-kernel" / kernel.release
    modules = tree / "lib/modules" / kernel.release
    if not (modules / "modules.dep").is_file():
        with BuildLog(cache / "logs" / f"libguestfs-kernel-{kernel.release}.log") as log:
            deb = download_kernel(cache, kernel, log)
            partial = tree.with_name(tree.name + f".tmp{os.getpid()}")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            log.run("unpack kernel", ["dpkg-deb", "-x", str(deb), str(partial)], timeout=600)
            log.run("depmod", ["depmod", "-b", str(partial), kernel.release], timeout=600)
            shutil.rmtree(tree, ignore_errors=True)
            partial.rename(tree)
    return LentKernel(tree / f"boot/vmlinuz-{kernel.release}", modules, kernel.release)
