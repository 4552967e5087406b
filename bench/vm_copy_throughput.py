"""Copy-VMFile into and out of a real QEMU guest, against the raw speed of the same channel.

Both measurements go through the same virtio-serial port in the same run,
on the same booted VM:

1. **Copy-VMFile**: a QEMU lab VM (``vmis lab up -Qemu``, the test image of
   tests/support/vmimage.py) with the agent as installed in the image; the
   copies are started through the host manager's API exactly as ``vmis
   Copy-VMFile`` does, and include everything a copy does (SHA-256 on both
   sides, the temporary file on the guest's disk, fsync, rename).
2. **Raw channel**: then the agent is stopped in the guest and a tiny raw
   pump (below, :data:`RAW_PUMP`, standard library only) takes the port:
   ``head -c`` (C, so the reader costs as little as a reader can) copies the
   bytes the host sends into ``/dev/null``, then the pump sends as many
   bytes back. The host dials the same chardev socket
   (``agent.sock``) the manager used. This is the ceiling for any protocol
   over this port on this machine: no framing, no hashing, no disk.

QEMU's CPU seconds per MiB are printed for both: under TCG the guest's CPU
(which QEMU emulates) is what limits the host-to-guest direction
(feasibility.md §4b measured ≈20 MB/s raw that way).

    .venv/bin/python bench/vm_copy_throughput.py [--size-mib 100] [--rounds 2]

Needs QEMU and the guest image (built on first use: root, minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.vmimage import build_test_image

from vmis.lab.lab import Lab, run_lab_up
from vmis.qemu.machine import QemuMachine

MIB = 1024 * 1024
TICK = os.sysconf("SC_CLK_TCK")
NAME = "BenchVM"

#: The guest side of the raw measurement: reads the port until the host's
#: "PUSH n" line, answers "READY", lets head(1) read n bytes off the port
#: into /dev/null, answers "GOT n"; on "PULL n" it writes n bytes back;
#: "PING n" is answered "PONG n". Stale bytes before a command line are skipped.
RAW_PUMP = r'''
import os, select, subprocess, sys, time
PORT = "/dev/virtio-ports/org.vmis.agent.0"
while True:                      # the agent may still hold the port for a moment
    try:
        fd = os.open(PORT, os.O_RDWR)
        break
    except OSError:
        time.sleep(0.2)
poller = select.poll()
poller.register(fd, select.POLLIN)
def read_some():
    while True:
        events = poller.poll(1000)
        # no host connected: POLLHUP, and reads return EOF at once
        if events and events[0][1] & select.POLLIN:
            data = os.read(fd, 1 << 20)
            if data:
                return data
        time.sleep(0.05)
def write_all(data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
pending = b""
block = os.urandom(1 << 20)
while True:
    while b"\n" not in pending:
        pending += read_some()
    line, pending = pending.split(b"\n", 1)
    words = line.split(b"RAW ")[-1].split()
    if len(words) != 2 or not words[1].isdigit():
        continue                 # stale bytes from the vmis session
    op, size = words[0], int(words[1])
    if op == b"PUSH":
        # The bytes are counted by head(1), in C, reading the port directly:
        # this Python loop would be the bottleneck under TCG, not the channel.
        write_all(b"READY\n")
        done = subprocess.run(["head", "-c", str(size)], stdin=fd,
                              stdout=subprocess.DEVNULL, check=False)
        write_all(b"GOT %d\n" % (size if done.returncode == 0 else -1))
    elif op == b"PULL":
        left = size
        while left:
            chunk = block[:min(left, len(block))]
            write_all(chunk)
            left -= len(chunk)
    elif op == b"PING":
        write_all(b"PONG %d\n" % size)
    elif op == b"QUIT":
        break
'''


#: Run in the guest: SHA-256 throughput of 64 MiB, MiB/s.
GUEST_SHA256 = (
    "import hashlib, os, time; b = os.urandom(1 << 20); h = hashlib.sha256(); "
    "t = time.perf_counter(); [h.update(b) for _ in range(64)]; "
    "print(64 / (time.perf_counter() - t))"
)


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def make_source(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, MIB))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


class Bench:
    """One QEMU lab VM and the measurements on it."""

    def __init__(self, directory: Path) -> None:
        self.lab = Lab(directory / "lab")
        image = build_test_image()
        print(f"booting {NAME} from {image} ...", file=sys.stderr)
        begin = time.monotonic()
        (vm,) = run_lab_up(self.lab, [NAME], None, qemu=True, image=image)
        print(f"heartbeat OK after {time.monotonic() - begin:.1f} s", file=sys.stderr)
        self.workdir = vm.dir
        pid = QemuMachine.attach(self.workdir).pid
        assert pid is not None
        self.qemu_pid: int = pid
        with self.lab.api() as api:
            api.call("POST", "/services/enable",
                     json={"vms": [NAME], "names": ["Guest Service Interface"]})

    def _measure(self, size: int, work: Any) -> dict[str, float]:
        cpu = cpu_of(self.qemu_pid)
        begin = time.perf_counter()
        work()
        seconds = time.perf_counter() - begin
        return {"seconds": seconds, "mib_s": size / MIB / seconds,
                "qemu_cpu_per_mib": (cpu_of(self.qemu_pid) - cpu) / (size / MIB)}

    def copy(self, source: str, destination: str, file_source: str,
             size: int) -> dict[str, float]:
        def work() -> None:
            with self.lab.api() as api:
                result = api.call("POST", f"/vms/{NAME}/copy", timeout=3600, json={
                    "source": source, "destination": destination, "file_source": file_source,
                    "force": True})
            assert result["Bytes"] == size, result

        return self._measure(size, work)

    def guest(self, *argv: str) -> str:
        """Run a command in the guest through VM Session (the test image allows it)."""
        import subprocess

        env = dict(os.environ, VMIS_SOCKET=str(self.lab.socket))
        return subprocess.run([sys.executable, "-m", "vmis.cli.host", "Invoke-Command",
                               "-VMName", NAME, "-NoStdin", "--", *argv], env=env, check=True,
                              timeout=120, capture_output=True, text=True).stdout

    def guest_sha256(self) -> float:
        """SHA-256 speed of the guest's Python (MiB/s): what a copy pays on the guest's side."""
        return float(self.guest("python3", "-c", GUEST_SHA256))

    def switch_to_raw(self, pump: Path) -> socket.socket:
        """Stop the agent, start the raw pump on its port, and dial the port's host end."""
        with self.lab.api() as api:
            api.call("POST", f"/vms/{NAME}/copy", timeout=600, json={
                "source": str(pump), "destination": "/root/rawpump.py", "file_source": "Host",
                "force": True})
        # In a transient unit of its own, a second from now: this command's session
        # (and the agent) go away first.
        self.guest("systemd-run", "--unit=vmis-rawpump", "--on-active=1",
                   "/bin/sh", "-c", "systemctl stop vmis-guest.service; "
                   "exec python3 /root/rawpump.py")
        with self.lab.api() as api:  # the manager lets go of the chardev socket
            api.call("DELETE", f"/vms/{NAME}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.workdir / "agent.sock"))
        # What is written before the pump holds the port may still reach the
        # stopping agent (which drops it) or wait in QEMU: ask until the pump
        # answers, then once more, and read up to that last answer, as the
        # vmis SYNC does (docs/protocol.md §3.1). No clock runs before that.
        deadline = time.monotonic() + 120
        sock.settimeout(1.0)
        nonce, reply = 0, b""
        while b"PONG" not in reply:
            assert time.monotonic() < deadline, "the raw pump did not answer in 120 s"
            nonce += 1
            sock.sendall(b"\nRAW PING %d\n" % nonce)
            try:
                reply += sock.recv(4096)
            except TimeoutError:
                continue
        sock.settimeout(120)
        nonce += 1
        sock.sendall(b"\nRAW PING %d\n" % nonce)
        while not reply.endswith(b"PONG %d\n" % nonce):
            data = sock.recv(4096)
            assert data, "the channel closed before the raw pump answered"
            reply += data
        return sock

    def raw_push(self, sock: socket.socket, size: int) -> dict[str, float]:
        block = os.urandom(MIB)

        sock.sendall(b"\nRAW PUSH %d\n" % size)
        reply = b""
        while not reply.endswith(b"READY\n"):
            data = sock.recv(64)
            assert data, "the pump closed the channel"
            reply += data

        def work() -> None:
            left = size
            while left:
                n = min(left, MIB)
                sock.sendall(block[:n])
                left -= n
            reply = b""
            while not reply.endswith(b"\n"):
                reply += sock.recv(64)
            assert reply.split()[-1] == str(size).encode(), reply

        return self._measure(size, work)

    def raw_pull(self, sock: socket.socket, size: int) -> dict[str, float]:
        buf = bytearray(MIB)

        def work() -> None:
            sock.sendall(b"\nRAW PULL %d\n" % size)
            got = 0
            while got < size:
                n = sock.recv_into(buf)
                assert n, "the pump closed the channel"
                got += n

        return self._measure(size, work)

    def close(self) -> None:
        self.lab.down(None)


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if shutil.which("qemu-system-x86_64") is None:
        print("qemu-system-x86_64 is not installed", file=sys.stderr)
        return 1
    size = args.size_mib * MIB
    sha256 = float("nan")
    results: dict[str, list[dict[str, float]]] = {
        "copy_to_guest": [], "copy_from_guest": [], "raw_to_guest": [], "raw_from_guest": []}
    with tempfile.TemporaryDirectory(prefix="vmis-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        source = work / "source.bin"
        digest = make_source(source, size)
        pump = work / "rawpump.py"
        pump.write_text(RAW_PUMP)
        bench = Bench(work)
        try:
            for i in range(args.rounds):
                results["copy_to_guest"].append(
                    bench.copy(str(source), "/root/bench.bin", "Host", size))
                back = work / "back.bin"
                results["copy_from_guest"].append(
                    bench.copy("/root/bench.bin", str(back), "Guest", size))
                assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
                back.unlink()
                print(f"round {i + 1}: Copy-VMFile done", file=sys.stderr)
            sha256 = bench.guest_sha256()
            sock = bench.switch_to_raw(pump)
            try:
                for i in range(args.rounds):
                    results["raw_to_guest"].append(bench.raw_push(sock, size))
                    results["raw_from_guest"].append(bench.raw_pull(sock, size))
                    print(f"round {i + 1}: raw channel done", file=sys.stderr)
                sock.sendall(b"\nRAW QUIT 0\n")
            finally:
                sock.close()
        finally:
            bench.close()
    summary: dict[str, dict[str, Any]] = {key: {"mib_s": _median(rows, "mib_s"),
                     "qemu_cpu_s_per_mib": _median(rows, "qemu_cpu_per_mib"),
                     "runs_mib_s": [round(r["mib_s"], 1) for r in rows]}
               for key, rows in results.items()}
    if args.json:
        print(json.dumps({"size_mib": args.size_mib, "rounds": args.rounds,
                          "guest_sha256_mib_s": sha256, **summary}, indent=2))
        return 0
    print(f"{args.size_mib} MiB per run, {args.rounds} rounds, medians "
          "(one QEMU guest under TCG, virtio-serial port org.vmis.agent.0)")
    print(f"{'direction':16} {'Copy-VMFile':>12} {'raw channel':>12} {'ratio':>6}   "
          "QEMU CPU s/MiB (copy / raw)")
    for direction, copy_key, raw_key in (("host -> guest", "copy_to_guest", "raw_to_guest"),
                                         ("guest -> host", "copy_from_guest", "raw_from_guest")):
        c, r = summary[copy_key], summary[raw_key]
        print(f"{direction:16} {c['mib_s']:9.1f} MiB/s {r['mib_s']:8.1f} MiB/s "
              f"{c['mib_s'] / r['mib_s']:6.2f}   {c['qemu_cpu_s_per_mib']:.3f} / "
              f"{r['qemu_cpu_s_per_mib']:.3f}")
    print(f"for scale: SHA-256 in the guest's Python runs at {sha256:.1f} MiB/s "
          "(a copy hashes on both ends)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
