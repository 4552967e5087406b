"""A lab VM's init: runs the guest agent the way systemd runs it in a real guest.

``python -m vmis.lab.vmproc ROOT PIDFILE`` starts the installed launcher
(``ROOT/usr/bin/vmis-guest run``, which runs ``ROOT/usr/lib/vmis/vmis-guest.pyz``)
and writes the agent's pid to PIDFILE. Like ``Restart=on-failure`` it starts
the agent again when it fails, but only while an online update is pending
(vmis.guest.update): that is when a failed start must lead to the launcher's
rollback. An agent killed by hand stays down until ``vmis lab up``, so the
host's Lost Communication can be watched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from vmis.host.private import write_private

__all__ = ["main"]

#: systemd's RestartSec in the shipped unit
RESTART_DELAY = 1.0


def main(argv: list[str]) -> int:
    """Supervise one lab VM's agent; returns its last exit status."""
    root, pidfile = Path(argv[0]), Path(argv[1])
    env = dict(os.environ, VMIS_GUEST_ROOT=str(root), VMIS_PYTHON=sys.executable)
    child: subprocess.Popen[bytes] | None = None
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        child = subprocess.Popen(["/bin/sh", str(root / "usr/bin/vmis-guest"), "run"], env=env)
        write_private(pidfile, f"{child.pid}\n")
        code = child.wait()
        pending = (root / "var/lib/vmis/update/pending").exists()
        if stopping or code == 0 or not pending:
            return code
        time.sleep(RESTART_DELAY)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
