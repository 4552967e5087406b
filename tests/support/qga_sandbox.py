"""The real qemu-ga (Debian's qemu-guest-agent) on this machine, in a bubblewrap sandbox.

qemu-ga must never act on the machine the tests run on, so it runs only
like this: the whole file system read-only except one work directory (the
"guest's" writable place, where file copies land), a private /tmp, /dev and
/proc, no capabilities, and every RPC that changes the machine's state
blocked with ``-b`` (:data:`BLOCKED`). It listens on a Unix socket in the
work directory (``-m unix-listen``), as QEMU's chardev socket would present
it; ``--die-with-parent`` ends it with the test process.

qemu-ga exits when a client disconnects with data unread (a clean EOF leaves
it listening), so :meth:`QgaSandbox.ensure_running` starts it again when a
test left it dead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

__all__ = ["BLOCKED", "QgaSandbox", "qga_sandbox"]

#: every state-changing RPC of qemu-ga 7.2: none of them may reach this machine
BLOCKED = (
    "guest-set-time", "guest-shutdown", "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list",
    "guest-fsfreeze-thaw", "guest-fstrim", "guest-suspend-disk", "guest-suspend-ram",
    "guest-suspend-hybrid", "guest-set-vcpus", "guest-set-user-password",
    "guest-set-memory-blocks", "guest-exec", "guest-exec-status",
    "guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys",
)


class QgaSandbox:
    """One sandboxed qemu-ga listening on ``<work>/qga/qga.sock``.

    :param work: a directory with a short path (the socket's path must fit sun_path).
    :param extra_blocked: RPCs to block on top of :data:`BLOCKED` (a guest that blocks more).
    :param verbose: ``-v``: qemu-ga logs every payload to its log.
    """

    def __init__(self, work: Path, extra_blocked: Iterable[str] = (),
                 verbose: bool = False) -> None:
        self.dir = work / "qga"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "qga.sock"
        self.log = self.dir / "qga.log"
        self.blocked = tuple(BLOCKED) + tuple(extra_blocked)
        self.verbose = verbose
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def channel(self) -> str:
        """The channel address a VM record names."""
        return f"unix:{self.socket}"

    def command(self) -> list[str]:
        qga = shutil.which("qemu-ga", path="/usr/sbin:/usr/bin:/sbin:/bin")
        assert qga is not None
        d = str(self.dir)
        argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--tmpfs", "/tmp", "--bind", d, d, "--unshare-ipc", "--cap-drop", "ALL",
                "--die-with-parent", qga, "-m", "unix-listen", "-p", str(self.socket),
                "-f", f"{d}/qga.pid", "-t", d, "-l", str(self.log),
                "-b", ",".join(self.blocked)]
        return [*argv, "-v"] if self.verbose else argv

    def start(self) -> None:
        """Start qemu-ga and wait until its socket accepts connections."""
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL)
        self.starts += 1
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"qemu-ga exited at start: {self.log.read_text()[-2000:]}")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.socket))
                return
            except OSError:
                time.sleep(0.02)
            finally:
                probe.close()  # a clean close: qemu-ga keeps listening
        raise AssertionError("qemu-ga's socket did not appear within 20 s")

    def ensure_running(self) -> None:
        """Start qemu-ga again if it exited (a client left with data unread)."""
        if self.process is None or self.process.poll() is not None:
            self.start()

    @property
    def pid(self) -> int:
        """qemu-ga's pid (bubblewrap's child)."""
        assert self.process is not None
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True,
                             text=True, check=False).stdout.split()
        return int(out[0]) if out else self.process.pid

    def cpu_seconds(self) -> float:
        """qemu-ga's user and system CPU time so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def require_tools() -> None:
    for tool, package in (("bwrap", "bubblewrap"), ("qemu-ga", "qemu-guest-agent")):
        if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            pytest.skip(f"{tool} is not installed (dev/setup --test installs {package})")


@pytest.fixture
def qga_sandbox(short_tmp: Path) -> Iterator[QgaSandbox]:
    """A sandboxed qemu-ga for one test."""
    require_tools()
    sandbox = QgaSandbox(short_tmp)
    sandbox.start()
    yield sandbox
    sandbox.stop()
