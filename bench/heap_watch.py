"""Heap snapshots of the lab's host manager: what grows in a long run (bench/soak.py --heap).

The manager is started by the lab as its own process, so the snapshots are
taken from inside it by a ``sitecustomize`` module put on its PYTHONPATH:
in the process whose command line is ``vmis.cli.host host serve`` only
(the lab's agents share the environment), it starts :mod:`tracemalloc`
one interval after the start (tracing the manager's imports would take
40 s; what grows later is what counts) and dumps a snapshot every
``--heap-every`` seconds from then on. :func:`report` then compares the first snapshot
taken after the warm-up with the last one, by allocation site.

tracemalloc slows an allocating process down by about a third and its own
bookkeeping is in the RSS, so a soak's RSS figures come from a run without
``--heap``; this run says *what* grows, not how much the RSS does.
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

SITE = '''\
import os, threading, time, tracemalloc
_argv = open("/proc/self/cmdline", "rb").read().split(b"\\0")
if b"vmis.cli.host" in _argv and b"serve" in _argv:
    _dir = os.environ["VMIS_HEAP_DIR"]
    _every = float(os.environ.get("VMIS_HEAP_EVERY", "60"))
    _t0 = time.monotonic()

    def _dump():
        time.sleep(_every)
        tracemalloc.start(int(os.environ.get("VMIS_HEAP_FRAMES", "8")))
        while True:
            time.sleep(_every)
            at = time.monotonic() - _t0
            snap = tracemalloc.take_snapshot()
            tmp = os.path.join(_dir, "snap-%06.0f.tmp" % at)
            snap.dump(tmp)
            os.rename(tmp, tmp[:-4] + ".pickle")

    threading.Thread(target=_dump, name="heap-watch", daemon=True).start()
'''


def prepare(directory: Path, every: float, frames: int) -> None:
    """Make this process's children (the lab's manager among them) dump heap snapshots."""
    site = directory / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(SITE)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    os.environ["VMIS_HEAP_DIR"] = str(directory)
    os.environ["VMIS_HEAP_EVERY"] = str(every)
    os.environ["VMIS_HEAP_FRAMES"] = str(frames)


def report(directory: Path, after: float, top: int = 15) -> list[str]:
    """What grew between the first snapshot at or after *after* seconds and the last one."""
    snaps = sorted(directory.glob("snap-*.pickle"))
    if len(snaps) < 2:
        return [f"heap: {len(snaps)} snapshot(s) in {directory}, nothing to compare"]
    times = [float(p.stem.split("-")[1]) for p in snaps]
    first = next((p for p, t in zip(snaps, times, strict=True) if t >= after), snaps[0])
    last = snaps[-1]
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]
    old = tracemalloc.Snapshot.load(str(first)).filter_traces(ignore)
    new = tracemalloc.Snapshot.load(str(last)).filter_traces(ignore)
    total = [sum(s.size for s in snap.statistics("filename")) for snap in (old, new)]
    lines = [f"heap (tracemalloc): {first.stem} {total[0] / 2**20:.1f} MiB -> {last.stem} "
             f"{total[1] / 2**20:.1f} MiB ({(total[1] - total[0]) / 2**20:+.1f}); "
             f"the sites that grew most:"]
    for stat in new.compare_to(old, "traceback")[:top]:
        frames = stat.traceback.format(limit=4, most_recent_first=True)
        where = " <- ".join(f.strip() for f in frames if not f.startswith("    "))
        lines.append(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  {where}")
    return lines
