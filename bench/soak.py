"""Soak: 100 lab VMs under ten minutes of churn; nothing lost, nothing stuck, memory flat.

A lab (vmis.lab.lab) with N lab VMs, each its own agent process, as
``vmis lab up`` makes them (one idle agent costs about 0.1 % of a core and
27 MB, so 100 fit a 2-core machine without the farm processes of
bench/heartbeat_scale.py). Worker threads then churn through the host
manager's API for --minutes, each operation on a VM drawn at random:

- agent restarts: SIGKILL the agent (an OOM kill, a crash), then ``lab up``;
- Enable-/Disable-VMIntegrationService of a service that may be toggled;
- Set-VMKvp (each worker its own keys, so the last write of a key is known);
- Copy-VMFile host to guest and guest to host (1-3 MiB, random data);
- Checkpoint-VM (production, the snapshot step a shell ``true``).

Then the churn stops, every agent is started, and after a grace period of
--settle seconds the lab is checked. Reported:

- lost writes: a KVP key whose pool file (External) does not hold its last
  value exactly once, or a write still pending;
- stuck states: a VM without heartbeat, a service whose guest state is not
  what the host wants, a guest left frozen, a checkpoint left Running, a
  copy destination holding anything but the whole file;
- the host manager's RSS every 10 s (and its growth after the first minute);
- the count of each operation, and how many of them failed (an operation on
  a VM whose agent is being restarted fails, and is retried by nobody: the
  checks above say whether anything was lost).

    .venv/bin/python bench/soak.py [--vms 100] [--minutes 10] [--workers 4] [--seed 1]
                                   [--heap [--heap-every 60]]

--heap traces the manager's heap (bench/heap_watch.py) and names the
allocation sites that grew from the first minute of churn to the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import heap_watch

from vmis.api.client import ApiClient
from vmis.errors import VmisError
from vmis.lab.lab import Lab
from vmis.lab.processes import pid_alive
from vmis.services.kvp.pool import KvpPool, Pool

MIB = 1 << 20
#: services the churn turns on and off (Heartbeat and KVP stay on: they are checked)
TOGGLED = ("Guest Service Interface", "Time Synchronization", "Shutdown", "VSS")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Soak:
    def __init__(self, lab: Lab, names: list[str], files: Path, seed: int) -> None:
        self.lab, self.names, self.files = lab, names, files
        self.seed = seed
        self.counts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.lock = threading.Lock()
        #: (vm, key) -> last value written
        self.kvp: dict[tuple[str, str], str] = {}
        #: destinations of copies -> the digest of their source
        self.copies: dict[Path, str] = {}
        #: VMs whose agent one worker is restarting (no other touches it meanwhile)
        self.restarting: set[str] = set()
        self.stop = threading.Event()
        self.sources = []
        for i in range(3):
            path = files / f"src{i}.bin"
            path.write_bytes(os.urandom((i + 1) * MIB))
            self.sources.append(path)

    def call(self, method: str, path: str, body: Any = None, timeout: float = 120,
             **params: Any) -> Any:
        with ApiClient(self.lab.socket) as api:
            return api.call(method, path, json=body, params=params or None, timeout=timeout)

    def _count(self, op: str, ok: bool) -> None:
        with self.lock:
            self.counts[op] += 1
            if not ok:
                self.failures[op] += 1

    # Section: the operations

    def restart_agent(self, vm: str) -> None:
        with self.lock:
            if vm in self.restarting:
                return
            self.restarting.add(vm)
        try:
            pid = self.lab.vm(vm).pid
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
            self.lab.start_vm(vm)
            self._count("agent restart", True)
        except VmisError:
            self._count("agent restart", False)
        finally:
            with self.lock:
                self.restarting.discard(vm)

    def toggle(self, vm: str, rng: random.Random) -> None:
        verb = rng.choice(("enable", "disable"))
        try:
            self.call("POST", f"/services/{verb}", {"vms": [vm], "names": [rng.choice(TOGGLED)]})
            self._count(f"{verb} service", True)
        except VmisError:
            self._count(f"{verb} service", False)

    def kvp_write(self, vm: str, worker: int, rng: random.Random, n: int) -> None:
        key, value = f"w{worker}k{rng.randrange(5)}", f"value {n}"
        with self.lock:
            self.kvp[(vm, key)] = value  # saved first by the manager, whatever follows
        try:
            rows = self.call("POST", "/kvp/set", {"vms": [vm], "key": key, "value": value})
            self._count("kvp write", bool(rows and rows[0]["Delivered"]))
        except VmisError:
            self._count("kvp write", False)

    def copy(self, vm: str, rng: random.Random, worker: int) -> None:
        if rng.random() < 0.5:
            source = rng.choice(self.sources)
            target = self.lab.vm(vm).root / "srv" / f"w{worker}-{source.name}"
            body = {"source": str(source), "destination": f"/srv/{target.name}",
                    "file_source": "Host", "force": True}
            op, digest = "copy to guest", sha256(source)
        else:
            source = self.lab.vm(vm).root / "srv/guest.bin"
            target = self.files / f"{vm}-w{worker}.bin"
            body = {"source": "/srv/guest.bin", "destination": str(target),
                    "file_source": "Guest", "force": True}
            op, digest = "copy from guest", sha256(source)
        with self.lock:
            self.copies[target] = digest
        try:
            self.call("POST", f"/vms/{vm}/copy", body, timeout=300)
            self._count(op, True)
        except VmisError:
            self._count(op, False)

    def checkpoint(self, vm: str) -> None:
        try:
            report = self.call("POST", f"/vms/{vm}/checkpoints", {"snapshot_command": "true"})
            self._count("checkpoint", report["Status"] == "Completed")
        except VmisError:
            self._count("checkpoint", False)

    def worker(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        n = 0
        while not self.stop.is_set():
            n += 1
            vm = rng.choice(self.names)
            with self.lock:
                busy = vm in self.restarting
            roll = rng.random()
            if busy:
                time.sleep(0.05)
            elif roll < 0.05:
                self.restart_agent(vm)
            elif roll < 0.25:
                self.toggle(vm, rng)
            elif roll < 0.70:
                self.kvp_write(vm, index, rng, n)
            elif roll < 0.88:
                self.copy(vm, rng, index)
            else:
                self.checkpoint(vm)
            time.sleep(rng.uniform(0, 0.2))

    # Section: the checks

    def lost_writes(self) -> list[str]:
        lost = []
        rows = self.call("GET", "/kvp", vm=self.names, pool="External")
        pending = {(r["VMName"], r["Key"]) for r in rows if r["Pending"] is not None}
        by_vm: dict[str, list[tuple[str, str]]] = {}
        for vm in self.names:
            by_vm[vm] = KvpPool(self.lab.vm(vm).root / "var/lib/hyperv", Pool.EXTERNAL).items()
        for (vm, key), value in sorted(self.kvp.items()):
            found = [v for k, v in by_vm[vm] if k == key]
            if found != [value] or (vm, key) in pending:
                lost.append(f"{vm} {key}: wanted {value!r}, pool has {found}"
                            f"{' (pending)' if (vm, key) in pending else ''}")
        return lost

    def stuck(self) -> list[str]:
        stuck = []
        vms = {v["Name"]: v for v in self.call("GET", "/vms")}
        stuck += [f"{n}: heartbeat {vms.get(n, {}).get('Heartbeat')}" for n in self.names
                  if vms.get(n, {}).get("Heartbeat") != "Ok"]
        for row in self.call("GET", "/services", vm=self.names):
            if row["Name"] in TOGGLED and row["Enabled"] != (row["GuestState"] == "running"):
                stuck.append(f"{row['VMName']} {row['Name']}: Enabled={row['Enabled']} "
                             f"GuestState={row['GuestState']}")
        for name in self.names:
            state = self.lab.vm(name).root / "run/vmis/freezer.json"
            with contextlib.suppress(FileNotFoundError):
                if json.loads(state.read_text())["frozen"]:
                    stuck.append(f"{name}: left frozen")
        stuck += [f"{c['VMName']}: checkpoint {c['Name']} still Running"
                  for c in self.call("GET", "/checkpoints", vm=self.names)
                  if c["Status"] == "Running"]
        for target, digest in sorted(self.copies.items()):
            if target.exists() and sha256(target) != digest:
                stuck.append(f"{target}: not the whole file")
        return stuck


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def trimmed_rss_kib(pid: int) -> int | None:
    """The manager's RSS once glibc has handed its free memory back (malloc_trim(0),
    called in it through gdb): what it holds, not what its allocator keeps in reserve.
    None without gdb."""
    try:
        subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx", "-ex",
                        "call (int) malloc_trim(0)"], capture_output=True, timeout=120,
                       check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return rss_kib(pid)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--settle", type=float, default=60.0,
                        help="seconds after the churn for everything to come back")
    parser.add_argument("--heap", action="store_true",
                        help="trace the manager's heap (bench/heap_watch.py) and name what grew")
    parser.add_argument("--trim", action="store_true",
                        help="at the end, also the manager's RSS after glibc's malloc_trim(0) "
                             "(through gdb): the memory its allocator only kept in reserve")
    parser.add_argument("--heap-every", type=float, default=60.0,
                        help="seconds between heap snapshots")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vmis-soak-", dir="/tmp"))
    if args.heap:
        heap_watch.prepare(base / "heap", args.heap_every, frames=8)
    lab = Lab(base / "lab")
    names = [f"vm{i:03d}" for i in range(args.vms)]
    started = time.monotonic()
    try:
        lab.ensure_host()
        for name in names:
            vm = lab.start_vm(name)
            (vm.root / "srv/guest.bin").write_bytes(os.urandom(2 * MIB))
        lab.wait_ready(names, timeout=300)
        host_pid = lab.host_pid()
        assert host_pid is not None
        files = base / "files"
        files.mkdir()
        soak = Soak(lab, names, files, args.seed)
        soak.call("POST", "/services/enable", {"vms": ["*"], "names": list(TOGGLED)})
        print(f"soak: {args.vms} lab VMs (one agent process each) up in "
              f"{time.monotonic() - started:.0f} s; {args.workers} workers for "
              f"{args.minutes:g} min; lab in {base}", flush=True)

        rss: list[tuple[float, int]] = []
        threads = [threading.Thread(target=soak.worker, args=(i,), daemon=True)
                   for i in range(args.workers)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while time.monotonic() - t0 < args.minutes * 60:
            rss.append((time.monotonic() - t0, rss_kib(host_pid)))
            print(f"  {rss[-1][0]:6.0f} s  manager RSS {rss[-1][1] / 1024:6.1f} MiB  "
                  f"threads {threads_of(host_pid)}  operations {sum(soak.counts.values())}",
                  flush=True)
            time.sleep(10)
        soak.stop.set()
        for t in threads:
            t.join(600)
        rss.append((time.monotonic() - t0, rss_kib(host_pid)))

        # Every agent up again, then time for everything to come back.
        for name in names:
            if lab.vm(name).pid is None:
                lab.start_vm(name)
        lab.wait_ready(names, timeout=300)
        time.sleep(args.settle)
        lost, stuck = soak.lost_writes(), soak.stuck()
        rss.append((time.monotonic() - t0, rss_kib(host_pid)))

        print(f"\noperations over {args.minutes:g} min ({sum(soak.counts.values())} in all):")
        for op, count in sorted(soak.counts.items()):
            print(f"  {op:20}{count:>7}   failed {soak.failures[op]:>5}")
        print(f"KVP keys checked: {len(soak.kvp)}; copy destinations checked: "
              f"{len(soak.copies)}")
        print(f"lost writes: {len(lost)}")
        for line in lost[:20]:
            print(f"  {line}")
        print(f"stuck states: {len(stuck)}")
        for line in stuck[:20]:
            print(f"  {line}")
        after = [k for t, k in rss if t >= 60] or [k for _, k in rss]
        print(f"manager RSS (MiB): start {rss[0][1] / 1024:.1f}, after 1 min "
              f"{after[0] / 1024:.1f}, max {max(k for _, k in rss) / 1024:.1f}, end "
              f"{rss[-1][1] / 1024:.1f}; growth after the first minute "
              f"{(after[-1] - after[0]) / 1024:+.1f} MiB")
        print("samples (s:MiB): " + " ".join(f"{t:.0f}:{k / 1024:.0f}" for t, k in rss))
        if args.trim:
            trimmed = trimmed_rss_kib(host_pid)
            print("manager RSS after malloc_trim(0): " + (
                "no gdb" if trimmed is None else f"{trimmed / 1024:.1f} MiB (threads "
                f"{threads_of(host_pid)})"))
        if args.heap:
            # snapshots count from the manager's start; the churn began about `ready` later
            ready = t0 - started
            for line in heap_watch.report(base / "heap", after=ready + 60):
                print(line)
        sys.exit(1 if lost or stuck else 0)
    finally:
        lab.down(None)


if __name__ == "__main__":
    main()
