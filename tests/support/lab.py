"""Real-process fixtures: a lab (host manager and agent processes) and CLI runners."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from vmis.lab.lab import Lab


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_vmis(lab_dir: Path, *args: str, timeout: float = 120, guest: bool = False,
             input: str | None = None) -> Result:
    """Run the ``vmis`` (or ``vmis-guest``) command line as a user would, in a subprocess."""
    env = dict(os.environ, VMIS_LAB_DIR=str(lab_dir), VMIS_SOCKET=str(lab_dir / "host.sock"))
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
