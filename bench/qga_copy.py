"""Copy-VMFile over qemu-ga against the best a plain qemu-ga client does, both ways, in one run.

The guest is Debian's qemu-ga 7.2 on this machine, in the tests' bubblewrap
sandbox (tests/support/qga_sandbox.py: every state-changing RPC blocked,
guest-exec among them), on a Unix socket as QEMU's chardev would present it.

- **baseline**: a hand-written client at its best: one blocking socket, the
  file in 1 MiB chunks, base64 in one guest-file-write (or guest-file-read)
  request at a time, the next sent when the answer is in; no hashing, no
  destination rules, nothing but the bytes (what Proxmox and libvirt users
  script, with Proxmox's 60 KiB writes raised to 1 MiB);
- **vmis**: ``Copy-VMFile`` through the host manager's qemu-ga link
  (vmis.links.qemu_ga.fcopy), with everything a copy does there: the
  destination resolved by Copy-VMFile's rules, SHA-256 of every byte on the
  host, qemu-ga's handles closed, several requests in flight
  (docs/guest-links.md §6).

Rounds interleave the contenders (baseline in, vmis in, baseline out, vmis
out, ...); the medians are compared, and the CPU seconds per MiB of qemu-ga
(which sets the pace: its JSON lexer takes the base64 a character at a
time) and of this process are printed beside them.

    .venv/bin/python bench/qga_copy.py [--size-mib 64] [--rounds 3]
    .venv/bin/python bench/qga_copy.py --chunks 65536,262144,1048576,4194304

Target (issue 15): vmis / baseline >= 1.0 both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.qga_sandbox import QgaSandbox  # noqa: E402

import vmis.links.qemu_ga.link as qga_link  # noqa: E402
from vmis.host.manager import HostManager  # noqa: E402
from vmis.host.store import Store  # noqa: E402
from vmis.services.fcopy.host import FcopyHost  # noqa: E402

MIB = 1024 * 1024
TICK = os.sysconf("SC_CLK_TCK")
#: the baseline's chunk: what the brief's best-case client sends per request
BASELINE_CHUNK = MIB


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# Section: the baseline client


class PlainClient:
    """The simplest correct qemu-ga client: one request in flight, replies read by line."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buf = b""
        sync_id = int.from_bytes(os.urandom(6), "big")
        self.sock.sendall(b"\xff" + json.dumps(
            {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}).encode())
        while True:
            line = self._line()
            if line.lstrip(b"\xff").startswith(b'{"return": %d}' % sync_id):
                break

    def _line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(4 * MIB)
            if not data:
                raise ConnectionError("qemu-ga closed the connection")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def call(self, command: str, arguments: dict[str, Any]) -> Any:
        self.sock.sendall(json.dumps({"execute": command, "arguments": arguments}).encode())
        reply = json.loads(self._line().lstrip(b"\xff"))
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["return"]

    def close(self) -> None:
        self.sock.close()  # nothing unread: qemu-ga keeps listening


def baseline_in(sandbox: QgaSandbox, source: Path, target: str) -> None:
    client = PlainClient(sandbox.socket)
    handle = client.call("guest-file-open", {"path": target, "mode": "w"})
    with source.open("rb") as f:
        while chunk := f.read(BASELINE_CHUNK):
            client.call("guest-file-write",
                        {"handle": handle, "buf-b64": base64.b64encode(chunk).decode()})
    client.call("guest-file-close", {"handle": handle})
    client.close()


def baseline_out(sandbox: QgaSandbox, source: str, target: Path) -> None:
    client = PlainClient(sandbox.socket)
    handle = client.call("guest-file-open", {"path": source, "mode": "r"})
    with target.open("wb") as f:
        while True:
            answer = client.call("guest-file-read", {"handle": handle, "count": BASELINE_CHUNK})
            f.write(base64.b64decode(answer["buf-b64"]))
            if answer["eof"] or not answer["count"]:
                break
    client.call("guest-file-close", {"handle": handle})
    client.close()


# Section: vmis


async def vmis_copy(sandbox: QgaSandbox, db: Path, source: str, target: str,
                    file_source: str) -> float:
    """Seconds of one Copy-VMFile through a host manager's qemu-ga link (connect excluded)."""
    manager = HostManager(Store(f"sqlite:///{db}"))
    await manager.start()
    try:
        if not manager.sessions:
            manager.add_vm("BenchVM", sandbox.channel, guest_agent="qemu-ga")
            await manager.set_enabled(["BenchVM"], ["Guest Service Interface"], True)
        session = manager.session("BenchVM")
        if not await session.wait_connected(30):
            raise RuntimeError(f"no qemu-ga link: {session.last_error}")
        started = time.perf_counter()
        await manager.service(FcopyHost).copy_vm_file("BenchVM", source, target, file_source,
                                                      force=True)
        return time.perf_counter() - started
    finally:
        await manager.close()


# Section: the run


def measure(label: str, sandbox: QgaSandbox, size_mib: int, run: Any) -> dict[str, float]:
    sandbox.ensure_running()
    qga = cpu_seconds(sandbox.pid)
    own = time.process_time()
    started = time.perf_counter()
    seconds = run()
    wall = seconds if isinstance(seconds, float) else time.perf_counter() - started
    return {"label": label, "mib_s": size_mib / wall,  # type: ignore[dict-item]
            "qga_cpu": (cpu_seconds(sandbox.pid) - qga) / size_mib,
            "host_cpu": (time.process_time() - own) / size_mib}


def round_trip(sandbox: QgaSandbox, work: Path, size_mib: int) -> list[dict[str, float]]:
    source = work / "source.bin"
    guest_in, guest_vmis = sandbox.dir / "in-baseline.bin", sandbox.dir / "in-vmis.bin"
    back_base, back_vmis = work / "back-baseline.bin", work / "back-vmis.bin"
    db = work / "host.db"
    results = [
        measure("baseline in", sandbox, size_mib,
                lambda: baseline_in(sandbox, source, str(guest_in))),
        measure("vmis in", sandbox, size_mib, lambda: asyncio.run(
            vmis_copy(sandbox, db, str(source), str(guest_vmis), "Host"))),
        measure("baseline out", sandbox, size_mib,
                lambda: baseline_out(sandbox, str(guest_in), back_base)),
        measure("vmis out", sandbox, size_mib, lambda: asyncio.run(
            vmis_copy(sandbox, db, str(guest_vmis), str(back_vmis), "Guest"))),
    ]
    original = source.read_bytes()
    for copy in (guest_in, guest_vmis, back_base, back_vmis):
        assert copy.read_bytes() == original, f"{copy} differs from the source"
        copy.unlink()
    return results


def report(all_rounds: list[list[dict[str, float]]]) -> dict[str, float]:
    by_label: dict[str, list[dict[str, float]]] = {}
    for rounds in all_rounds:
        for r in rounds:
            by_label.setdefault(str(r["label"]), []).append(r)
    medians = {}
    print(f"{'copy':<14}{'MiB/s (median, all)':<34}{'qemu-ga cpu s/MiB':>18}"
          f"{'host cpu s/MiB':>16}")
    for label, rows in by_label.items():
        speeds = [r["mib_s"] for r in rows]
        medians[label] = statistics.median(speeds)
        print(f"{label:<14}{medians[label]:>7.2f}  ({', '.join(f'{s:.1f}' for s in speeds)})"
              .ljust(48) + f"{statistics.median(r['qga_cpu'] for r in rows):>10.4f}"
              f"{statistics.median(r['host_cpu'] for r in rows):>16.4f}")
    ratios = {"in": medians["vmis in"] / medians["baseline in"],
              "out": medians["vmis out"] / medians["baseline out"]}
    print(f"vmis / baseline: into the guest {ratios['in']:.2f}, out of it {ratios['out']:.2f} "
          "(target >= 1.0)")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", default="",
                        help="comma-separated chunk sizes to try for the link's writes and "
                             "reads (bytes); default: the link's own")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the sandbox blocks services: expected warnings
    with tempfile.TemporaryDirectory(prefix="vmis-qb-", dir="/tmp") as tmp:
        work = Path(tmp)
        sandbox = QgaSandbox(work)
        sandbox.start()
        try:
            (work / "source.bin").write_bytes(os.urandom(args.size_mib * MIB))
            chunks = [int(c) for c in args.chunks.split(",") if c] or [0]
            for chunk in chunks:
                if chunk:
                    qga_link.WRITE_CHUNK = qga_link.READ_CHUNK = chunk
                print(f"\n{args.size_mib} MiB each way; link chunks: writes "
                      f"{qga_link.WRITE_CHUNK // 1024} KiB, reads {qga_link.READ_CHUNK // 1024} "
                      f"KiB; baseline {BASELINE_CHUNK // 1024} KiB, one request in flight")
                report([round_trip(sandbox, work, args.size_mib) for _ in range(args.rounds)])
        finally:
            sandbox.stop()


if __name__ == "__main__":
    main()
