"""A libvirtd of the tests' own: real, privileged, and sealed off from this machine's.

Run as root, libvirtd is the *system* instance, whose directories are fixed
at build time (/etc/libvirt, /run/libvirt, /var/lib/libvirt,
/var/cache/libvirt, /var/log/libvirt). So it runs in a mount namespace of its
own (``unshare --mount``) in which a temporary directory is bound over each
of those: it, and every QEMU it starts, sees only the test's configuration,
sockets, domains and logs, and the machine's own directories stay untouched.
The binds exist only inside that namespace; the tests reach the daemon's
socket at its path in the temporary directory, with the URI
``qemu+unix:///system?socket=<dir>/run/libvirt/libvirt-sock``.

- ``LIBVIRT_DRIVER_DIR`` holds the QEMU driver only, so the daemon loads no
  network, firewall (nwfilter), storage or host-device driver.
- qemu.conf runs QEMU as root, with no security driver, no cgroups, no
  per-domain /dev namespace and its output in files (no virtlogd): nothing
  outside the namespace changes, and QEMU reads the guest image in root's
  cache as the QEMU backend's machines do. /sys/fs/cgroup is unmounted in the
  namespace as well, so libvirt cannot find a cgroup to write to.
- No systemd is needed: libvirtd runs in the foreground as the test's child.

The exact command is in docs/real-vms.md ("A libvirtd of your own").
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PrivateLibvirtd", "libvirtd_missing", "start_libvirtd"]

LIBVIRTD = "/usr/sbin/libvirtd"
QEMU_DRIVER = Path("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so")
#: the directories of the system instance, each replaced by one of the test's
BOUND = {"etc": "/etc/libvirt", "run": "/run", "lib": "/var/lib/libvirt",
         "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}

LIBVIRTD_CONF = """\
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:{root}/libvirtd.log"
"""
QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
"""
#: run by unshare in the new mount namespace: $1 is the test's directory
SANDBOX = " && ".join(
    [f'mount --bind "$1/{name}" {target}' for name, target in BOUND.items()]
    + ["{ umount -l /sys/fs/cgroup 2>/dev/null || true; }",
       f'exec {LIBVIRTD} --config "$1/etc/libvirtd.conf" --pid-file "$1/libvirtd.pid"'])


def libvirtd_missing() -> str | None:
    """Why this machine cannot run the private libvirtd, or None."""
    if os.geteuid() != 0:
        return "a private libvirtd needs root (a mount namespace)"
    for need in (LIBVIRTD, str(QEMU_DRIVER), "/usr/bin/qemu-system-x86_64"):
        if not Path(need).exists():
            return f"{need} is missing (dev/setup --test installs libvirt and QEMU)"
    missing = [target for target in BOUND.values() if not Path(target).is_dir()]
    if missing:
        return f"{', '.join(missing)} missing (apt-get install libvirt-daemon-system)"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed (pip install -e '.[test]')"
    return None


@dataclass
class PrivateLibvirtd:
    """A running private libvirtd."""

    root: Path
    process: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.root / "run" / "libvirt" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    def log(self) -> str:
        path = self.root / "libvirtd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Turn off every domain (their QEMU processes end), then stop the daemon."""
        import libvirt

        with contextlib.suppress(libvirt.libvirtError):
            conn = libvirt.open(self.uri)
            for domain in conn.listAllDomains(0):
                with contextlib.suppress(libvirt.libvirtError):
                    if domain.isActive():
                        domain.destroy()
            conn.close()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._kill_leftover_qemu()

    def restart(self) -> None:
        """Stop the daemon alone (its domains keep running, as when libvirtd is
        restarted on a host) and start it again on the same directories."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        self.process = start_libvirtd(self.root).process

    def _kill_leftover_qemu(self) -> None:
        # Only if the daemon could not destroy them: QEMU's pid files are in our run dir.
        for pidfile in (self.root / "run" / "libvirt" / "qemu").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text().strip())
                name = pidfile.stem
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"qemu-system" in cmdline and f"guest={name}".encode() in cmdline:
                    os.kill(pid, signal.SIGKILL)


def start_libvirtd(root: Path, timeout: float = 60.0) -> PrivateLibvirtd:
    """Start a private libvirtd in *root* (a new, short temporary directory) and wait
    until it answers."""
    from vmis.libvirt.connection import load_libvirt

    libvirt = load_libvirt()  # with libvirt's printing of every error to stderr silenced

    for name in BOUND:
        (root / name).mkdir(parents=True, exist_ok=True)
    drivers = root / "drivers"
    drivers.mkdir(exist_ok=True)
    if not (drivers / QEMU_DRIVER.name).exists():
        (drivers / QEMU_DRIVER.name).symlink_to(QEMU_DRIVER)
    (root / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF.format(root=root))
    (root / "etc" / "qemu.conf").write_text(QEMU_CONF)
    out = (root / "libvirtd.out").open("wb")
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", SANDBOX, "sh",
         str(root)],
        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        env={**os.environ, "LIBVIRT_DRIVER_DIR": str(drivers)}, start_new_session=True)
    out.close()
    daemon = PrivateLibvirtd(root, process)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"libvirtd exited with {process.returncode}: "
                               f"{(root / 'libvirtd.out').read_text()}{daemon.log()}")
        if daemon.socket.exists():
            try:
                libvirt.open(daemon.uri).close()
                return daemon
            except libvirt.libvirtError:
                pass
        if time.monotonic() > deadline:
            daemon.stop()
            raise RuntimeError(f"libvirtd did not answer within {timeout:g} s: {daemon.log()}")
        time.sleep(0.1)
