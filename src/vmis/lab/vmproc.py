"""A lab VM's init: runs the guest agent in the VM's sandbox, the way systemd runs it in a guest.

``python -m vmis.lab.vmproc ROOT PIDFILE [HOSTNAME]`` starts the installed
launcher (``/usr/bin/vmis-guest run`` inside the VM, which runs
``/usr/lib/vmis/vmis-guest.pyz``) in the VM's sandbox (vmis.lab.sandbox)
and writes the agent's pid, as this machine sees it, to PIDFILE. Like
``Restart=on-failure`` it starts the agent again when it fails, but only
while an online update is pending (vmis.guest.update): that is when a failed
start must lead to the launcher's rollback. An agent killed by hand stays
down until ``vmis lab up``, so the host's Lost Communication can be watched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from vmis.host.private import write_private
from vmis.lab.processes import children_of, pid_alive
from vmis.lab.sandbox import Sandbox

__all__ = ["main"]

#: systemd's RestartSec in the shipped unit
RESTART_DELAY = 1.0
#: seconds for the sandbox's init to start the agent
AGENT_TIMEOUT = 10.0
#: the agent's command line inside the VM
AGENT = ["/bin/sh", "/usr/bin/vmis-guest", "run"]


def agent_pid(sandbox: subprocess.Popen[bytes], info: int) -> int | None:
    """The agent's pid on this machine: the child of the sandbox's init; None if it never ran.

    bwrap writes the init's pid to *info* (which this closes) once the
    sandbox stands, and closes it unwritten when it fails.
    """
    with os.fdopen(info, "rb") as stream:
        text = stream.read()
    try:
        init = int(json.loads(text)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None
    deadline = time.monotonic() + AGENT_TIMEOUT
    while sandbox.poll() is None and time.monotonic() < deadline:
        children = children_of(init)
        if children:
            return children[0]
        time.sleep(0.01)
    return None


def main(argv: list[str]) -> int:
    """Supervise one lab VM's agent; returns its last exit status."""
    root, pidfile = Path(argv[0]), Path(argv[1])
    vm = Sandbox(root, argv[2] if len(argv) > 2 else root.parent.name)
    child: subprocess.Popen[bytes] | None = None
    agent: int | None = None
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        # To the agent itself, so that it stops in order as a guest's agent does;
        # its sandbox ends with it.
        nonlocal stopping
        stopping = True
        if agent is not None and pid_alive(agent):
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent, signum)
        elif child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        child, info = vm.start(AGENT)
        agent = agent_pid(child, info)
        if agent is not None:
            write_private(pidfile, f"{agent}\n")
        code = child.wait()
        pending = (root / "var/lib/vmis/update/pending").exists()
        if stopping or code == 0 or not pending:
            return code
        time.sleep(RESTART_DELAY)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
