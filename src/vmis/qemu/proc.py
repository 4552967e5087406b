"""What Linux's /proc and a Unix socket tell about a QEMU process on this machine.

Get-VM's Uptime for a VM whose guest does not report one (stock qemu-ga,
an agent not connected): how long its QEMU process has run, which is what
Hyper-V's Uptime counts too (the VM's running time, not the guest's).
A QEMU that vmis did not start is found through its QMP socket: the kernel
records who listens on a Unix socket, and tells it to whoever connects.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

__all__ = ["listener_pid", "process_started_at", "runs_with", "stat_fields"]

_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` from the state on (``[0]`` the state, ``[19]``
    the start time in clock ticks since boot); None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and ')': the fields resume after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields if len(fields) >= 20 else None


def process_started_at(pid: int) -> float | None:
    """When process *pid* started, in seconds since the epoch; None when it is gone."""
    fields = stat_fields(pid)
    if fields is None or fields[0] in ("X", "Z"):
        return None
    try:
        boot = next(line for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    return int(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def listener_pid(path: Path) -> int | None:
    """The process that listens on the Unix socket *path*, or None when none does.

    The connection is closed at once; a QEMU that serves one QMP client at
    a time takes it from its backlog later and sees it closed.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
            raw = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
        except OSError:
            return None
    pid = _CREDENTIALS.unpack(raw)[0]
    return pid if pid > 0 else None


def runs_with(pid: int, argument: str) -> bool:
    """Whether process *pid* is alive with *argument* in its command line (a pid
    looked up earlier may have been reused)."""
    try:
        return argument.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
