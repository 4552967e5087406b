"""API scale: the event stream and /metrics of a host manager with N lab guests.

With N guests beating every second (simulated, in "farm" processes, as
bench/heartbeat_scale.py runs them), measures in one run:

- the baseline, the bare API: ``GET /v1/vms`` and ``GET /v1/services?vm=*``;
- a ``/metrics`` scrape (target: under 100 ms);
- an event reaching 20 connected SSE clients: from its publication (the
  event's own ``Time``) to each client's receipt, for events made by
  enabling and disabling a service on one VM, 10 a second (target: p99
  under 200 ms).

Next to each figure's wall-clock times is the manager's CPU time per call
(per event for the stream: all its clients) above its background work: on
a shared machine whose CPUs are busy, the wall clock also counts the wait
for a CPU, the CPU time does not.

Each figure is a row of :data:`FIGURES`, a name and a function of the run's
:class:`Run`. The web console's first render in a browser is
bench/console_scale.py's, against the same baseline.

    .venv/bin/python bench/api_scale.py [-n 1024] [--clients 20] [--rounds 100]

The clients run in a process of their own and read the stream with asyncio
and the standard library (no httpx), so what is measured is the manager's
side. Subprocesses inherit this process's environment (PYTHONPATH included),
so a worktree's sources are measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heartbeat_scale import (  # beside this file
    cpu_seconds,
    farmed_guests,
    running_manager,
    scale_arguments,
    wait_line,
)

CLIENTS = textwrap.dedent("""
    import asyncio, json, sys, time

    async def client(sock, latencies, others, ready, stop):
        reader, writer = await asyncio.open_unix_connection(sock)
        writer.write(b"GET /v1/events?type=settings,service HTTP/1.1\\r\\nHost: vmis\\r\\n"
                     b"Accept: text/event-stream\\r\\n\\r\\n")
        await writer.drain()
        ready()
        while not stop.is_set():
            line = await reader.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                if event["VMName"] == "vm0000":
                    latencies.append(time.time() - event["Time"])
                else:
                    others.append(1)
        writer.close()

    async def main(sock, n):
        latencies, others, stop, opened = [], [], asyncio.Event(), []
        tasks = [asyncio.create_task(client(sock, latencies, others,
                                            lambda: opened.append(1), stop))
                 for _ in range(n)]
        while len(opened) < n:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        expected, deadline = int(line), time.monotonic() + 60
        while len(latencies) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stop.set()
        for t in tasks:
            t.cancel()
        print(json.dumps({"latencies": latencies, "others": len(others)}), flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
""")


@dataclass
class Run:
    """What the figures are measured against."""

    client: httpx.Client
    sock: Path
    host_pid: int
    n: int
    clients: int
    rounds: int
    figures: dict[str, list[float]] = field(default_factory=dict)
    #: the manager's CPU time per call (or per event, for the stream) above its
    #: background work (beats, time sync), milliseconds: what a loaded machine's
    #: waiting for a CPU does not inflate
    cpu: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def timed(call: Callable[[], object], times: int) -> list[float]:
    out = []
    for _ in range(times):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def get(client: httpx.Client, path: str, **params: object) -> Callable[[], object]:
    """A GET to time: its answer read whole, an error status raised."""
    def call() -> object:
        answer = client.get(path, params=params)
        answer.raise_for_status()
        return answer.content
    return call


def bare_vms(run: Run) -> list[float]:
    return timed(get(run.client, "/v1/vms"), 20)


def bare_services(run: Run) -> list[float]:
    return timed(get(run.client, "/v1/services", vm="*"), 20)


def scrape(run: Run) -> list[float]:
    return timed(get(run.client, "/metrics"), 20)


def sse_fanout(run: Run) -> list[float]:
    clients = subprocess.Popen([sys.executable, "-c", CLIENTS, str(run.sock), str(run.clients)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        wait_line(clients, "SSE clients")
        for i in range(run.rounds):
            verb = "disable" if i % 2 == 0 else "enable"
            run.client.post(f"/v1/services/{verb}", json={"vms": ["vm0000"], "names": ["VSS"]}
                            ).raise_for_status()
            time.sleep(0.1)
        assert clients.stdin is not None and clients.stdout is not None
        # two events a round (settings, service) for each client
        expected = 2 * run.rounds * run.clients
        clients.stdin.write(f"{expected}\n")
        clients.stdin.flush()
        received = json.loads(clients.stdout.readline())
    finally:
        clients.kill()
        clients.wait()
    latencies: list[float] = received["latencies"]
    run.notes.append(f"SSE: {len(latencies)} of {expected} receipts of the rounds' events "
                     f"within 60 s, and {received['others']} of other VMs' events")
    return latencies


#: name, what it measures, the target (seconds, of the p99), the function
FIGURES: list[tuple[str, str, float | None, Callable[[Run], list[float]]]] = [
    ("GET /v1/vms", "baseline", None, bare_vms),
    ("GET /v1/services?vm=*", "baseline", None, bare_services),
    ("GET /metrics", "scrape", 0.100, scrape),
    ("event to SSE clients", "publish to receipt", 0.200, sse_fanout),
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    scale_arguments(parser)
    parser.add_argument("--clients", type=int, default=20, help="SSE clients")
    parser.add_argument("--rounds", type=int, default=100,
                        help="enable/disable rounds (two events each)")
    args = parser.parse_args()
    with farmed_guests(args.n, args.farms) as (base, farms):
        print(f"API scale, N={args.n} guests in {farms} processes, 1 s heartbeats, "
              f"{args.clients} SSE clients")
        with running_manager(base, args.n) as (host, client):
            time.sleep(args.settle)
            run = Run(client, base / "host.sock", host.pid, args.n, args.clients, args.rounds)
            cpu, start = cpu_seconds(host.pid), time.monotonic()
            time.sleep(5)
            background = (cpu_seconds(host.pid) - cpu) / (time.monotonic() - start)
            for name, _, _, measure in FIGURES:
                cpu, start = cpu_seconds(host.pid), time.monotonic()
                run.figures[name] = measure(run)
                used = cpu_seconds(host.pid) - cpu - background * (time.monotonic() - start)
                calls = 2 * args.rounds if name == "event to SSE clients" else len(
                    run.figures[name])
                run.cpu[name] = max(0.0, 1000 * used / calls)
    baseline = statistics.median(run.figures["GET /v1/vms"])
    print(f"{'':28}{'what':>20}{'median ms':>11}{'p99 ms':>9}{'x /v1/vms':>11}"
          f"{'CPU ms':>8}  target")
    for name, what, target, _ in FIGURES:
        values = run.figures[name]
        median, p99 = statistics.median(values), percentile(values, 0.99)
        verdict = "" if target is None else (
            f"p99 < {target * 1000:g} ms {'met' if p99 < target else 'MISSED'}")
        print(f"{name:28}{what:>20}{median * 1000:>11.1f}{p99 * 1000:>9.1f}"
              f"{median / baseline:>11.2f}{run.cpu[name]:>8.1f}  {verdict}")
    for note in run.notes:
        print(note)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
