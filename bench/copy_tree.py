"""Copy-VMFile -Recurse of whole trees, both ways, against ``tar c | tar x`` + ``sync -f``.

A user copies a tree to a lab VM (docs/services/fcopy.md §3.2, §8.4): the
real ``vmis`` command line, host manager and lab agent (separate processes,
the lab's Unix socket), the copy verified end to end and durable before it
returns. The yardstick, measured in the same run, interleaved round by
round: ``tar c`` of the same tree piped into ``tar x`` in a new directory
on the same filesystem, then ``sync -f`` on it (durable as well, but
neither verified nor crossing a VM boundary).

Trees (``--trees``, default all three):

- ``2000x8KiB``: 2,000 files of 8 KiB in 40 folders (issue 17's measurement);
- ``20000x1KiB``: 20,000 files of 1 KiB in 200 folders;
- ``mixed``: 1,500 files from 0 to 64 KiB, 40 of 1-4 MiB and 2 of 32 MiB,
  in 150 folders three levels deep.

Per tree and direction it prints the medians of: the command line end to
end (what a user waits for), the command line's own start and one API
call (``vmis Get-VMFileCopy``, measured the same way), the copy's own
time (the copy's API call from a warm client: the manager and the agent,
no command line), and ``tar``; the ratios ``tar / vmis`` (1.0: as fast as
tar) for the copy's own time and end to end; and CPU seconds of the host
manager and the agent per copy, against ``tar``'s (user + system).

    .venv/bin/python bench/copy_tree.py [--rounds 5] [--trees 2000x8KiB,mixed] [--dir /tmp] [--json]

Both contenders' syncs (``syncfs``, ``sync -f``) write whatever the whole
filesystem holds dirty, other programs' writes included: on a shared
machine the disk's share of each figure varies from round to round.
``--dir /dev/shm`` puts everything on a tmpfs, where a sync has nothing to
write: what is left is each contender's own work. Every copy keeps its
destination until the run ends (a few GiB on the disk for the mixed tree):
a file made right after many deletions costs more on ext4.

Target (issue 17): the copy's own time >= 0.5 x tar for 2000x8KiB, both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

KIB = 1024
MIB = 1024 * KIB
TICK = os.sysconf("SC_CLK_TCK")
VM = "Bench"
#: the ``vmis`` command as its console script starts it (``-m`` would add runpy's imports)
VMIS = "import sys; from vmis.cli.host import console; sys.exit(console())"


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# Section: trees


def _write(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rng.randbytes(size))


def make_tree(kind: str, top: Path) -> tuple[int, int]:
    """Make a tree of *kind*; return its file count and bytes."""
    rng = random.Random(kind)
    sizes: list[tuple[str, int]] = []
    if kind == "2000x8KiB":
        sizes = [(f"d{i % 40:02}/f{i:05}", 8 * KIB) for i in range(2000)]
    elif kind == "20000x1KiB":
        sizes = [(f"d{i % 200:03}/f{i:05}", KIB) for i in range(20000)]
    elif kind == "mixed":
        folders = [f"a{a}/b{b}/c{c}" for a in range(5) for b in range(5) for c in range(6)]
        sizes = [(f"{rng.choice(folders)}/s{i:05}", rng.randrange(0, 64 * KIB))
                 for i in range(1500)]
        sizes += [(f"{rng.choice(folders)}/m{i:03}", rng.randrange(MIB, 4 * MIB))
                  for i in range(40)]
        sizes += [(f"a0/big{i}", 32 * MIB) for i in range(2)]
    else:
        raise SystemExit(f"unknown tree {kind!r}")
    for rel, size in sizes:
        _write(top / rel, size, rng)
    return len(sizes), sum(s for _, s in sizes)


# Section: the contenders


def settle() -> None:
    """Write what earlier steps left dirty (removed trees ...), outside any timing: each
    contender's own sync then pays for its own writes only."""
    os.sync()


def tar_copy(source: Path, destination: Path) -> dict[str, float]:
    """``tar c | tar x`` into *destination*, then ``sync -f`` on it."""
    destination.mkdir()
    settle()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(f"tar -C {source} -c . | tar -C {destination} -x && sync -f {destination}",
                   shell=True, check=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"seconds": seconds, "cpu": (after.ru_utime - before.ru_utime)
            + (after.ru_stime - before.ru_stime)}


class Lab:
    """A lab host manager and one lab VM, Guest Service Interface on."""

    def __init__(self, directory: Path) -> None:
        from vmis.lab.lab import Lab as LabDir

        self.directory = directory
        self.lab = LabDir(directory)
        self.lab.ensure_host()
        self.vm = self.lab.start_vm(VM)
        self.lab.wait_ready([VM])
        self.env = dict(os.environ, VMIS_LAB_DIR=str(directory),
                        VMIS_SOCKET=str(directory / "host.sock"))
        # The command line runs as installed: its bytecode cached (the first
        # run writes what is missing or stale; with the variable set, every run
        # compiled again each module edited since its cache was written).
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.cli("Enable-VMIntegrationService", "-VMName", VM, "-Name",
                 "Guest Service Interface")
        deadline = time.monotonic() + 20
        while json.loads(self.cli("Get-VMIntegrationService", VM, "--json"))[0][
                "PrimaryStatusDescription"] != "OK":
            if time.monotonic() > deadline:
                raise RuntimeError("the Guest Service Interface did not start")
            time.sleep(0.1)
        self.host_pid = self.lab.host_pid()
        self.agent_pid = self.vm.pid
        import httpx

        self.http = httpx.Client(transport=httpx.HTTPTransport(uds=str(directory / "host.sock")),
                                 base_url="http://vmis", timeout=None)

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-c", VMIS, *args], env=self.env,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"vmis {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def timed(self, work: Callable[[], Any]) -> dict[str, Any]:
        assert self.host_pid and self.agent_pid
        settle()
        host, agent = cpu_of(self.host_pid), cpu_of(self.agent_pid)
        t0 = time.perf_counter()
        out = work()
        return {"seconds": time.perf_counter() - t0, "out": out,
                "cpu_host": cpu_of(self.host_pid) - host,
                "cpu_agent": cpu_of(self.agent_pid) - agent}

    def copy_cli(self, source: str, destination: str, file_source: str) -> dict[str, Any]:
        row = self.timed(lambda: self.cli("Copy-VMFile", VM, source, destination,
                                          "-FileSource", file_source, "-Recurse", "--json"))
        row["result"] = json.loads(row.pop("out"))
        return row

    def copy_api(self, source: str, destination: str, file_source: str) -> dict[str, Any]:
        def call() -> Any:
            answer = self.http.post(f"/v1/vms/{VM}/copy", json={
                "source": source, "destination": destination, "file_source": file_source,
                "recurse": True})
            if answer.is_error:
                raise RuntimeError(f"the copy's API call: {answer.status_code} {answer.text}")
            return answer.json()

        row = self.timed(call)
        row["result"] = row.pop("out")
        return row

    def close(self) -> None:
        self.http.close()
        self.lab.down(None)


# Section: the run


def run_tree(kind: str, lab: Lab, work: Path, rounds: int) -> dict[str, Any]:
    source = work / kind
    files, size = make_tree(kind, source)
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in (
        "tar", "cli-start", "to-guest", "to-guest-api", "from-guest", "from-guest-api")}
    print(f"\n{kind}: {files} files, {size / MIB:.1f} MiB", flush=True)
    # Every copy of the run gets a destination of its own, and nothing is
    # removed before the run ends: on an ext4 without a journal, a file made
    # within 30 s of many deletions costs up to ten times more (the inode
    # allocator steps over recently deleted inodes one by one, ext4's
    # recently_deleted()), so removing each copy before the next would bill
    # whoever comes next for the last one's rm.
    for n in range(rounds):
        tree, back = f"/tmp/{kind}-{n}", work / f"{kind}-back{n}"
        rows["tar"].append(tar_copy(source, work / f"{kind}-tar{n}"))
        rows["cli-start"].append(lab.timed(lambda: lab.cli("Get-VMFileCopy", VM, "--json")))
        rows["to-guest"].append(lab.copy_cli(str(source), tree, "Host"))
        rows["from-guest"].append(lab.copy_cli(tree, str(back), "Guest"))
        rows["from-guest-api"].append(lab.copy_api(tree, f"{back}-api", "Guest"))
        rows["to-guest-api"].append(lab.copy_api(str(source), f"{tree}-api", "Host"))
        for key in ("to-guest", "from-guest", "to-guest-api", "from-guest-api"):
            result = rows[key][-1]["result"]
            if result["Files"] != files or result["Skipped"]:
                raise RuntimeError(f"{key}: {result['Files']} files, skipped "
                                   f"{result['Skipped']}")
        print(f"  round {n + 1}: " + "  ".join(
            f"{k} {r[-1]['seconds']:.3f}" for k, r in rows.items()), flush=True)

    def med(key: str, field: str = "seconds") -> float:
        return statistics.median(r[field] for r in rows[key])

    tar, start = med("tar"), med("cli-start")
    summary: dict[str, Any] = {"files": files, "bytes": size, "rounds": rounds,
                               "tar_s": round(tar, 4), "tar_cpu_s": round(med("tar", "cpu"), 4),
                               "cli_start_and_one_call_s": round(start, 4)}
    for way in ("to-guest", "from-guest"):
        own, cli = med(f"{way}-api"), med(way)
        summary[way] = {
            "copy_s": round(own, 4), "cli_s": round(cli, 4),
            "ratio_tar_vs_copy": round(tar / own, 3),
            "ratio_tar_vs_cli": round(tar / cli, 3),
            "ratio_tar_vs_cli_minus_start": round(tar / max(cli - start, 1e-6), 3),
            "cpu_host_manager_s": round(med(f"{way}-api", "cpu_host"), 3),
            "cpu_agent_s": round(med(f"{way}-api", "cpu_agent"), 3),
        }
        s = summary[way]
        print(f"  {way:10} copy {own:.3f} s (tar/copy {s['ratio_tar_vs_copy']:.2f})   "
              f"CLI {cli:.3f} s (tar/CLI {s['ratio_tar_vs_cli']:.2f}, without its start "
              f"{s['ratio_tar_vs_cli_minus_start']:.2f})   CPU manager "
              f"{s['cpu_host_manager_s']:.2f} agent {s['cpu_agent_s']:.2f} s", flush=True)
    print(f"  tar {tar:.3f} s (CPU {summary['tar_cpu_s']:.2f} s); CLI start + one call "
          f"{start:.3f} s", flush=True)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per tree")
    parser.add_argument("--trees", default="2000x8KiB,20000x1KiB,mixed",
                        help="comma-separated: 2000x8KiB, 20000x1KiB, mixed")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--dir", default="/tmp",
                        help="where the trees, the lab and tar's copies go (/dev/shm: no "
                             "disk, only the software's own cost)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmis-bench-", dir=args.dir))
    print(f"copy_tree: {args.rounds} rounds, in {work}; {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    lab = Lab(work / "lab")
    figures = {}
    try:
        for kind in args.trees.split(","):
            figures[kind] = run_tree(kind, lab, work, args.rounds)
    finally:
        lab.close()
        shutil.rmtree(work, ignore_errors=True)
    return finish(figures, args.json)


def finish(figures: dict[str, Any], as_json: bool) -> int:
    """End a benchmark: the load it ran under, and its figures as JSON if asked."""
    print(f"\nload at the end {os.getloadavg()[0]:.1f}")
    if as_json:
        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
