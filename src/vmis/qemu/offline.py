"""Install the guest agent into a stopped VM's disk, without running the VM.

Two targets:

- a guest root filesystem directory (a mounted disk, a container tree, an
  image being built): :func:`install_into_root`, the same installer the setup
  disk runs, keeping the guest's configuration and state;
- a disk image file (raw, qcow2, vhdx, ...): :func:`install_into_image`,
  through libguestfs (Debian's ``python3-guestfs`` / ``libguestfs-tools``),
  which inspects the image, mounts its filesystems in a small appliance VM
  and copies the same files in.

What libguestfs's appliance needs of the host (supermin, QEMU, a kernel with
its modules), and the Debian kernel vmis lends a host without one, are in
:mod:`vmis.qemu.appliance`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from vmis.errors import ConfigError, ExternalProgramError, QemuNotInstalled
from vmis.packaging.install import install_agent
from vmis.qemu.appliance import appliance_kernel, check_appliance

__all__ = ["install_into_image", "install_into_root", "libguestfs_python"]

#: formats qemu reads that an administrator may name
FORMATS = ("raw", "qcow2", "vhdx", "vmdk", "vdi", "vpc")
#: seconds libguestfs may take, appliance build included (TCG is slow)
TIMEOUT = 900

# The worker runs under the Python that has libguestfs's binding (Debian's
# /usr/bin/python3), so it is a script, not an import: vmis may run on another.
_WORKER = textwrap.dedent('''
    import json, os, sys
    import guestfs

    image, fmt, staging = sys.argv[1], sys.argv[2], sys.argv[3]
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(image, format=fmt, readonly=0)
    g.launch()

    def mount(device, point):
        # libguestfs would end in mount(8)'s "... failed mount system call"
        try:
            g.mount(device, point)
        except RuntimeError as exc:
            fstype = g.vfs_type(device)
            why = ("the appliance's kernel cannot mount " + fstype + " (apt-get install "
                   "linux-image-amd64 gives it a kernel with every filesystem module)"
                   if not g.filesystem_available(fstype) else str(exc).splitlines()[0])
            sys.exit(f"cannot mount {device} ({fstype}) on {point} in libguestfs's "
                     f"appliance: {why}")

    roots = g.inspect_os()
    if not roots:
        filesystems = [d for d, t in g.list_filesystems().items() if t not in ("swap", "unknown")]
        if len(filesystems) != 1:
            sys.exit("no operating system found in the image, and not exactly one filesystem "
                     f"to install into (found {filesystems})")
        mount(filesystems[0], "/")
        found = {"root": filesystems[0], "os": None}
    else:
        root = roots[0]
        points = g.inspect_get_mountpoints(root)
        for point in sorted(points, key=len):
            mount(points[point], point)
        found = {"root": root, "os": g.inspect_get_product_name(root)}
    written, kept = [], []
    for here, dirs, files in os.walk(staging):
        rel = os.path.relpath(here, staging)
        target = "/" if rel == "." else "/" + rel
        g.mkdir_p(target)
        for name in sorted(dirs + files):
            src = os.path.join(here, name)
            dest = os.path.join(target, name)
            if os.path.islink(src):
                g.ln_sf(os.readlink(src), dest)
            elif os.path.isfile(src):
                if dest == "/etc/vmis/agent.conf" and g.exists(dest):
                    kept.append(dest)
                    continue
                if dest == "/usr/lib/vmis/vmis-guest.pyz" and g.is_file(dest):
                    # as install_agent does: the launcher's rollback needs it
                    g.mv(dest, dest + ".previous")
                g.upload(src, dest)
                g.chmod(os.stat(src).st_mode & 0o7777, dest)
                written.append(dest)
    g.sync()
    g.umount_all()
    g.shutdown()
    g.close()
    print(json.dumps({**found, "written": written, "kept": kept}))
''')


def install_into_root(root: Path) -> dict[str, Any]:
    """Install the agent into a guest root filesystem directory.

    :raise ConfigError: When *root* is not a directory.
    """
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory")
    before = root / "usr/lib/vmis/VERSION"
    previous = before.read_text().strip() if before.is_file() else None
    install_agent(root)
    from vmis import __version__

    return {"Target": str(root), "Kind": "directory", "Installed": __version__,
            "Previous": previous}


def libguestfs_python() -> str:
    """A Python interpreter that can ``import guestfs``.

    :raise QemuNotInstalled: Naming the Debian packages when there is none.
    """
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if not candidate:
            continue
        probe = subprocess.run([candidate, "-c", "import guestfs"], capture_output=True,
                               check=False)
        if probe.returncode == 0:
            return candidate
    raise QemuNotInstalled("installing into a disk image needs libguestfs: "
                           "apt-get install python3-guestfs libguestfs-tools")


def _detect_format(path: Path) -> str:
    try:
        probe = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                               capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise QemuNotInstalled("telling a disk image's format needs qemu-img: "
                               "apt-get install qemu-utils (or give -Format)") from None
    if probe.returncode != 0:
        raise ExternalProgramError(f"{path}: qemu-img cannot read it: {probe.stderr.strip()}")
    fmt = str(json.loads(probe.stdout).get("format", "raw"))
    return fmt


def install_into_image(path: Path, fmt: str | None = None,
                       cache: Path | None = None) -> dict[str, Any]:
    """Install the agent into a disk image file through libguestfs.

    :param fmt: the image format; detected with ``qemu-img info`` when omitted.
    :raise QemuNotInstalled: When libguestfs (or qemu-img, to tell the format) is missing.
    :raise ExternalProgramError: When libguestfs cannot change the image.
    """
    from vmis import __version__
    from vmis.qemu.image._cache import cache_dir

    if not path.is_file():
        raise ConfigError(f"{path}: no such disk image")
    fmt = fmt or _detect_format(path)
    if fmt not in FORMATS:
        raise ConfigError(f"{path}: unsupported image format {fmt!r} ({', '.join(FORMATS)})")
    python = libguestfs_python()
    check_appliance(python)
    cache = cache or cache_dir()
    env = dict(os.environ, LIBGUESTFS_BACKEND="direct",
               LIBGUESTFS_CACHEDIR=str(cache / "libguestfs"))
    if os.environ.get("VMIS_ACCEL", "tcg") != "kvm":
        # vmis boots its VMs with TCG unless told otherwise (KVM is not usable
        # on every host that has /dev/kvm); the appliance follows suit.
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    (cache / "libguestfs").mkdir(parents=True, exist_ok=True)
    kernel = appliance_kernel(cache)
    with tempfile.TemporaryDirectory(prefix="vmis-offline-") as tmp:
        staging = Path(tmp) / "root"
        staging.mkdir()
        install_agent(staging)
        worker = Path(tmp) / "worker.py"
        worker.write_text(_WORKER)
        argv = [python, str(worker), str(path), fmt, str(staging)]
        if kernel is not None:
            env.update(kernel.env())
            argv = kernel.wrap(argv, Path(tmp))
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=TIMEOUT,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise ExternalProgramError(f"{path}: libguestfs did not finish within {TIMEOUT} s") \
                from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise ExternalProgramError(f"{path}: installing through libguestfs failed: "
                                   f"{lines[-1] if lines else 'exit ' + str(proc.returncode)}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"Target": str(path), "Kind": f"image ({fmt})", "Installed": __version__,
            "Root": result["root"], "OS": result["os"], "Written": len(result["written"]),
            "KeptConfig": bool(result["kept"])}
