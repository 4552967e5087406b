"""128 MiB in one ``vmis Copy-VMFile`` command, start included, against a best-case qemu-ga client.

Issue 17's comparison, both ways, in one run, rounds interleaved:

- **vmis**: the whole ``vmis Copy-VMFile`` process (its start, the API call,
  the copy through the host manager and a lab VM's vmis agent, SHA-256 on
  both ends, durable before it returns), as a user runs it
  (bench/copy_tree.py's lab);
- **qemu-ga**: the hand-written best-case client of bench/qga_copy.py (one
  blocking socket, 1 MiB base64 chunks, nothing but the bytes) against
  Debian's qemu-ga 7.2 on this machine in the tests' sandbox
  (tests/support/qga_sandbox.py), its connection and handshake included.

Prints the MiB/s of each (medians, every round), the ratio vmis / qemu-ga
per direction, and the load.

    .venv/bin/python bench/copy_vs_qga.py [--size-mib 128] [--rounds 3] [--json]

Target (issue 17): vmis / qemu-ga >= 10 both ways.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from copy_tree import VM, Lab, finish, settle
from qga_copy import MIB, QgaSandbox, baseline_in, baseline_out


def rate(size_mib: int, work: Callable[[], Any]) -> float:
    """MiB/s of *work*, its writes of earlier steps settled first."""
    settle()
    t0 = time.perf_counter()
    work()
    return size_mib / (time.perf_counter() - t0)


def one_round(lab: Lab, sandbox: QgaSandbox, work: Path, size_mib: int) -> dict[str, float]:
    source = work / "source.bin"
    guest_tmp = lab.vm.root / "tmp"
    qga_in, back_qga, back_vmis = sandbox.dir / "in.bin", work / "back-qga.bin", work / "back.bin"
    sandbox.ensure_running()
    row = {
        "qemu-ga in": rate(size_mib, lambda: baseline_in(sandbox, source, str(qga_in))),
        "vmis in": rate(size_mib, lambda: lab.cli(
            "Copy-VMFile", VM, str(source), "/tmp/big.bin", "-FileSource", "Host", "-Force")),
        "qemu-ga out": rate(size_mib, lambda: baseline_out(sandbox, str(qga_in), back_qga)),
        "vmis out": rate(size_mib, lambda: lab.cli(
            "Copy-VMFile", VM, "/tmp/big.bin", str(back_vmis), "-FileSource", "Guest",
            "-Force")),
    }
    original = source.read_bytes()
    for copy in (qga_in, guest_tmp / "big.bin", back_qga, back_vmis):
        if copy.read_bytes() != original:
            raise RuntimeError(f"{copy} differs from the source")
        copy.unlink()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="vmis-qv-", dir="/tmp"))
    print(f"copy_vs_qga: {args.size_mib} MiB each way, {args.rounds} rounds, in {work}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)
    (work / "source.bin").write_bytes(os.urandom(args.size_mib * MIB))
    sandbox = QgaSandbox(work)
    sandbox.start()
    lab = Lab(work / "lab")
    rows: list[dict[str, float]] = []
    try:
        for n in range(args.rounds):
            rows.append(one_round(lab, sandbox, work, args.size_mib))
            print(f"  round {n + 1}: " + "  ".join(f"{k} {v:.1f}" for k, v in rows[-1].items())
                  + f"  (load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        lab.close()
        sandbox.stop()
        shutil.rmtree(work, ignore_errors=True)
    figures: dict[str, Any] = {}
    print(f"\n{'MiB/s':<12}{'median':>8}  every round")
    for key in rows[0]:
        values = [r[key] for r in rows]
        figures[key] = round(statistics.median(values), 2)
        print(f"{key:<12}{figures[key]:>8.1f}  {', '.join(f'{v:.1f}' for v in values)}")
    for way in ("in", "out"):
        figures[f"ratio {way}"] = round(figures[f"vmis {way}"] / figures[f"qemu-ga {way}"], 2)
    print(f"vmis / qemu-ga: into the guest {figures['ratio in']:.1f}x, out of it "
          f"{figures['ratio out']:.1f}x (target >= 10)")
    return finish(figures, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
