"""vmis.lab.processes.pid_alive when the process ends between its two reads of /proc."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmis.lab import processes
from vmis.lab.processes import pid_alive


def test_a_process_that_ends_between_the_reads_is_not_alive(monkeypatch: pytest.MonkeyPatch):
    # bench/soak.py: a lab VM's agent, killed and reaped just after its cmdline was read,
    # made the read of its stat raise ProcessLookupError out of pid_alive
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "vmis"])
    real = Path.read_bytes

    def read_then_end(path: Path) -> bytes:
        data = real(path)
        if path.name == "cmdline":
            proc.kill()
            proc.wait()  # reaped: its /proc entry goes
        return data

    try:
        deadline = time.monotonic() + 10
        while not pid_alive(proc.pid):  # until it has exec'd (its cmdline names vmis)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        monkeypatch.setattr(processes.Path, "read_bytes", read_then_end)
        assert pid_alive(proc.pid) is False
    finally:
        proc.kill()
        proc.wait()
