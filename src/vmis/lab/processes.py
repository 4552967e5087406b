"""The lab's processes: pid files, liveness, starting in the background, stopping.

A lab outlives the command that started it, so its processes are found again
through pid files; a pid is only trusted while ``/proc`` shows a vmis command
line behind it (pids get recycled).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from vmis.errors import StateError
from vmis.host.private import open_private_log, private_dir

__all__ = ["children_of", "how_it_ended", "log_hint", "pid_alive", "read_pid", "spawn", "stop_pid",
           "wait_for"]


def pid_alive(pid: int | None, marker: str = "vmis") -> bool:
    """True if *pid* runs a vmis process (not a recycled pid)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        # it may be gone between the two reads (ESRCH, ENOENT): then it is not alive
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1]
    except OSError:
        return False
    if state.startswith("Z"):
        return False  # a zombie: exited, not yet reaped
    return marker.encode() in cmdline


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, or None."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def wait_for(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    """Poll *check* until true.

    :raise StateError: On timeout, pointing at the log file.
    """
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise StateError(f"{what} did not come up within {timeout:g} s{log_hint(log)}")
        time.sleep(0.05)


def log_hint(log: Path | None) -> str:
    """``: <the log's last line>; see <log>``: why a process failed, at a glance."""
    if log is None:
        return ""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    last = f": {lines[-1].strip()[:300]}" if lines else ""
    return f"{last}; see {log}"


def stop_pid(pid: int | None, timeout: float = 10.0) -> bool:
    """SIGTERM a process and wait for it (SIGKILL after *timeout*); True if it ran."""
    if not pid_alive(pid):
        return False
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


def spawn(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start *argv* in the background, its output appended to *log* (made 0600)."""
    private_dir(log.parent)
    with open_private_log(log) as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, env=env)


def children_of(pid: int) -> list[int]:
    """The pids whose parent is *pid*, read off every ``/proc/PID/stat``.

    ``/proc/PID/task/PID/children`` would be quicker, but kernels without
    CONFIG_PROC_CHILDREN have none.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended while we looked
        if fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def how_it_ended(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

