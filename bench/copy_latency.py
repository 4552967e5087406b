"""What copying one 4 KiB file costs, both ways, and what of it is the copy's own.

Through a lab (the real host manager and lab agent processes, docs/services/
fcopy.md §8.5), each measured N times, interleaved, medians and 90th
percentiles:

- **CLI**: ``vmis Copy-VMFile`` end to end, as a user runs it;
- **CLI start**: ``vmis Get-VMFileCopy``, the same command line starting
  and making one API call that does no copy: what the command line costs
  by itself (another part of vmis);
- **API**: the copy's API call from a warm client, streamed as the command
  line asks for it (``?stream=true``) and plain: the manager and the agent,
  no command line: the copy's own cost;
- **Seconds**: what the copy itself reports (from its start in the manager);
- **floor**: what any durable copy of a new 4 KiB file waits for on this
  disk, measured in the guest's directory: create, write, fsync, link,
  fsync of the directory (the two syncs the copy needs, §4).

    .venv/bin/python bench/copy_latency.py [--count 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

VM = "Bench"


def floor(directory: Path, data: bytes) -> float:
    """A durable new file, the cheapest way: the disk's share of a copy."""
    fd_dir = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    t0 = time.perf_counter()
    fd = os.open(".floor.part", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd_dir)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    os.link(".floor.part", "floor", src_dir_fd=fd_dir, dst_dir_fd=fd_dir)
    os.unlink(".floor.part", dir_fd=fd_dir)
    os.fsync(fd_dir)
    seconds = time.perf_counter() - t0
    os.unlink("floor", dir_fd=fd_dir)
    os.close(fd_dir)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50, help="copies per way and kind")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from copy_tree import Lab, finish, settle  # the same lab set-up as the tree benchmark

    work = Path(tempfile.mkdtemp(prefix="vmis-bench-", dir="/tmp"))
    data = os.urandom(4096)
    (work / "small.bin").write_bytes(data)
    print(f"copy_latency: {args.count} x 4 KiB each way, in {work}; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    lab = Lab(work / "lab")
    guest_tmp = lab.vm.root / "tmp"
    samples: dict[str, list[float]] = {}

    def add(key: str, seconds: float) -> None:
        samples.setdefault(key, []).append(seconds)

    def api(body: dict[str, Any], stream: bool) -> float:
        t0 = time.perf_counter()
        if stream:
            with lab.http.stream("POST", f"/v1/vms/{VM}/copy?stream=true", json=body) as answer:
                lines = [json.loads(line) for line in answer.iter_lines() if line.strip()]
            result = lines[-1]
        else:
            result = lab.http.post(f"/v1/vms/{VM}/copy", json=body).json()
        seconds = time.perf_counter() - t0
        if result.get("Files") != 1:
            raise RuntimeError(f"the copy failed: {result}")
        return seconds

    ways: dict[str, tuple[dict[str, Any], list[str]]] = {
        "to-guest": ({"source": str(work / "small.bin"), "destination": "/tmp/small.bin",
                      "file_source": "Host", "force": True},
                     [str(work / "small.bin"), "/tmp/small.bin", "-FileSource", "Host"]),
        "from-guest": ({"source": "/tmp/small.bin", "destination": str(work / "back.bin"),
                        "file_source": "Guest", "force": True},
                       ["/tmp/small.bin", str(work / "back.bin"), "-FileSource", "Guest"]),
    }
    steps: list[tuple[str, Callable[[], float]]] = [
        ("floor guest dir", lambda: floor(guest_tmp, data)),
        ("CLI start", lambda: lab.timed(lambda: lab.cli("Get-VMFileCopy", VM))["seconds"]),
    ]
    for way, (body, argv) in ways.items():
        steps += [
            (f"{way} CLI", lambda argv=argv: lab.timed(lambda: lab.cli(
                "Copy-VMFile", VM, *argv, "-Force", "--json"))["seconds"]),
            (f"{way} API stream", lambda body=body: api(body, True)),
            (f"{way} API plain", lambda body=body: api(body, False)),
        ]
    try:
        lab.cli("Copy-VMFile", VM, str(work / "small.bin"), "/tmp/small.bin", "-FileSource",
                "Host", "-Force")
        for _ in range(args.count):
            for key, step in steps:
                settle()  # each step pays for its own writes only
                add(key, step())
            for way, (body, _) in ways.items():
                result = lab.http.post(f"/v1/vms/{VM}/copy", json=body).json()
                add(f"{way} Seconds", result["Seconds"])
    finally:
        lab.close()
        shutil.rmtree(work, ignore_errors=True)
    figures = {}
    print(f"\n{'':22} {'median':>8} {'p90':>8}  (ms)")
    for key, values in samples.items():
        values.sort()
        med, p90 = statistics.median(values), values[int(0.9 * (len(values) - 1))]
        figures[key] = {"median_ms": round(med * 1e3, 2), "p90_ms": round(p90 * 1e3, 2)}
        print(f"{key:22} {med * 1e3:8.2f} {p90 * 1e3:8.2f}")
    for way in ways:
        own = figures[f"{way} API stream"]["median_ms"]
        print(f"{way}: the copy's own cost {own:.2f} ms, of which the disk's floor "
              f"{figures['floor guest dir']['median_ms']:.2f} ms; the CLI adds "
              f"{figures[f'{way} CLI']['median_ms'] - own:.2f} ms (its start and one call: "
              f"{figures['CLI start']['median_ms']:.2f} ms)")
    return finish(figures, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
