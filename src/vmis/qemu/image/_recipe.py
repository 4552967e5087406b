"""What goes into the guest image: packages, kernel modules, configuration files.

This module is data. Everything in it is an input of the image's cache key
(:func:`recipe_digest`), so editing a file's text here rebuilds the image on
the next run; bump :data:`RECIPE_VERSION` for changes to the build *code*.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

__all__ = [
    "APPEND",
    "BOOT_MARKER",
    "DISK_MIB",
    "ENABLED_UNITS",
    "GUEST_FILES",
    "INITRAMFS_FAILURE",
    "INITRAMFS_MODULES",
    "INIT_SCRIPT",
    "MASKED_UNITS",
    "PACKAGES",
    "RECIPE_VERSION",
    "REMOVED_UNIT_LINKS",
    "ROOTFS_MODULES",
    "SUITE",
    "TRIM_PATHS",
    "GuestFile",
    "recipe_digest",
]

#: Bump when the build code changes in a way the data below does not show.
RECIPE_VERSION = 1

#: Debian release of the guest.
SUITE = "bookworm"

#: Packages on top of ``debootstrap --variant=minbase``.
#:
#: systemd-sysv and udev: the agent is a systemd service, and udev makes the
#: ``/dev/virtio-ports/<name>`` links. acpid turns the ACPI power button (QMP
#: ``system_powerdown``) into a clean poweroff; it replaces logind, which
#: would need dbus and costs about 10 s of boot under TCG. kmod: ``lsmod``
#: and ``modprobe``. iproute2: ``ip`` for the KVP intrinsic items. The NIC's
#: DHCP client is systemd-networkd, already part of the systemd package.
#: qemu-guest-agent: Debian's qemu-ga, started by its udev rule when the
#: machine has the ``org.qemu.guest_agent.0`` port, for the qemu-ga link's
#: real-VM tests (docs/guest-links.md); it runs beside the vmis agent, each on
#: its own port.
PACKAGES: tuple[str, ...] = ("python3", "systemd-sysv", "udev", "kmod", "acpid", "iproute2",
                             "qemu-guest-agent")

#: Modules the initramfs loads to mount the root file system, in load order
#: (dependencies are added by the build). crc32c_generic first: ext4 asks the
#: crypto API for crc32c, which cannot autoload modules in the initramfs, and
#: crc32c-intel does not load on TCG's default CPU (docs/real-vms.md, "The test machines").
INITRAMFS_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")

#: Modules copied into the root file system (with their dependencies) for udev
#: to load by modalias, or systemd-modules-load by name. The rest of Debian's
#: 4000 modules stay out: the guest only ever sees QEMU's virtual devices.
ROOTFS_MODULES: tuple[str, ...] = (
    *INITRAMFS_MODULES,
    "virtio_console",  # virtio-serial: the agent channel
    "virtio_net",
    "virtio_rng",
    "vmw_vsock_virtio_transport",  # vhost-vsock-pci, where the host has it
    "vsock_loopback",  # in-guest AF_VSOCK tests (docs/real-vms.md, "The test machines")
    "ata_piix",  # the IDE controller of the CD-ROM
    "sr_mod",
    "isofs",
    "button",  # ACPI power button
    "evdev",  # ... which logind reads through /dev/input
    "loop",
)

#: Size of the sparse root disk. The files take about 200 MB; the rest is room
#: for the guest's own writes (file copies of 100 MiB and more).
DISK_MIB = 2048

#: Kernel command line. ``root=`` is read by the initramfs's /init.
#: ``mitigations=off``: the guest is a throwaway test machine, and the
#: mitigations for TCG's CPU model only cost boot time; so does zeroing every
#: page allocation (Debian turns ``init_on_alloc`` on).
APPEND = (
    "console=ttyS0 root=/dev/vda rootfstype=ext4 rw quiet panic=-1 mitigations=off init_on_alloc=0"
)

#: Printed on the console when systemd reaches multi-user.target.
BOOT_MARKER = "VMIS-MULTI-USER"
#: Printed on the console by the initramfs when it cannot mount the root.
INITRAMFS_FAILURE = "VMIS-INITRAMFS-FAILED"

#: /init of the initramfs (busybox sh). It loads the modules listed in
#: /etc/modules.order, mounts the root named by ``root=`` and hands over to
#: systemd; on failure it says why on the console and powers off, so a broken
#: image fails fast instead of hanging a test until its timeout.
INIT_SCRIPT = f"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {{
    echo "{INITRAMFS_FAILURE}: $*" > /dev/console
    sleep 1
    poweroff -f
}}

for module in $(cat /etc/modules.order); do
    insmod "/lib/modules/$module.ko" || echo "vmis initramfs: cannot load $module" > /dev/console
done

root=/dev/vda
fstype=ext4
for word in $(cat /proc/cmdline); do
    case "$word" in
        root=*) root="${{word#root=}}" ;;
        rootfstype=*) fstype="${{word#rootfstype=}}" ;;
    esac
done

# The disk appears asynchronously after virtio_blk is loaded.
tries=0
while [ ! -b "$root" ]; do
    tries=$((tries + 1))
    [ "$tries" -gt 100 ] && fail "no root device $root after 10 s"
    sleep 0.1
done

mkdir -p /newroot
mount -t "$fstype" -o rw "$root" /newroot || fail "cannot mount $root ($fstype)"
# /sbin/init is an absolute symlink into the new root: test the link, not its target.
[ -L /newroot/sbin/init ] || [ -x /newroot/sbin/init ] || fail "no /sbin/init on $root"
mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot /sbin/init
"""


@dataclass(frozen=True, slots=True)
class GuestFile:
    """A file the build writes into the root file system."""

    path: str
    text: str
    mode: int = 0o644


#: The announcement behind :data:`BOOT_MARKER`: kernel uptime and failed units,
#: so a boot-time measurement and a boot-health check cost one console line.
_ANNOUNCE = f"""#!/bin/sh
read -r uptime _ < /proc/uptime
failed=$(systemctl --failed --plain --no-legend --no-pager | while read -r unit _; do
    printf '%s,' "$unit"; done)
echo "{BOOT_MARKER} uptime=$uptime failed=${{failed:-none}}" > /dev/console
"""

GUEST_FILES: tuple[GuestFile, ...] = (
    GuestFile("etc/hostname", "vmis-guest\n"),
    GuestFile("etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tvmis-guest\n::1\tlocalhost\n"),
    GuestFile("etc/fstab", "/dev/vda\t/\text4\trw,relatime\t0\t0\n"),
    GuestFile("etc/resolv.conf", ""),
    # DHCP on every wired NIC; QEMU's user-mode network answers with 10.0.2.15/24.
    GuestFile(
        "etc/systemd/network/80-vmis-dhcp.network",
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n",
    ),
    # The journal in RAM only: a persistent journal's flush and writes are slow under TCG.
    GuestFile("etc/systemd/journald.conf.d/vmis.conf", "[Journal]\nStorage=volatile\n"),
    # vsock_loopback has no device to be autoloaded by.
    GuestFile("etc/modules-load.d/vmis.conf", "vsock_loopback\n"),
    # Keep documentation out of packages installed later (docs were trimmed).
    GuestFile(
        "etc/dpkg/dpkg.cfg.d/vmis-nodoc",
        "path-exclude=/usr/share/doc/*\npath-exclude=/usr/share/man/*\n"
        "path-exclude=/usr/share/locale/*\npath-exclude=/usr/share/info/*\n",
    ),
    # The power button powers off (what logind would do by default).
    GuestFile("etc/acpi/events/vmis-powerbutton", "event=button/power.*\naction=/sbin/poweroff\n"),
    GuestFile("usr/lib/vmis-image/announce-boot", _ANNOUNCE, 0o755),
    GuestFile(
        "etc/systemd/system/vmis-boot-marker.service",
        "[Unit]\nDescription=vmis test image: announce multi-user.target on the console\n"
        # After= the target that wants it: runs once multi-user.target is reached.
        "After=multi-user.target\n\n"
        "[Service]\nType=oneshot\nExecStart=/usr/lib/vmis-image/announce-boot\n\n"
        "[Install]\nWantedBy=multi-user.target\n",
    ),
)

#: Units enabled in the guest.
ENABLED_UNITS: tuple[str, ...] = ("systemd-networkd.service", "vmis-boot-marker.service")

#: Units masked because they cost boot time under TCG (every process start
#: costs on the order of a second of emulated CPU) and do nothing useful in a
#: short-lived test machine.
MASKED_UNITS: tuple[str, ...] = (
    # periodic maintenance
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    # nothing waits for "online"; the root is mounted read-write by the initramfs
    "systemd-networkd-wait-online.service",
    "systemd-remount-fs.service",
    # first-boot and bookkeeping work already done at build time, or not needed
    "systemd-pstore.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-sysusers.service",
    "systemd-random-seed.service",  # virtio-rng feeds the pool
    "systemd-journal-flush.service",  # the journal is volatile
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-network-generator.service",
    "kmod-static-nodes.service",
    # modules and file systems the guest has no use for
    "modprobe@configfs.service",
    "modprobe@dm_mod.service",
    "modprobe@drm.service",
    "modprobe@fuse.service",
    "modprobe@loop.service",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    # logind needs dbus, which is not installed; acpid handles the power button
    "systemd-logind.service",
    # without dbus, this starts gettys on tty2-tty6 of a machine with no screen
    "getty-static.service",
)

#: Enablement links removed: there is no screen, so no getty on tty1
#: (the serial console gets one from systemd-getty-generator).
REMOVED_UNIT_LINKS: tuple[str, ...] = ("etc/systemd/system/getty.target.wants/getty@tty1.service",)

#: Trimmed from the root file system to keep the image small.
TRIM_PATHS: tuple[str, ...] = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log/bootstrap.log",
)


def recipe_digest() -> str:
    """SHA-256 over everything in this module that shapes the image."""
    data = {
        "recipe": RECIPE_VERSION,
        "suite": SUITE,
        "packages": PACKAGES,
        "initramfs_modules": INITRAMFS_MODULES,
        "rootfs_modules": ROOTFS_MODULES,
        "disk_mib": DISK_MIB,
        "append": APPEND,
        "init": INIT_SCRIPT,
        "files": [(f.path, f.text, f.mode) for f in GUEST_FILES],
        "enabled": ENABLED_UNITS,
        "masked": MASKED_UNITS,
        "removed": REMOVED_UNIT_LINKS,
        "trim": TRIM_PATHS,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
