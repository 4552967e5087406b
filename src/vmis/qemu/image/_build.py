"""The build steps of the base image and of an agent layer.

Base image (slow, about a minute; feasibility.md §3, §4, §8):

1. download the Debian kernel package (``apt-get download``) and unpack it;
2. cut an uncompressed ``vmlinux`` out of the bzImage for PVH boot;
3. pack a busybox initramfs with the modules that mount the root;
4. ``debootstrap --variant=minbase`` the root file system with :data:`PACKAGES`;
5. configure it: modules for udev, network, journal, masked units, boot marker;
6. ``mkfs.ext4 -d`` it into a sparse raw disk;
7. boot it once under QEMU (PVH with qboot, else bzImage with SeaBIOS) and
   record the boot time; an image that does not boot is never published.

Agent layer (seconds): copy the base tree, run the installer into it, and
``mkfs.ext4 -d`` again.

All steps write into a ``.tmp-*`` directory the caller publishes (see :mod:`._cache`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from vmis.qemu.image._cache import remove_tree
from vmis.qemu.image._cpio import CpioEntry, newc_archive
from vmis.qemu.image._debian import KernelPackage
from vmis.qemu.image._kernel import (
    builtin_modules,
    has_pvh_entry,
    ko_depends,
    module_closure,
    module_index,
    vmlinux_from_bzimage,
)
from vmis.qemu.image._recipe import (
    DISK_MIB,
    ENABLED_UNITS,
    GUEST_FILES,
    INIT_SCRIPT,
    INITRAMFS_MODULES,
    MASKED_UNITS,
    PACKAGES,
    REMOVED_UNIT_LINKS,
    ROOTFS_MODULES,
    SUITE,
    TRIM_PATHS,
)
from vmis.qemu.image._steps import BuildLog

__all__ = [
    "BUILD_TOOLS",
    "QBOOT",
    "SmokeResult",
    "build_agent_tree",
    "build_base_tree",
    "make_disk",
    "smoke_boot",
]

#: program -> Debian package, checked before a base build.
BUILD_TOOLS = {
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "debootstrap": "debootstrap",
    "busybox": "busybox-static",
    "depmod": "kmod",
    "mkfs.ext4": "e2fsprogs",
    "chroot": "coreutils",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
}

#: qboot, the minimal firmware that makes PVH boot fastest (package qemu-system-data).
QBOOT = Path("/usr/share/qemu/qboot.rom")

#: busybox applets /init uses.
_APPLETS = ("sh", "mount", "umount", "insmod", "switch_root", "sleep", "poweroff", "cat", "mkdir")

_T = TypeVar("_T")


# Section: kernel and initramfs


def download_kernel(cache: Path, kernel: KernelPackage, log: BuildLog) -> Path:
    """The kernel package's ``.deb`` in the cache, fetched with ``apt-get download`` if missing."""
    debs = cache / "debs"
    final = debs / f"{kernel.name}_{kernel.version}_amd64.deb"
    if final.is_file():
        log.note(f"download kernel: using cached {final}")
        return final
    # Download into a private directory and rename: a killed download never
    # leaves a truncated .deb where the next build would trust it.
    partial = debs / f".tmp-{os.getpid()}"
    remove_tree(partial)
    partial.mkdir(parents=True)
    argv = ["apt-get", "download", f"{kernel.name}={kernel.version}"]
    if os.geteuid() == 0:
        # apt's _apt user cannot write into root's cache directory.
        argv[1:1] = ["-o", "APT::Sandbox::User=root"]
    log.run("download kernel", argv, cwd=partial, timeout=600)
    fetched = sorted(partial.glob("*.deb"))
    if len(fetched) != 1:
        raise log.fail("download kernel", f"expected one .deb, found {len(fetched)}")
    os.replace(fetched[0], final)
    remove_tree(partial)
    return final


def _is_static_elf(path: Path) -> bool:
    """Whether an ELF executable has no program interpreter (is statically linked)."""
    data = path.read_bytes()
    if not data.startswith(b"\x7fELF") or data[4] != 2:
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    pt_interp = 3
    return all(
        struct.unpack_from("<I", data, phoff + i * phentsize)[0] != pt_interp for i in range(phnum)
    )


def _busybox(log: BuildLog) -> Path:
    found = shutil.which("busybox")
    if found is None or not _is_static_elf(Path(found)):
        raise log.fail(
            "initramfs", "a statically linked busybox is needed: apt-get install busybox-static"
        )
    return Path(found)


def build_initramfs(modules: list[str], index: dict[str, Path], busybox: Path) -> bytes:
    """The gzip-compressed initramfs: busybox, /init, and the modules in load order."""
    entries = [
        CpioEntry.directory(d)
        for d in ("bin", "dev", "etc", "lib", "lib/modules", "newroot", "proc", "sys")
    ]
    # /dev/console must exist before /init runs, or init starts without stdio.
    entries.append(CpioEntry.chardev("dev/console", 5, 1))
    entries.append(CpioEntry.file("bin/busybox", busybox.read_bytes(), 0o755))
    entries += [CpioEntry.symlink(f"bin/{applet}", "busybox") for applet in _APPLETS]
    entries.append(CpioEntry.file("init", INIT_SCRIPT.encode(), 0o755))
    entries.append(CpioEntry.file("etc/modules.order", "".join(f"{m}\n" for m in modules).encode()))
    entries += [
        CpioEntry.file(f"lib/modules/{name}.ko", index[name].read_bytes()) for name in modules
    ]
    return gzip.compress(newc_archive(entries), compresslevel=6, mtime=0)


# Section: root file system


def _inside(root: Path, rel: str) -> Path:
    """``root/rel`` for writing, refusing paths that a symlink leads out of the tree.

    The tree is a foreign root file system: an absolute symlink in it (say
    ``etc/resolv.conf -> /run/...``) points into *this* machine.
    """
    path = root / rel
    if not path.parent.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{rel} leads out of {root}")
    if path.is_symlink():
        path.unlink()
    return path


def configure_rootfs(
    root: Path,
    *,
    key: str,
    kernel: KernelPackage,
    modules: list[str],
    index: dict[str, Path],
    modules_dir: Path,
    log: BuildLog,
) -> None:
    """Turn a fresh debootstrap tree into the guest's root file system."""
    begin = time.monotonic()
    for item in GUEST_FILES:
        path = _inside(root, item.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(item.text)
        path.chmod(item.mode)
    # A fixed machine-id (derived from the key) instead of first-boot setup,
    # which would cost boot time in every machine.
    machine_id = _inside(root, "etc/machine-id")
    machine_id.write_text(hashlib.sha256(f"machine-id:{key}".encode()).hexdigest()[:32] + "\n")
    machine_id.chmod(0o444)
    # Root may log in on the serial console without a password: a test
    # machine whose only network is QEMU's restricted user-mode one.
    shadow = _inside(root, "etc/shadow")
    lines = shadow.read_text().splitlines()
    shadow.write_text(
        "".join(
            ("root::" + line.split(":", 2)[2] if line.startswith("root:") else line) + "\n"
            for line in lines
        )
    )
    # Kernel modules: only the ones the guest can use, then depmod for udev.
    target = root / "lib" / "modules" / kernel.release
    for name in modules:
        dest = target / index[name].relative_to(modules_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(index[name], dest)
    for meta in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (modules_dir / meta).exists():
            shutil.copy2(modules_dir / meta, target / meta)
    log.timed("configure", time.monotonic() - begin)
    log.run("depmod", ["depmod", "-b", root, kernel.release], timeout=120)
    # The guest's own systemctl works offline in a chroot (no running manager needed).
    log.run(
        "systemctl enable", ["chroot", root, "systemctl", "enable", *ENABLED_UNITS], timeout=120
    )
    log.run("systemctl mask", ["chroot", root, "systemctl", "mask", *MASKED_UNITS], timeout=120)
    for link in REMOVED_UNIT_LINKS:
        (root / link).unlink(missing_ok=True)
    begin = time.monotonic()
    for rel in TRIM_PATHS:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        elif path.exists() or path.is_symlink():
            path.unlink()
    # apt expects its partial directories to exist.
    for rel in ("var/cache/apt/archives/partial", "var/lib/apt/lists/partial"):
        (root / rel).mkdir(parents=True, exist_ok=True)
    log.timed("trim", time.monotonic() - begin)


def _uuid_of(key: str) -> uuid.UUID:
    """A file system UUID derived from an image key, so rebuilds keep it."""
    return uuid.UUID(hashlib.sha256(key.encode()).hexdigest()[:32])


def make_disk(tree: Path, disk: Path, key: str, log: BuildLog) -> None:
    """Write a directory tree into a sparse raw ext4 disk of :data:`DISK_MIB` MiB."""
    disk.unlink(missing_ok=True)
    with disk.open("wb") as handle:
        handle.truncate(DISK_MIB << 20)
    log.run(
        "mkfs.ext4",
        [
            "mkfs.ext4", "-q", "-F", "-L", "vmis-root", "-U", str(_uuid_of(key)),
            # Initialise inode tables and journal now, on the host: lazy
            # initialisation would make every fresh guest write them under TCG.
            "-E", "lazy_itable_init=0,lazy_journal_init=0",
            "-d", tree, disk,
        ],
        timeout=600,
    )  # fmt: skip


def build_base_tree(
    tmp: Path, *, cache: Path, key: str, kernel: KernelPackage, mirror: str, log: BuildLog
) -> bool:
    """Build everything of a base image in ``tmp`` except the smoke boot.

    Leaves ``vmlinuz``, ``vmlinux`` (when PVH is possible), ``initrd.img``,
    ``rootfs/`` and ``rootfs.ext4`` in ``tmp``.

    :return: whether ``vmlinux`` has a PVH entry point.
    :raise ImageBuildError: When a step fails.
    """
    deb = download_kernel(cache, kernel, log)
    unpacked = tmp / "kernel-package"
    log.run("unpack kernel", ["dpkg-deb", "-x", deb, unpacked], timeout=600)
    modules_dir = unpacked / "lib" / "modules" / kernel.release
    bzimage = unpacked / "boot" / f"vmlinuz-{kernel.release}"
    if not bzimage.is_file() or not modules_dir.is_dir():
        raise log.fail("unpack kernel", f"{deb.name} has no {bzimage.name} or modules")
    shutil.copyfile(bzimage, tmp / "vmlinuz")

    begin = time.monotonic()
    elf = vmlinux_from_bzimage(bzimage.read_bytes())
    pvh = elf is not None and has_pvh_entry(elf)
    if elf is not None and pvh:
        (tmp / "vmlinux").write_bytes(elf)
    log.timed("extract vmlinux", time.monotonic() - begin)
    log.note(f"vmlinux: {'PVH entry point found' if pvh else 'not usable, booting the bzImage'}")

    begin = time.monotonic()
    index = module_index(modules_dir)
    builtin = builtin_modules(modules_dir)
    try:
        early = module_closure(INITRAMFS_MODULES, index, ko_depends, builtin)
        every = module_closure(ROOTFS_MODULES, index, ko_depends, builtin)
    except (KeyError, ValueError) as err:
        raise log.fail("modules", f"module {err} is not in {kernel.name}") from err
    (tmp / "initrd.img").write_bytes(build_initramfs(early, index, _busybox(log)))
    log.timed("initramfs", time.monotonic() - begin)

    rootfs = tmp / "rootfs"
    debootstrap_cache = cache / "debootstrap"
    debootstrap_cache.mkdir(parents=True, exist_ok=True)
    # dpkg fsyncs every file it unpacks, which makes debootstrap slow on a busy
    # disk; the tree is thrown away if the build fails, so durability buys
    # nothing here (mmdebstrap does the same). debootstrap keeps the file, and
    # the chroot's dpkg reads it.
    unsafe_io = rootfs / "etc/dpkg/dpkg.cfg.d/vmis-build-unsafe-io"
    unsafe_io.parent.mkdir(parents=True)
    unsafe_io.write_text("force-unsafe-io\n")
    log.run(
        "debootstrap",
        [
            "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
            f"--cache-dir={debootstrap_cache}", SUITE, rootfs, mirror,
        ],
        timeout=1800,
    )  # fmt: skip
    unsafe_io.unlink()
    configure_rootfs(
        rootfs, key=key, kernel=kernel, modules=every, index=index,
        modules_dir=modules_dir, log=log,
    )  # fmt: skip
    remove_tree(unpacked)
    make_disk(rootfs, tmp / "rootfs.ext4", key, log)
    return pvh


def build_agent_tree(
    tmp: Path, *, base_tree: Path, key: str, installer: Callable[[Path], None], log: BuildLog
) -> None:
    """Build an agent layer in ``tmp``: the base tree plus the agent, as ``rootfs.ext4``."""
    rootfs = tmp / "rootfs"
    log.run("copy rootfs", ["cp", "-a", "--reflink=auto", base_tree, rootfs], timeout=600)
    begin = time.monotonic()
    try:
        installer(rootfs)
    except Exception as err:
        # Any failure of the installer is a failed build step, reported as one line.
        raise log.fail("install agent", f"{type(err).__name__}: {err}") from err
    log.timed("install agent", time.monotonic() - begin)
    make_disk(rootfs, tmp / "rootfs.ext4", key, log)
    remove_tree(rootfs)


# Section: smoke boot


class SmokeResult:
    """The outcome of booting a fresh image once."""

    def __init__(self, boot: str, seconds: float, guest_uptime: float) -> None:
        #: ``"pvh"`` or ``"bios"``: the boot path that worked
        self.boot = boot
        #: wall-clock seconds from QEMU's start to multi-user.target
        self.seconds = seconds
        #: the guest kernel's uptime then
        self.guest_uptime = guest_uptime


def run_blocking(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from synchronous code, even inside a running event loop.

    Inside a loop (say, an async test calling the synchronous build) the
    coroutine runs on a fresh loop in a worker thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def smoke_boot(tmp: Path, *, append: str, pvh: bool, log: BuildLog, timeout: float) -> SmokeResult:
    """Boot the image in ``tmp`` to multi-user.target: PVH with qboot first, then the bzImage.

    :raise ImageBuildError: When neither boot path reaches multi-user.target.
    """
    # Imported here: the machine layer imports the recipe from this package.
    from vmis.qemu.cmdline import BootSpec
    from vmis.qemu.machine import QemuMachine

    attempts: list[tuple[str, BootSpec]] = []
    disk = tmp / "rootfs.ext4"
    initrd = tmp / "initrd.img"
    if pvh:
        firmware = QBOOT if QBOOT.exists() else None
        attempts.append(
            ("pvh", BootSpec(kernel=tmp / "vmlinux", initrd=initrd, append=append,
                             firmware=firmware, disk=disk))
        )  # fmt: skip
    attempts.append(
        ("bios", BootSpec(kernel=tmp / "vmlinuz", initrd=initrd, append=append,
                          firmware=None, disk=disk))
    )  # fmt: skip
    problems = []
    for mode, spec in attempts:
        with tempfile.TemporaryDirectory(prefix="vmis-smoke-") as work:
            machine = QemuMachine("vmis-smoke", Path(work), spec, no_reboot=True, vsock_cid=None)
            log.note(f"smoke boot ({mode}): {' '.join(machine.command())}")
            try:
                machine.start()
                report = run_blocking(functools.partial(machine.wait_for_boot, timeout=timeout))
            except Exception as err:
                # Any failure means "this boot path does not work"; the next one is tried.
                problems.append(f"{mode}: {err}")
                log.note(f"smoke boot ({mode}) failed: {err}")
                continue
            finally:
                machine.kill()
                log.note("console:\n" + _read(machine.paths.console))
            log.timed(f"smoke boot ({mode})", report.seconds)
            if report.failed_units:
                log.note(f"smoke boot ({mode}): failed units {', '.join(report.failed_units)}")
            return SmokeResult(mode, report.seconds, report.guest_uptime)
    raise log.fail("smoke boot", "; ".join(problems))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return "(none)"
