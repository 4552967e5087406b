"""The setup disk: an ISO 9660 image that installs or upgrades the guest agent.

Hyper-V shipped ``vmguest.iso``; vmis builds its own, in Python (pycdlib, no
external tools). It holds, with Rock Ridge (POSIX names and modes) and
Joliet extensions:

=====================  ======================================================
``vmis-guest.pyz``     the agent (standard library only; runs with python3)
``install.sh``         checks the checksums, then installs or upgrades the
                       agent into ``/`` (or ``--root DIR``), keeping its
                       configuration and state, and restarts it
``vmis-guest.service`` the systemd unit, for manual installs
``60-vmis.rules``      the udev rule for the virtio-serial port
``MANIFEST.json``      version, build time, files with sizes and SHA-256
``SHA256SUMS``         the same checksums for ``sha256sum -c``
``README.TXT``         how to use it
=====================  ======================================================

In a guest: ``mount /dev/sr0 /mnt && sh /mnt/install.sh``.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from importlib import resources
from pathlib import Path

import pycdlib

import vmis
from vmis.errors import LocalFileError, PackageDataError
from vmis.packaging.bundle import bundle_bytes

__all__ = ["INSTALL_SH", "build_setup_disk", "setup_disk_files"]

INSTALL_SH = """#!/bin/sh
# Install or upgrade the vmis guest agent from this disk.
#   sh /mnt/install.sh              into this guest (as root)
#   sh /mnt/install.sh --root DIR   into a guest filesystem mounted at DIR
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
if command -v sha256sum >/dev/null; then
    sha256sum -c --quiet SHA256SUMS
fi
python=$(command -v python3 || true)
if [ -z "$python" ]; then
    echo "install.sh: the vmis agent needs python3 (3.11 or newer) in the guest" >&2
    exit 1
fi
exec "$python" "$here/vmis-guest.pyz" install "$@"
"""

README = """vmis guest agent setup disk, version {version}

Install or upgrade the agent in a Linux guest (as root):

    mount /dev/sr0 /mnt
    sh /mnt/install.sh

The installer keeps /etc/vmis/agent.conf and /var/lib/vmis, enables and
(re)starts vmis-guest.service. Into a guest disk mounted elsewhere:

    sh /mnt/install.sh --root /path/to/guest/root

Checksums: SHA256SUMS (sha256sum -c SHA256SUMS).
"""


def _data(name: str) -> bytes:
    return resources.files("vmis").joinpath("data", name).read_bytes()


def setup_disk_files(bundle: bytes | None = None) -> dict[str, tuple[bytes, int]]:
    """The disk's files: name -> (bytes, mode)."""
    files: dict[str, tuple[bytes, int]] = {
        "vmis-guest.pyz": (bundle if bundle is not None else bundle_bytes(), 0o755),
        "install.sh": (INSTALL_SH.encode(), 0o755),
        "vmis-guest.service": (_data("systemd/vmis-guest.service"), 0o644),
        "60-vmis.rules": (_data("udev/60-vmis.rules"), 0o644),
        "README.TXT": (README.format(version=vmis.__version__).encode(), 0o644),
    }
    sums = {name: hashlib.sha256(data).hexdigest() for name, (data, _) in files.items()}
    files["SHA256SUMS"] = ("".join(f"{h}  {n}\n" for n, h in sorted(sums.items())).encode(),
                           0o644)
    manifest = {"product": "vmis guest agent", "version": vmis.__version__,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": {n: {"sha256": sums[n], "size": len(files[n][0])} for n in sorted(sums)}}
    files["MANIFEST.json"] = (json.dumps(manifest, indent=2).encode() + b"\n", 0o644)
    return files


def _iso_name(name: str) -> str:
    # ISO 9660 level 1 needs 8.3 upper-case names; Rock Ridge and Joliet carry
    # the real ones, which is what every current reader shows.
    stem, _, ext = name.upper().replace("-", "_").partition(".")
    return f"/{stem[:8]}.{ext[:3]};1" if ext else f"/{stem[:8]}.;1"


def build_setup_disk(path: Path, bundle: bytes | None = None) -> dict[str, object]:
    """Write the setup disk image to *path*; return its manifest plus the ISO's SHA-256.

    :raise LocalFileError: When the image cannot be written.
    """
    files = setup_disk_files(bundle)
    iso = pycdlib.PyCdlib()
    label = f"VMIS_{vmis.__version__.replace('.', '_')}"[:32]
    iso.new(interchange_level=1, rock_ridge="1.09", joliet=3, vol_ident=label,
            app_ident_str="vmis setup disk")
    seen: set[str] = set()
    for name, (data, mode) in sorted(files.items()):
        iso_name = _iso_name(name)
        if iso_name in seen:
            raise PackageDataError(f"setup disk: two files map to {iso_name}")
        seen.add(iso_name)
        iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}",
                   file_mode=0o100000 | mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        iso.write(str(tmp))
    except OSError as exc:
        raise LocalFileError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        iso.close()
    tmp.replace(path)
    manifest = json.loads(files["MANIFEST.json"][0])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {**manifest, "path": str(path), "iso_sha256": digest, "label": label}
