"""A process lab VM's sandbox: its agent runs under bubblewrap with the VM's root as ``/``.

A lab VM runs on the machine that runs the lab; without a sandbox its
Invoke-Command, its Stop-VM and its diagnose advice would act on that
machine. Under ``bwrap`` (Debian's ``bubblewrap``) the agent has:

- the VM's root directory as ``/``, read-write: its ``/etc``, ``/var``,
  ``/run``, ``/tmp``, ``/home``, ``/root``, ``/srv`` and ``/opt`` are the
  VM's own, and nothing of the host outside that root is there;
- ``/usr`` as an overlay: the host's ``/usr`` read-only below, the VM's own
  ``<root>/usr`` above (its installed agent, and whatever the VM writes
  there). ``/bin``, ``/sbin`` and ``/lib*`` are as on the host, and of the
  host's ``/etc`` only what programs need to start (``ld.so.cache``,
  ``alternatives``);
- its own mount, PID, UTS (host name: the VM's name), IPC and network
  (loopback only) namespaces, its own ``/proc`` and ``/dev``;
- no capabilities (``--cap-drop ALL``; bwrap sets no_new_privs as well).

The host manager reaches the agent through the channel socket in the VM's
root, a directory both sides see. Mounting the overlay takes a mount
namespace of our own first: ``unshare --mount`` as root, ``unshare --user
--map-root-user --mount`` for another user (whose files the VM's root user
then owns).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmis.errors import StateError

__all__ = ["Sandbox", "check_host"]

#: the host directories a program needs to start, beside /usr
SYSTEM_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: of the host's /etc: the loader's cache, and the targets of /usr/bin's alternatives
SYSTEM_ETC = ("ld.so.cache", "alternatives")
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# mount(8)'s own complaint ("... failed mount system call") says nothing of why.
_MOUNT_USR = """mount -t overlay vmis-usr -o "$1" "$2" || {
    echo "vmis lab: cannot lay the VM's /usr over the host's (an overlay, upper layer $3):" \
        "the lab directory must be on a filesystem overlayfs takes as upper layer" \
        "(ext4, xfs, btrfs, tmpfs; not overlayfs or NFS): set VMIS_LAB_DIR" >&2
    exit 1
}
shift 3
exec "$@"
"""


def check_host(lab_dir: Path) -> None:
    """Say in one line what this machine lacks to run process lab VMs.

    :raise StateError: When ``bwrap`` or ``unshare`` is missing, or the lab
        directory's path cannot go into the overlay's options.
    """
    if shutil.which("bwrap") is None:
        raise StateError("lab VMs run in a bubblewrap sandbox and bwrap is missing: "
                         "apt-get install bubblewrap (or run dev/setup)")
    if shutil.which("unshare") is None:
        raise StateError("lab VMs need unshare (util-linux) for their sandbox: "
                         "apt-get install util-linux")
    if "," in str(lab_dir) or ":" in str(lab_dir):
        raise StateError(f"the lab directory {lab_dir} has ',' or ':' in its path, which an "
                         "overlay mount cannot take: set VMIS_LAB_DIR to another directory")


@dataclass(frozen=True)
class Sandbox:
    """The sandbox of the lab VM whose root directory is *root*.

    Beside the root, ``sandbox/usr`` is where the overlay of the two /usr is
    mounted (seen only inside the sandbox) and ``sandbox/work`` overlayfs's
    work directory, on the upper layer's filesystem as it must be.
    """

    root: Path
    hostname: str

    @property
    def _usr(self) -> Path:
        return self.root.parent / "sandbox" / "usr"

    @property
    def _work(self) -> Path:
        return self.root.parent / "sandbox" / "work"

    def prepare(self) -> None:
        """Give the root what every Linux root has, unless it has it already: the
        mount points, a host name, users root and nobody, an os-release that
        names the OS the VM runs (the host's, in /usr), /bin and /lib as links
        into /usr where the host has them so."""
        for directory in (self._usr, self._work, self.root / "usr", self.root / "etc"):
            directory.mkdir(parents=True, exist_ok=True)
        etc = self.root / "etc"
        defaults = {
            "hostname": f"{self.hostname}\n",
            "hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{self.hostname}\n::1\tlocalhost\n",
            "passwd": "root:x:0:0:root:/root:/bin/sh\n"
                      "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            "group": "root:x:0:\nnogroup:x:65534:\n",
        }
        for name, text in defaults.items():
            if not (etc / name).exists():
                (etc / name).write_text(text)
        links = {"etc/os-release": "../usr/lib/os-release"}
        # A merged-/usr host's /bin, /lib... are links into /usr: the VM gets the same
        # (bwrap 0.8's --symlink fails on a second start, when the link exists).
        links.update({name: os.readlink(f"/{name}") for name in SYSTEM_LINKS
                      if Path("/", name).is_symlink()})
        for name, target in links.items():
            link = self.root / name
            if not link.exists() and not link.is_symlink():
                link.symlink_to(target)

    def command(self, argv: list[str], info_fd: int) -> list[str]:
        """The command line that runs *argv* (paths inside the VM) in the sandbox.

        :param info_fd: bwrap writes ``{"child-pid": ...}`` there: the host pid
            of the sandbox's init, whose child *argv* is.
        """
        options = f"lowerdir=/usr,upperdir={self.root / 'usr'},workdir={self._work}"
        namespace = ["unshare", "--mount", "--propagation", "private"]
        if os.geteuid() != 0:
            namespace[1:1] = ["--user", "--map-root-user"]
            options += ",userxattr"  # an unprivileged overlay keeps its notes in user.*
        return [*namespace, "sh", "-c", _MOUNT_USR, "vmis-lab-sandbox",
                options, str(self._usr), str(self.root / "usr"),
                *self._bwrap(info_fd), "--", *argv]

    def _bwrap(self, info_fd: int) -> list[str]:
        args = ["bwrap", "--bind", str(self.root), "/", "--bind", str(self._usr), "/usr"]
        for name in SYSTEM_LINKS:
            host = Path("/", name)
            if host.is_dir() and not host.is_symlink():
                args += ["--ro-bind", str(host), f"/{name}"]
        for name in SYSTEM_ETC:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        return [*args, "--proc", "/proc", "--dev", "/dev",
                "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
                "--unshare-cgroup-try", "--hostname", self.hostname[:64],
                "--cap-drop", "ALL", "--new-session", "--die-with-parent",
                "--clearenv", "--setenv", "PATH", GUEST_PATH, "--setenv", "HOME", "/root",
                "--chdir", "/", "--info-fd", str(info_fd)]

    def start(self, argv: list[str]) -> tuple[subprocess.Popen[bytes], int]:
        """Start *argv* in the sandbox; returns the process and the read end of its info pipe."""
        read, write = os.pipe()
        try:
            process = subprocess.Popen(self.command(argv, write), pass_fds=(write,))
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        return process, read
