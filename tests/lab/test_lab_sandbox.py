"""A process lab VM runs in its sandbox (vmis.lab.sandbox): what its commands can reach.

Invoke-Command runs the commands in the lab VM, as an administrator would
run them; each checks one wall of the sandbox against this machine.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.lab import Result, configured_lab, run_vmis
from vmis.lab.lab import Lab

#: a lab VM whose guest lets the host run /usr/bin and /bin programs (VM Session)
CONF = """[agent]
channel = unix:/run/vmis/channel.sock
adapters = fake
[vmsession]
allow = /usr/bin/*, /bin/*
[services]
vmicvmsession = automatic
"""


@pytest.fixture(scope="module")
def lab_dir() -> Iterator[Path]:
    with configured_lab(CONF) as directory:
        yield directory


def in_vm(lab_dir: Path, *command: str) -> Result:
    return run_vmis(lab_dir, "Invoke-Command", "-VMName", "DemoVM", "--", *command)


def test_host_files_outside_the_vm_root_do_not_exist_in_the_vm(lab_dir):
    secret = lab_dir.parent / "host-secret.txt"
    secret.write_text("the host's own\n")
    result = in_vm(lab_dir, "cat", str(secret))
    assert result.code != 0 and "the host's own" not in result.out
    assert "No such file" in result.err
    # what the VM has, it has in its root
    assert in_vm(lab_dir, "cat", "/etc/hostname").out == "DemoVM\n"


def test_the_vm_writes_its_own_tmp_not_the_hosts(lab_dir):
    name = f"vmis-sandbox-{uuid.uuid4().hex}"
    result = in_vm(lab_dir, "sh", "-c", f"echo from-the-vm > /tmp/{name}")
    assert result.code == 0, result.err
    assert not (Path("/tmp") / name).exists()
    assert (Lab(lab_dir).vm("DemoVM").root / "tmp" / name).read_text() == "from-the-vm\n"
    beside = lab_dir.parent / "written-by-the-vm"
    result = in_vm(lab_dir, "sh", "-c", f"echo x > {beside}")
    assert result.code != 0 and not beside.exists()


def test_the_vm_has_its_own_host_name_and_processes(lab_dir):
    assert in_vm(lab_dir, "uname", "-n").out == "DemoVM\n"
    namespaces = in_vm(lab_dir, "readlink", "/proc/self/ns/pid", "/proc/self/ns/uts")
    pid_ns, uts_ns = namespaces.out.split()
    assert pid_ns != os.readlink("/proc/self/ns/pid")
    assert uts_ns != os.readlink("/proc/self/ns/uts")
    # pid 1 is the sandbox's init, and this test's process is not among the VM's
    assert "bwrap" in in_vm(lab_dir, "cat", "/proc/1/cmdline").out
    vm_pids = [p for p in in_vm(lab_dir, "ls", "/proc").out.split() if p.isdigit()]
    host_pids = [p.name for p in Path("/proc").iterdir() if p.name.isdigit()]
    assert str(os.getpid()) not in vm_pids and len(vm_pids) < len(host_pids)


def test_the_vm_has_no_network_but_loopback_and_no_capabilities(lab_dir):
    interfaces = in_vm(lab_dir, "python3", "-c",
                       "import socket; print(*sorted(n for _, n in socket.if_nameindex()))")
    assert interfaces.out.split() == ["lo"]
    assert any(name != "lo" for _, name in socket.if_nameindex()), "this machine has a network"
    status = in_vm(lab_dir, "cat", "/proc/self/status").out
    assert "CapEff:\t0000000000000000" in status


def test_a_missing_bwrap_is_one_plain_line(short_tmp):
    lab_dir = short_tmp / "lab"
    env_path = short_tmp / "bin"  # python only: no bwrap on this PATH
    env_path.mkdir()
    try:
        result = run_vmis(lab_dir, "lab", "up", path=str(env_path))
    finally:
        Lab(lab_dir).down(None)
    assert result.code == 1 and "Traceback" not in result.err
    [line] = result.err.strip().splitlines()
    assert "bwrap is missing: apt-get install bubblewrap" in line
