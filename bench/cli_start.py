"""CLI start: the wall time of one ``vmis`` command that asks the host manager, end to end.

Starts a lab (a host manager and the process lab VM DemoVM) in a temporary
directory, then times whole processes, the median of N runs each:

- ``python -c pass``: the interpreter alone (the floor, measured in this run);
- ``vmis --version``: vmis's command line loaded, nothing asked;
- ``vmis Get-VMIntegrationService -VMName DemoVM``: the common path, one call
  to the manager over its Unix socket and the table printed;
- ``vmis-guest Get-Service``: the guest tool, one call over the agent's
  control socket (the lab VM's root stands in for the guest's ``/``).

The commands run with their bytecode cached (``__pycache__``, as an
installed vmis has it), whatever ``$PYTHONDONTWRITEBYTECODE`` says: the
warm-up run writes it. Prints each median in milliseconds and its ratio to ``python -c pass``, and
the median CPU time (user + system) of the process: on a shared machine the
wall time also holds the time spent waiting for a CPU, the CPU time does not.

    .venv/bin/python bench/cli_start.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmis.lab.lab import Lab, run_lab_up

#: how the console scripts start (setuptools' wrapper, without its file lookup)
HOST = "import sys; from vmis.cli.host import console; sys.exit(console())"
GUEST = "import sys; from vmis.cli.guest import console; sys.exit(console())"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """The median wall time and CPU time of *runs* runs of *argv*, in milliseconds
    (after one warm-up run)."""
    walls, cpus = [], []
    for i in range(runs + 1):
        cpu, start = _cpu(), time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, check=False)
        wall, cpu = (time.perf_counter() - start) * 1000, (_cpu() - cpu) * 1000
        if done.returncode != 0:
            sys.exit(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')}")
        if i:
            walls.append(wall)
            cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per command (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmis-bench-", dir="/tmp") as tmp:
        lab = Lab(Path(tmp) / "lab")
        env = dict(os.environ, VMIS_LAB_DIR=str(lab.dir), VMIS_SOCKET=str(lab.socket))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        try:
            run_lab_up(lab, ["DemoVM"], None)
            root = str(lab.guest_root("DemoVM"))
            python = sys.executable
            figures = [
                ("python -c pass", timed([python, "-c", "pass"], env, args.runs)),
                ("vmis --version", timed([python, "-c", HOST, "--version"], env, args.runs)),
                ("vmis Get-VMIntegrationService", timed(
                    [python, "-c", HOST, "Get-VMIntegrationService", "-VMName", "DemoVM"], env,
                    args.runs)),
                ("vmis-guest Get-Service", timed(
                    [python, "-c", GUEST, "--root", root, "Get-Service"], env, args.runs)),
            ]
        finally:
            lab.down(None)
    floor = figures[0][1][0]
    print(f"process times, median of {args.runs} (after one warm-up run), load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'':32}{'wall ms':>9}{'x pass':>8}{'CPU ms':>9}")
    for name, (wall, cpu) in figures:
        print(f"{name:32}{wall:9.1f}{wall / floor:8.1f}{cpu:9.1f}")


if __name__ == "__main__":
    main()
