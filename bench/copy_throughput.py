"""Copy-VMFile throughput against a raw Python socket copy of the same bytes, in one run.

The vmis side is the real thing: a lab host manager and a lab guest agent,
each its own process, talking over the lab's Unix socket; the copy is
started through the manager's API, exactly as ``vmis Copy-VMFile`` does,
and includes everything a copy does (SHA-256 on both sides, the temporary
file, fsync, rename, mode and times).

The baseline is the plainest copy Python can make of the same bytes over the
same kind of socket: one process reads the file and ``sendall``s 1 MiB
blocks to another over an AF_UNIX stream socket, which ``recv_into``s a
1 MiB buffer and writes it to a file. It is measured twice per round:
without fsync, and with one fsync at the end, which is what vmis does
before its rename (a copy that counts as done is on disk).

Runs are interleaved (raw, raw+fsync, vmis to guest, vmis from guest, ...)
so that page cache and disk write-back treat every contender alike, and the
medians are compared. CPU seconds of every process are reported per GiB to
show where the time goes; the SHA-256 and memcpy speeds of this machine are
printed for scale.

    .venv/bin/python bench/copy_throughput.py [--size-mib 1024] [--rounds 3]

Target (issue 3): vmis / raw >= 0.9.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def make_source(path: Path, size: int) -> None:
    block = os.urandom(MIB)
    with path.open("wb") as f:
        for i in range(size // MIB):
            f.write(block[i % 251 :] + block[: i % 251])
        f.write(os.urandom(size % MIB))


# Section: the raw baseline


def _raw_receiver(path: str, out: str, fsync: bool, ready: Any, result: Any) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    ready.set()
    conn, _ = server.accept()
    start = time.process_time()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    buf = bytearray(MIB)
    view = memoryview(buf)
    while n := conn.recv_into(buf):
        os.write(fd, view[:n])
    if fsync:
        os.fsync(fd)
    os.close(fd)
    conn.sendall(b"k")  # done: the sender stops its clock
    result.put(time.process_time() - start)


def raw_copy(source: Path, workdir: Path, fsync: bool) -> dict[str, float]:
    sock_path = workdir / "raw.sock"
    out = workdir / "raw.out"
    sock_path.unlink(missing_ok=True)
    ctx = mp.get_context("spawn")
    ready, result = ctx.Event(), ctx.Queue()
    receiver = ctx.Process(target=_raw_receiver,
                           args=(str(sock_path), str(out), fsync, ready, result))
    receiver.start()
    ready.wait()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(sock_path))
    fd = os.open(source, os.O_RDONLY)
    buf = bytearray(MIB)
    view = memoryview(buf)
    while n := os.readv(fd, [buf]):
        sock.sendall(view[:n])
    os.close(fd)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)
    seconds = time.perf_counter() - t0
    sender_cpu = time.process_time() - cpu0
    sock.close()
    receiver_cpu = result.get()
    receiver.join()
    out.unlink()
    return {"seconds": seconds, "cpu_sender": sender_cpu, "cpu_receiver": receiver_cpu}


# Section: vmis through a lab


class VmisLab:
    """A lab host manager and one lab VM (separate processes), Guest Service Interface on."""

    def __init__(self, directory: Path) -> None:
        from vmis.lab import Lab

        self.lab = Lab(directory)
        self.lab.ensure_host()
        self.vm = self.lab.start_vm("Bench")
        self.lab.wait_ready(["Bench"])
        with self.lab.api() as api:
            api.call("POST", "/services/enable",
                     json={"vms": ["Bench"], "names": ["Guest Service Interface"]})
        self.host_pid = self.lab.host_pid()
        self.agent_pid = self.vm.pid
        assert self.host_pid and self.agent_pid
        deadline = time.monotonic() + 20
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError("the Guest Service Interface did not start in the lab VM")
            time.sleep(0.1)

    def _ready(self) -> bool:
        with self.lab.api() as api:
            rows = api.call("GET", "/services", params={"vm": ["Bench"],
                                                        "name": ["Guest Service Interface"]})
        return bool(rows) and rows[0]["PrimaryStatusDescription"] == "OK"

    def copy(self, source: str, destination: str, file_source: str) -> dict[str, Any]:
        assert self.host_pid and self.agent_pid
        cpu_host, cpu_agent = cpu_of(self.host_pid), cpu_of(self.agent_pid)
        t0 = time.perf_counter()
        with self.lab.api() as api:
            result = api.call("POST", "/vms/Bench/copy", timeout=3600, json={
                "source": source, "destination": destination, "file_source": file_source,
                "force": True})
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "cpu_host": cpu_of(self.host_pid) - cpu_host,
                "cpu_agent": cpu_of(self.agent_pid) - cpu_agent, "result": result}

    def close(self) -> None:
        self.lab.down(None)


# Section: scale


def machine_speeds() -> dict[str, float]:
    """SHA-256 and memcpy speeds of this machine, MB/s, for scale."""
    data = os.urandom(16 * MIB)
    h = hashlib.sha256()
    t0 = time.perf_counter()
    for _ in range(16):
        h.update(data)
    sha = 16 * len(data) / (time.perf_counter() - t0) / 1e6
    t0 = time.perf_counter()
    for _ in range(16):
        bytes(memoryview(data))
    copy = 16 * len(data) / (time.perf_counter() - t0) / 1e6
    return {"sha256": sha, "memcpy": copy}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="bytes to copy (MiB)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    size = args.size_mib * MIB
    gib = size / (1024 * MIB)
    work = Path(tempfile.mkdtemp(prefix="vmis-bench-", dir="/tmp"))
    source = work / "source.bin"
    print(f"copy_throughput: {args.size_mib} MiB, {args.rounds} rounds, in {work}", flush=True)
    make_source(source, size)
    speeds = machine_speeds()
    print(f"this machine: SHA-256 {speeds['sha256']:.0f} MB/s, memcpy {speeds['memcpy']:.0f} "
          f"MB/s, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)
    lab = VmisLab(work / "lab")
    guest_file = "/tmp/bench.bin"
    guest_path = lab.vm.root / guest_file.lstrip("/")
    back = work / "back.bin"
    rows: dict[str, list[dict[str, Any]]] = {"raw": [], "raw+fsync": [], "to-guest": [],
                                             "from-guest": []}
    try:
        for n in range(args.rounds):
            rows["raw"].append(raw_copy(source, work, fsync=False))
            rows["raw+fsync"].append(raw_copy(source, work, fsync=True))
            rows["to-guest"].append(lab.copy(str(source), guest_file, "Host"))
            rows["from-guest"].append(lab.copy(guest_file, str(back), "Guest"))
            expected = rows["to-guest"][-1]["result"]["Sha256"]
            assert rows["from-guest"][-1]["result"]["Sha256"] == expected
            back.unlink()
            guest_path.unlink()
            line = "  ".join(f"{k} {size / r[-1]['seconds'] / 1e6:6.0f} MB/s"
                             for k, r in rows.items())
            print(f"round {n + 1}: {line}", flush=True)
    finally:
        lab.close()
        shutil.rmtree(work, ignore_errors=True)

    def mbps(key: str) -> float:
        return size / statistics.median(r["seconds"] for r in rows[key]) / 1e6

    def cpu(key: str, field: str) -> float:
        return statistics.median(r[field] for r in rows[key]) / gib

    raw, raw_sync = mbps("raw"), mbps("raw+fsync")
    summary = {
        "size_bytes": size, "rounds": args.rounds, "machine": speeds,
        "raw_MBps": round(raw), "raw_fsync_MBps": round(raw_sync),
        "vmis_to_guest_MBps": round(mbps("to-guest")),
        "vmis_from_guest_MBps": round(mbps("from-guest")),
        "ratio_to_guest_vs_raw": round(mbps("to-guest") / raw, 3),
        "ratio_to_guest_vs_raw_fsync": round(mbps("to-guest") / raw_sync, 3),
        "ratio_from_guest_vs_raw_fsync": round(mbps("from-guest") / raw_sync, 3),
        "cpu_s_per_GiB": {
            "raw_sender": round(cpu("raw", "cpu_sender"), 3),
            "raw_receiver": round(cpu("raw", "cpu_receiver"), 3),
            "to_guest_host_manager": round(cpu("to-guest", "cpu_host"), 3),
            "to_guest_agent": round(cpu("to-guest", "cpu_agent"), 3),
            "from_guest_host_manager": round(cpu("from-guest", "cpu_host"), 3),
            "from_guest_agent": round(cpu("from-guest", "cpu_agent"), 3),
            "sha256_alone": round(1024 * MIB / 1e6 / speeds["sha256"], 3),
        },
    }
    print()
    print(f"raw socket copy          {raw:7.0f} MB/s   (with fsync {raw_sync:.0f} MB/s)")
    print(f"vmis Copy-VMFile to guest   {mbps('to-guest'):7.0f} MB/s   ratio "
          f"{summary['ratio_to_guest_vs_raw']:.2f} (vs raw+fsync "
          f"{summary['ratio_to_guest_vs_raw_fsync']:.2f})")
    print(f"vmis Copy-VMFile from guest {mbps('from-guest'):7.0f} MB/s   ratio vs raw+fsync "
          f"{summary['ratio_from_guest_vs_raw_fsync']:.2f}")
    c = summary["cpu_s_per_GiB"]
    print(f"CPU s/GiB: raw sender {c['raw_sender']:.2f} receiver {c['raw_receiver']:.2f}; "
          f"to guest: manager {c['to_guest_host_manager']:.2f} agent {c['to_guest_agent']:.2f}; "
          f"from guest: manager {c['from_guest_host_manager']:.2f} agent "
          f"{c['from_guest_agent']:.2f}; SHA-256 alone {c['sha256_alone']:.2f} per side")
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
