"""What /proc and a Unix socket tell of a process (Get-VM's Uptime for a QEMU vmis did
not start): real processes of this machine, no QEMU needed."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from vmis.qemu.proc import listener_pid, process_started_at, runs_with


def test_a_process_start_time_is_when_it_was_spawned_and_none_once_it_is_gone():
    before = time.time()
    child = subprocess.Popen(["sleep", "30"])
    after = time.time()
    try:
        started = process_started_at(child.pid)
        # the kernel counts in clock ticks from a boot time given in whole seconds
        assert started is not None and before - 1.1 <= started <= after + 1.1, (before, started)
    finally:
        child.kill()
        child.wait()
    assert process_started_at(child.pid) is None


def test_the_process_listening_on_a_unix_socket_is_found_and_checked_by_its_command_line(
        short_tmp: Path):
    path = short_tmp / "qmp.sock"
    server = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)\n"
        "print('ready', flush=True); time.sleep(60)\n"), str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        assert listener_pid(path) == server.pid
        assert runs_with(server.pid, str(path))
        assert not runs_with(server.pid, str(short_tmp / "other.sock"))
    finally:
        server.kill()
        server.wait()
    assert not runs_with(server.pid, str(path))
    assert listener_pid(path) is None  # refused: nobody listens any more
    assert listener_pid(short_tmp / "absent.sock") is None
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
        other.bind(str(short_tmp / "dgram.sock"))
        assert listener_pid(short_tmp / "dgram.sock") is None  # not a stream socket
