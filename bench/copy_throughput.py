"""Copy-VMFile throughput against a raw Python socket copy of the same bytes, in one run.

The vmis side is the real thing: a lab host manager and a lab guest agent,
each its own process, talking over the lab's Unix socket; the copy is
started through the manager's API, exactly as ``vmis Copy-VMFile`` does,
and includes everything a copy does (SHA-256 on both sides, the temporary
file, fsync, rename, mode and times).

Two baselines, both the plainest copy Python can make of the same bytes over
the same kind of socket: one process reads the file and ``sendall``s 1 MiB
blocks to another over an AF_UNIX stream socket, which ``recv_into``s a
1 MiB buffer and writes it to a file.

- **raw** (issue 3's yardstick): just that, measured once without fsync and
  once with one fsync at the end;
- **raw+sha+fsync** (the fair one): the same copy doing everything vmis
  must do except the protocol: SHA-256 of every block on both ends (compared
  at the end), one fsync, and the 4 MiB socket buffers vmis asks for.

SHA-256 makes issue 3's target of 0.9 x raw unreachable on a small machine:
each end must hash every byte once (about 1 CPU-second per GiB per end with
SHA-NI), which alone is more CPU than the raw copy's two processes use. The
benchmark prints the ceiling: the raw copy's CPU plus two SHA-256 passes,
spread perfectly over every CPU (on 2 CPUs about 0.5 x raw).

Runs are interleaved (raw, raw+fsync, raw+sha+fsync, vmis to guest, vmis
from guest, ...) so that page cache and disk write-back treat every
contender alike, and the medians are compared. CPU seconds of every process
are reported per GiB to show where the time goes; they are the steadier
figure on a machine shared with other work. The SHA-256 and memcpy speeds of
this machine are printed for scale.

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


#: the socket buffers vmis asks for (transport/channel.py); the fair baseline
#: gets them too, so that both ends can hash while the bytes are in flight
SOCKET_BUFFER = 4 * MIB


def _big_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


def _raw_receiver(path: str, out: str, ready: Any, result: Any, *, fsync: bool,
                  sha: bool) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    ready.set()
    conn, _ = server.accept()
    if sha:
        _big_buffers(conn)
    start = time.process_time()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    buf = bytearray(MIB)
    view = memoryview(buf)
    h = hashlib.sha256()
    while n := conn.recv_into(buf):
        os.write(fd, view[:n])
        if sha:
            h.update(view[:n])
    if fsync:
        os.fsync(fd)
    os.close(fd)
    conn.sendall(h.digest())  # done: the sender stops its clock
    result.put(time.process_time() - start)


def raw_copy(source: Path, workdir: Path, fsync: bool, sha: bool = False) -> dict[str, float]:
    sock_path = workdir / "raw.sock"
    out = workdir / "raw.out"
    sock_path.unlink(missing_ok=True)
    ctx = mp.get_context("spawn")
    ready, result = ctx.Event(), ctx.Queue()
    receiver = ctx.Process(target=_raw_receiver, args=(str(sock_path), str(out), ready, result),
                           kwargs={"fsync": fsync, "sha": sha})
    receiver.start()
    ready.wait()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if sha:
        _big_buffers(sock)
    sock.connect(str(sock_path))
    fd = os.open(source, os.O_RDONLY)
    buf = bytearray(MIB)
    view = memoryview(buf)
    h = hashlib.sha256()
    while n := os.readv(fd, [buf]):
        if sha:
            h.update(view[:n])
        sock.sendall(view[:n])
    os.close(fd)
    sock.shutdown(socket.SHUT_WR)
    theirs = sock.recv(64)
    seconds = time.perf_counter() - t0
    sender_cpu = time.process_time() - cpu0
    sock.close()
    receiver_cpu = result.get()
    receiver.join()
    out.unlink()
    if sha and theirs != h.digest():
        raise RuntimeError("raw+sha256 copy: the two ends' hashes differ")
    return {"seconds": seconds, "cpu_sender": sender_cpu, "cpu_receiver": receiver_cpu}


# Section: vmis through a lab


class VmisLab:
    """A lab host manager and one lab VM (separate processes), Guest Service Interface on."""

    def __init__(self, directory: Path) -> None:
        from vmis.lab.lab import Lab

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
    rows: dict[str, list[dict[str, Any]]] = {"raw": [], "raw+fsync": [], "raw+sha+fsync": [],
                                             "to-guest": [], "from-guest": []}
    try:
        for n in range(args.rounds):
            rows["raw"].append(raw_copy(source, work, fsync=False))
            rows["raw+fsync"].append(raw_copy(source, work, fsync=True))
            rows["raw+sha+fsync"].append(raw_copy(source, work, fsync=True, sha=True))
            rows["to-guest"].append(lab.copy(str(source), guest_file, "Host"))
            rows["from-guest"].append(lab.copy(guest_file, str(back), "Guest"))
            expected = rows["to-guest"][-1]["result"]["Sha256"]
            assert rows["from-guest"][-1]["result"]["Sha256"] == expected
            back.unlink()
            guest_path.unlink()
            line = "  ".join(f"{k} {size / r[-1]['seconds'] / 1e6:5.0f}"
                             for k, r in rows.items())
            print(f"round {n + 1} (MB/s): {line}", flush=True)
    finally:
        lab.close()
        shutil.rmtree(work, ignore_errors=True)

    def mbps(key: str) -> float:
        return size / statistics.median(r["seconds"] for r in rows[key]) / 1e6

    def cpu(key: str, field: str) -> float:
        return statistics.median(r[field] for r in rows[key]) / gib

    raw, raw_sync, fair = mbps("raw"), mbps("raw+fsync"), mbps("raw+sha+fsync")
    to_guest, from_guest = mbps("to-guest"), mbps("from-guest")
    sha_alone = 1024 * MIB / 1e6 / speeds["sha256"]
    # What no implementation can beat on this machine: the raw copy's CPU
    # plus one SHA-256 pass per end, spread perfectly over every CPU.
    cpus = os.cpu_count() or 1
    work_s = cpu("raw", "cpu_sender") + cpu("raw", "cpu_receiver") + 2 * sha_alone
    ceiling = 1024 * MIB / (work_s / cpus) / 1e6
    summary = {
        "size_bytes": size, "rounds": args.rounds, "machine": speeds,
        "raw_MBps": round(raw), "raw_fsync_MBps": round(raw_sync),
        "raw_sha256_fsync_MBps": round(fair),
        "vmis_to_guest_MBps": round(to_guest), "vmis_from_guest_MBps": round(from_guest),
        "ceiling_MBps": round(ceiling),
        "ratio_to_guest_vs_raw": round(to_guest / raw, 3),
        "ratio_from_guest_vs_raw": round(from_guest / raw, 3),
        "ratio_to_guest_vs_raw_sha256_fsync": round(to_guest / fair, 3),
        "ratio_from_guest_vs_raw_sha256_fsync": round(from_guest / fair, 3),
        "ratio_ceiling_vs_raw": round(ceiling / raw, 3),
        "cpu_s_per_GiB": {
            "raw_sender": round(cpu("raw", "cpu_sender"), 3),
            "raw_receiver": round(cpu("raw", "cpu_receiver"), 3),
            "raw_sha256_sender": round(cpu("raw+sha+fsync", "cpu_sender"), 3),
            "raw_sha256_receiver": round(cpu("raw+sha+fsync", "cpu_receiver"), 3),
            "to_guest_host_manager": round(cpu("to-guest", "cpu_host"), 3),
            "to_guest_agent": round(cpu("to-guest", "cpu_agent"), 3),
            "from_guest_host_manager": round(cpu("from-guest", "cpu_host"), 3),
            "from_guest_agent": round(cpu("from-guest", "cpu_agent"), 3),
            "sha256_alone": round(sha_alone, 3),
        },
    }
    print()
    print(f"raw socket copy                 {raw:6.0f} MB/s   (with fsync {raw_sync:.0f})")
    print(f"raw + SHA-256 both ends + fsync {fair:6.0f} MB/s   (the fair baseline)")
    print(f"ceiling, {cpus} CPUs                 {ceiling:6.0f} MB/s   = "
          f"{ceiling / raw:.2f} x raw: (raw CPU + 2 x SHA-256) / {cpus}")
    for name, value in (("to guest  ", to_guest), ("from guest", from_guest)):
        print(f"vmis Copy-VMFile {name}     {value:6.0f} MB/s   vs raw {value / raw:.2f}   "
              f"vs raw+sha+fsync {value / fair:.2f}")
    c = summary["cpu_s_per_GiB"]
    print(f"CPU s/GiB: raw sender {c['raw_sender']:.2f} receiver {c['raw_receiver']:.2f}; "
          f"raw+sha sender {c['raw_sha256_sender']:.2f} receiver "
          f"{c['raw_sha256_receiver']:.2f}; to guest: manager "
          f"{c['to_guest_host_manager']:.2f} agent {c['to_guest_agent']:.2f}; "
          f"from guest: manager {c['from_guest_host_manager']:.2f} agent "
          f"{c['from_guest_agent']:.2f}; SHA-256 alone {c['sha256_alone']:.2f} per side")
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
