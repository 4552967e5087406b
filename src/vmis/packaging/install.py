"""Install or upgrade the guest agent into a root directory, as a user would.

Into ``root`` (``/`` on a running guest, a mounted disk or a lab/image tree
otherwise) it writes:

=========================================  ===========================================
``/usr/lib/vmis/vmis-guest.pyz``            the agent (vmis.packaging.bundle); the previous
                                            one is kept as ``vmis-guest.pyz.previous``
``/usr/lib/vmis/VERSION``                   the installed version
``/usr/bin/vmis-guest``                     a small launcher
``/etc/systemd/system/vmis-guest.service``  the unit, enabled for multi-user.target
``/etc/udev/rules.d/60-vmis.rules``         mode and name of the virtio-serial port
``/etc/vmis/agent.conf``                    only if missing: upgrades keep the config
=========================================  ===========================================

State under ``/var/lib/vmis`` is never touched. Standard library only: the
setup disk runs this inside guests.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import vmis
from vmis.packaging.bundle import bundle_bytes

__all__ = ["LAUNCHER", "install_agent", "rollback_agent"]

LAUNCHER = """#!/bin/sh
# vmis guest agent launcher (installed by vmis.packaging.install).
# While an online update waits for confirmation (vmis.guest.update), count the
# agent's starts; after two failed ones put the previous agent back.
root="${VMIS_GUEST_ROOT:-}"
lib="$root/usr/lib/vmis"
pending="$root/var/lib/vmis/update/pending"
if [ "${1:-}" = run ] && [ -f "$pending" ]; then
    tries=$(cat "$pending" 2>/dev/null || echo 0)
    case "$tries" in ''|*[!0-9]*) tries=0 ;; esac
    if [ "$tries" -ge 2 ] && [ -f "$lib/vmis-guest.pyz.previous" ]; then
        mv -f "$lib/vmis-guest.pyz.previous" "$lib/vmis-guest.pyz"
        rm -f "$pending"
        echo "vmis-guest: the updated agent failed to start twice; rolled back" >&2
    else
        echo $((tries + 1)) > "$pending"
    fi
fi
if [ -n "$root" ]; then
    exec "${VMIS_PYTHON:-/usr/bin/python3}" "$lib/vmis-guest.pyz" --root "$root" "$@"
fi
exec "${VMIS_PYTHON:-/usr/bin/python3}" "$lib/vmis-guest.pyz" "$@"
"""


def _data(name: str) -> bytes:
    return resources.files("vmis").joinpath("data", name).read_bytes()


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, path)


def install_agent(root: Path, bundle: bytes | None = None, version: str | None = None) -> None:
    """Install (or upgrade) the agent into *root*, keeping config and state.

    :param bundle: the zipapp to install; default: built from this package.
    :param version: the version it carries; default: this package's.
    """
    lib = root / "usr/lib/vmis"
    current = lib / "vmis-guest.pyz"
    if current.exists():
        os.replace(current, lib / "vmis-guest.pyz.previous")
    _write(current, bundle if bundle is not None else bundle_bytes(), 0o755)
    _write(lib / "VERSION", f"{version or vmis.__version__}\n".encode(), 0o644)
    _write(root / "usr/bin/vmis-guest", LAUNCHER.encode(), 0o755)
    _write(root / "etc/systemd/system/vmis-guest.service", _data("systemd/vmis-guest.service"),
           0o644)
    _write(root / "etc/udev/rules.d/60-vmis.rules", _data("udev/60-vmis.rules"), 0o644)
    config = root / "etc/vmis/agent.conf"
    if not config.exists():
        _write(config, _data("agent.conf"), 0o644)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "vmis-guest.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/vmis-guest.service")


def rollback_agent(root: Path) -> bool:
    """Put the previous agent back; False when there is none."""
    lib = root / "usr/lib/vmis"
    previous = lib / "vmis-guest.pyz.previous"
    if not previous.exists():
        return False
    os.replace(previous, lib / "vmis-guest.pyz")
    return True
