"""Heartbeat scale: N lab guests against one host manager at 1 s heartbeats.

Prints the host manager's CPU use (% of one core) in the steady state and the
time to enable a service on all N VMs, next to a baseline measured in the
same run: a bare host that speaks the same protocol to the same N agents
(vmis.protocol + asyncio, no manager, store, status or API), so the ratio is
what the manager costs above the protocol floor.

Targets (issue 2): under 5 % of a core at N=1024, enable-all under 2 s.

    .venv/bin/python bench/heartbeat_scale.py [-n 1024] [--seconds 10]

For this benchmark only, the N guest agents share a few processes ("farms",
``--farms``, 2 by default: one per core of a 2-core machine). One farm of
1024 agents is saturated while they start and while all of them start a
service at once; its queueing then shows up as the host's enable-all time
and as uncertain time sync samples (a SYNC measured through a busy farm,
which the host repeats once the farm is quieter). Real guests each have
their own CPU.

The manager runs as ``vmis host serve`` does, on uvloop when installed; the
baseline uses the same loop. Subprocesses inherit this process's environment
(PYTHONPATH included), so a worktree's sources are measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")

FARM = textwrap.dedent("""
    import asyncio, resource, sys
    from pathlib import Path
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    from vmis.guest.agent import Agent
    from vmis.guest.config import AgentConfig
    from vmis.guest.adapters import make_adapters
    from vmis.guest.services import available_services

    async def main(base, first, n):
        agents = []
        for i in range(first, first + n):
            root = Path(base) / f"g{i}"
            cfg = AgentConfig(channel="unix:/c.sock", control_socket="/ctl.sock",
                              adapters="fake", health_interval=30)
            agent = Agent(cfg, root, available_services(), make_adapters("fake", root))
            ready = asyncio.Event()
            agents.append(asyncio.ensure_future(agent.run(ready=ready.set)))
            await ready.wait()
        print("ready", flush=True)
        await asyncio.gather(*agents)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
""")

BARE_HOST = textwrap.dedent("""
    import asyncio, resource, sys, json
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    from vmis.protocol import Connection, Role, NotificationReceived, ResponseReceived
    from vmis.protocol import ControlOp, encode_json
    from vmis.protocol.services import CONTROL

    class Bare(asyncio.Protocol):
        beats = 0
        def __init__(self):
            self.conn = Connection(Role.HOST)
            self.waiter = asyncio.get_running_loop().create_future()
        def connection_made(self, t):
            self.t = t
            self.conn.start_sync()
            t.writelines(self.conn.data_to_send())
        def data_received(self, data):
            self.conn.receive_data(data)
            for ev in self.conn.events():
                if isinstance(ev, NotificationReceived):
                    Bare.beats += 1
                elif not self.waiter.done():
                    self.waiter.set_result(ev)
            self.t.writelines(self.conn.data_to_send())
        async def call(self, fn):
            self.waiter = asyncio.get_running_loop().create_future()
            fn()
            self.t.writelines(self.conn.data_to_send())
            return await self.waiter

    async def main(base, n):
        loop = asyncio.get_running_loop()
        peers = []
        for i in range(n):
            _, p = await loop.create_unix_connection(Bare, f"{base}/g{i}/c.sock")
            peers.append(p)
        await asyncio.gather(*(p.waiter for p in peers))
        await asyncio.gather(*(p.call(lambda p=p: p.conn.send_hello(
            {"framework": [[1, 0]], "services": {"heartbeat": [[1, 0]]}})) for p in peers))
        hb = encode_json({"service": "heartbeat", "enabled": True,
                          "settings": {"interval_ms": 1000}})
        await asyncio.gather(*(p.call(lambda p=p: p.conn.send_request(
            CONTROL, ControlOp.SET_SERVICE, hb)) for p in peers))
        print("ready", flush=True)
        # stdin is read in a thread: a blocking read here would stop the loop
        # and with it the very message handling being measured
        while await loop.run_in_executor(None, sys.stdin.readline):
            t0 = loop.time()
            body = encode_json({"service": "heartbeat", "enabled": True, "settings": {}})
            await asyncio.gather(*(p.call(lambda p=p: p.conn.send_request(
                CONTROL, ControlOp.SET_SERVICE, body)) for p in peers))
            print(f"{loop.time() - t0:.4f}", flush=True)

    try:  # the same event loop the host manager runs on, for a fair ratio
        import uvloop
        uvloop.run(main(sys.argv[1], int(sys.argv[2])))
    except ImportError:
        asyncio.run(main(sys.argv[1], int(sys.argv[2])))
""")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (clock ticks; schedstat is often disabled)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def measure_cpu(pid: int, seconds: float) -> float:
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def wait_line(proc: subprocess.Popen[str], what: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line or time.monotonic() > deadline:
        raise SystemExit(f"{what} failed to start")
    return line.strip()


def py_spy() -> str:
    """py-spy from this Python's environment or PATH (``pip install py-spy``)."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        sys.exit("--profile needs py-spy: pip install py-spy")
    return found


def start_farms(base: Path, n: int, farms: int) -> list[subprocess.Popen[str]]:
    """N guest agents in *farms* processes (their roots in *base*), once all are ready."""
    share = -(-n // farms)
    started = [subprocess.Popen([sys.executable, "-c", FARM, str(base), str(first),
                                 str(min(share, n - first))], stdout=subprocess.PIPE, text=True)
               for first in range(0, n, share)]
    try:
        for farm in started:
            wait_line(farm, "guest farm")
    except BaseException:
        for farm in started:
            farm.kill()
            farm.wait()
        raise
    return started


@contextmanager
def farmed_guests(n: int, farms: int) -> Iterator[tuple[Path, int]]:
    """A temporary directory with N guest agents in *farms* processes: (it, how many
    processes); the farms stopped and the directory removed after."""
    with tempfile.TemporaryDirectory(prefix="vmis-bench-", dir="/tmp") as tmp:
        base = Path(tmp)
        started = start_farms(base, n, farms)
        try:
            yield base, len(started)
        finally:
            for farm in started:
                farm.kill()
                farm.wait()


@contextmanager
def running_manager(base: Path, n: int,
                    *args: str) -> Iterator[tuple[subprocess.Popen[bytes], httpx.Client]]:
    """:func:`start_manager`, stopped (SIGTERM) after."""
    host, client = start_manager(base, n, *args)
    try:
        yield host, client
    finally:
        host.send_signal(signal.SIGTERM)
        host.wait(30)


def scale_arguments(parser: argparse.ArgumentParser) -> None:
    """The scale benches' own parameters: -n, --farms, --settle."""
    parser.add_argument("-n", type=int, default=1024, help="number of lab guests")
    parser.add_argument("--farms", type=int, default=2,
                        help="processes the guest agents are spread over")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds to wait after all VMs beat (connection set-up, the "
                             "first time sync bursts)")


def start_manager(base: Path, n: int, *args: str) -> tuple[subprocess.Popen[bytes], httpx.Client]:
    """A host manager (``vmis host serve``, with *args*) with the N guests of *base*
    registered, each beating every second; returns its process and an API client."""
    sock = base / "host.sock"
    env = dict(os.environ, VMIS_SOCKET=str(sock))
    with open(base / "host.log", "w") as log:  # the child keeps its own copy
        host = subprocess.Popen(
            [sys.executable, "-m", "vmis.cli.host", "host", "serve", "-Db",
             f"sqlite:///{base}/host.db", "-Socket", str(sock), "-LogLevel", "warning", *args],
            env=env, stderr=log)
    try:
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                              base_url="http://vmis", timeout=120)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.get("/v1/ping")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit("host manager did not start") from None
                time.sleep(0.1)
        t0 = time.monotonic()
        for i in range(n):
            client.post("/v1/vms", json={"name": f"vm{i:04d}",
                                         "channel": f"unix:{base}/g{i}/c.sock",
                                         "heartbeat_interval_ms": 1000}).raise_for_status()
        while True:
            vms = client.get("/v1/vms").json()
            ok = sum(v["Heartbeat"] == "Ok" for v in vms)
            if ok == n:
                break
            if time.monotonic() - t0 > 300:
                raise SystemExit(f"only {ok}/{n} VMs reached heartbeat OK")
            time.sleep(0.5)
    except BaseException:
        host.kill()
        host.wait()
        raise
    print(f"  {n} VMs registered and beating after {time.monotonic() - t0:.1f} s")
    return host, client


def vmis_run(base: Path, n: int, seconds: float, service: str, *, settle: float,
             profile: str | None = None) -> tuple[float, float]:
    host, client = start_manager(base, n)
    try:
        time.sleep(settle)  # the steady state: connection set-up done, time sync backed off
        spy = None
        if profile:
            # --gil: only samples that hold the GIL, i.e. work (an idle loop
            # waiting in epoll, or an idle worker thread, would else count)
            spy = subprocess.Popen([py_spy(), "record", "-r", "200", "-d", str(int(seconds)),
                                    "-f", "raw", "--gil", "--native",
                                    "-o", profile, "-p", str(host.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu = measure_cpu(host.pid, seconds)
        if spy is not None:
            spy.wait(60)
        states = client.get("/v1/timesync", params={"vm": ["*"]})
        if states.is_success:
            counts: dict[str, int] = {}
            rate = 0.0
            for row in states.json():
                counts[str(row.get("State"))] = counts.get(str(row.get("State")), 0) + 1
                rate += 1000 / row["NextWaitMs"] if row.get("NextWaitMs") else 0
            print(f"  time sync states: {counts}, {rate:.1f} bursts/s")
        t0 = time.monotonic()
        result = client.post("/v1/services/enable", json={"vms": ["*"], "names": [service]})
        result.raise_for_status()
        enable = time.monotonic() - t0
        applied = sum(r["Applied"] for r in result.json())
        if applied != n:
            raise SystemExit(f"enable applied to {applied}/{n} VMs")
        client.post("/v1/services/disable", json={"vms": ["*"], "names": [service]})
        return cpu, enable
    finally:
        host.send_signal(signal.SIGTERM)
        host.wait(30)


def bare_run(base: Path, n: int, seconds: float) -> tuple[float, float]:
    bare = subprocess.Popen([sys.executable, "-c", BARE_HOST, str(base), str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        wait_line(bare, "bare host")
        time.sleep(2)
        cpu = measure_cpu(bare.pid, seconds)
        assert bare.stdin is not None
        bare.stdin.write("go\n")
        bare.stdin.flush()
        enable = float(wait_line(bare, "bare enable"))
        return cpu, enable
    finally:
        bare.kill()
        bare.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1024, help="number of lab guests")
    parser.add_argument("--seconds", type=float, default=10.0, help="CPU sampling window")
    parser.add_argument("--settle", type=float, default=90.0,
                        help="seconds to wait after all VMs beat before measuring (time sync "
                             "doubles its wait while a clock stays in step, up to 320 s: at "
                             "90 s the guests are in step and polled every 80 s, after 10 "
                             "minutes every 320 s)")
    parser.add_argument("--profile", metavar="FILE",
                        help="also record the manager with py-spy (raw stacks) into FILE")
    parser.add_argument("--farms", type=int, default=2,
                        help="processes the guest agents are spread over")
    parser.add_argument("--service", default="Guest Service Interface",
                        help="the service to enable on all VMs (disabled by default)")
    args = parser.parse_args()
    if args.n < 1 or args.farms < 1:
        parser.error("-n and --farms must be at least 1")
    with farmed_guests(args.n, args.farms) as (base, farms):
        if args.profile:
            py_spy()  # fail now, not after the baseline
        print(f"heartbeat scale, N={args.n} guests in {farms} processes, "
              f"1 s heartbeats, {args.seconds:g} s CPU window")
        base_cpu, base_enable = bare_run(base, args.n, args.seconds)
        cpu, enable = vmis_run(base, args.n, args.seconds, args.service,
                               settle=args.settle, profile=args.profile)
    print(f"{'':28}{'vmis host manager':>20}{'bare protocol host':>20}{'ratio':>8}")
    ratio = f"{cpu / base_cpu:>8.2f}" if base_cpu else f"{'-':>8}"
    print(f"{'host CPU, % of one core':28}{cpu:>19.2f}%{base_cpu:>19.2f}%{ratio}")
    print(f"{'enable on all N, seconds':28}{enable:>20.3f}{base_enable:>20.3f}"
          f"{enable / base_enable if base_enable else float('inf'):>8.2f}")
    print(f"targets: CPU < 5 % ({'met' if cpu < 5 else 'MISSED'}), "
          f"enable-all < 2 s ({'met' if enable < 2 else 'MISSED'})")


if __name__ == "__main__":
    main()
