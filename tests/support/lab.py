"""Real-process fixtures: a lab (host manager and agent processes) and CLI runners."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vmis.lab.lab import Lab


@dataclass
class Result:
    code: int
    out: str
    err: str


#: a lab VM's agent.conf whose VM Session allows /usr/bin and /bin; with
#: SESSION_ENABLED after it, VM Session starts (startup Automatic)
SESSION_CONF = """[agent]
channel = unix:/run/vmis/channel.sock
adapters = fake
[heartbeat]
health_interval = 1
health_timeout = 5
[vmsession]
allow = /usr/bin/*, /bin/*
keepalive = 0.5
kill_grace = 1
"""
SESSION_ENABLED = "[services]\nvmicvmsession = automatic\n"
SESSION_AGENT_CONF = SESSION_CONF + SESSION_ENABLED


def run_vmis(lab_dir: Path, *args: str, timeout: float = 120, guest: bool = False,
             input: str | None = None, path: str | None = None) -> Result:
    """Run the ``vmis`` (or ``vmis-guest``) command line as a user would, in a subprocess.

    :param path: the command's ``$PATH``, if not this process's.
    """
    env = dict(os.environ, VMIS_LAB_DIR=str(lab_dir), VMIS_SOCKET=str(lab_dir / "host.sock"))
    if path is not None:
        env["PATH"] = path
    module = "vmis.cli.guest" if guest else "vmis.cli.host"
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=env, timeout=timeout, input=input)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def start_lab(lab_dir: Path, *names: str, clock_offset: float | None = None,
              agent_bundle: Path | None = None) -> Lab:
    """Start a lab with the named VMs (default DemoVM) through the CLI; return it."""
    args = ["lab", "up", *names]
    if clock_offset is not None:
        args += ["-ClockOffset", str(clock_offset)]
    if agent_bundle is not None:
        args += ["-AgentBundle", str(agent_bundle)]
    result = run_vmis(lab_dir, *args)
    assert result.code == 0, result.err
    return Lab(lab_dir)


@contextmanager
def configured_lab(agent_conf: str) -> Iterator[Path]:
    """A lab in a new directory whose DemoVM starts with *agent_conf*; stopped and removed after."""
    directory = Path(tempfile.mkdtemp(prefix="vmis-", dir="/tmp")) / "lab"
    conf = directory / "vms/DemoVM/root/etc/vmis/agent.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(agent_conf)
    try:
        start_lab(directory)
        yield directory
    finally:
        Lab(directory).down(None)
        shutil.rmtree(directory.parent, ignore_errors=True)


def guest_proc(lab_dir: Path, name: str = "DemoVM") -> Path:
    """A lab VM's own /proc as this machine sees it (through its agent's root): the
    pids a lab VM's commands print are those of its PID namespace."""
    agent = Lab(lab_dir).vm(name).pid
    assert agent is not None, f"lab VM {name} is not running"
    return Path(f"/proc/{agent}/root/proc")
