"""The channel cut at random points of a session, again and again, under load.

A host manager and a guest agent (the in-process pair: real channel, codec
and services) talk through a proxy that forwards bytes both ways and cuts
the connection after a number of bytes drawn from a seeded generator: in the
handshake, inside a frame header, in the middle of a 4 MiB data frame. The
manager dials again each time. Meanwhile the host writes KVP items, copies
files both ways, takes checkpoints and turns a service on and off. Once
the cuts stop:

- every KVP write is delivered exactly once: the pool file holds each key
  once, with its last value, and nothing is pending;
- every copy that reported success left the whole file, every one that
  failed left nothing at the destination, and running it again completes it;
- the guest is not frozen, and no checkpoint is left Running;
- the guest runs exactly the services the host wants, within seconds of the
  last reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import time
from pathlib import Path

import pytest
from support.pair import eventually, host_guest_pair

from vmis.errors import VmisError
from vmis.services.fcopy.host import FcopyHost
from vmis.services.kvp.host import KvpHost
from vmis.services.kvp.pool import KvpPool, Pool
from vmis.services.vss.host import VssHost

pytestmark = pytest.mark.slow

SEED = 16
CUTS = 20
MIB = 1 << 20


class CuttingProxy:
    """Forwards a Unix socket both ways; each connection dies after a drawn byte count."""

    def __init__(self, path: Path, target: Path, rng: random.Random) -> None:
        self.path, self.target, self.rng = path, target, rng
        self.cutting = True
        #: the byte budget left of each live connection (a cell each, shared with its pumps)
        self._budgets: list[list[float]] = []
        self.cuts: list[int] = []
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._connection, str(self.path))

    def stop_cutting(self) -> None:
        """From now on, forward everything (the live connection too)."""
        self.cutting = False
        for budget in self._budgets:
            budget[0] = float("inf")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def _budget(self) -> float:
        if not self.cutting:
            return float("inf")
        # mostly within the first frames, sometimes deep in a bulk transfer
        roll = self.rng.random()
        if roll < 0.3:
            return self.rng.randrange(0, 200)  # SYNC, HELLO
        if roll < 0.6:
            return self.rng.randrange(200, 20_000)
        return self.rng.randrange(20_000, 12 * MIB)

    async def _connection(self, host_r: asyncio.StreamReader,
                          host_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            guest_r, guest_w = await asyncio.open_unix_connection(str(self.target))
        except OSError:
            host_w.close()
            return
        budget = [self._budget()]
        self._budgets.append(budget)
        writers = (host_w, guest_w)

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(256 * 1024):
                if len(data) >= budget[0]:
                    writer.write(data[: int(budget[0])])
                    self.cuts.append(int(budget[0]))
                    for w in writers:
                        w.transport.abort()
                    return
                budget[0] -= len(data)
                writer.write(data)
                await writer.drain()
            writer.close()

        with contextlib.suppress(OSError, asyncio.CancelledError):
            await asyncio.gather(pump(host_r, guest_w), pump(guest_r, host_w))
        for w in writers:
            w.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_channel_cut_at_random_points_loses_nothing(short_tmp):
    rng = random.Random(SEED)
    async with host_guest_pair(short_tmp) as pair:
        manager, root = pair.manager, pair.root
        proxy = CuttingProxy(short_tmp / "proxy.sock",
                             root / "run/vmis/channel.sock", random.Random(SEED + 1))
        await proxy.start()
        manager.update_vm("DemoVM", channel=f"unix:{proxy.path}")
        await manager.set_enabled(["DemoVM"], ["Guest Service Interface"], True)
        kvp, fcopy, vss = (manager.service(KvpHost), manager.service(FcopyHost),
                           manager.service(VssHost))
        sources = []
        for i in range(3):
            src = short_tmp / f"src{i}.bin"
            src.write_bytes(os.urandom((2 + 3 * i) * MIB))
            sources.append(src)
        (root / "srv/out.bin").parent.mkdir(parents=True, exist_ok=True)
        (root / "srv/out.bin").write_bytes(os.urandom(5 * MIB))
        expected: dict[str, str] = {}
        copies: list[tuple[str, str, str, Path]] = []  # (source, destination, from, target)
        outcomes: list[tuple[Path, str, bool]] = []
        errors: list[str] = []

        async def write(key: str, value: str) -> None:
            expected[key] = value
            with contextlib.suppress(VmisError):
                await kvp.set(["DemoVM"], key, value)

        async def copy(source: str, destination: str, file_source: str, target: Path,
                       digest: str) -> None:
            try:
                await fcopy.copy_vm_file("DemoVM", source, destination, file_source,
                                         force=True)
                outcomes.append((target, digest, True))
            except VmisError as exc:
                errors.append(str(exc))
                outcomes.append((target, digest, False))

        async def checkpoint(n: int) -> None:
            with contextlib.suppress(VmisError):
                await vss.checkpoint("DemoVM", name=f"cp{n}", command="sleep 0.3")

        async def toggle(on: bool) -> None:
            with contextlib.suppress(VmisError):
                await manager.set_enabled(["DemoVM"], ["Time Synchronization"], on)

        n = 0
        deadline = time.monotonic() + 120
        while len(proxy.cuts) < CUTS and time.monotonic() < deadline:
            # each round starts on a live session, so the cuts fall inside the work
            assert await pair.session.wait_connected(15), "no session after a cut"
            n += 1
            work = [write(f"k{rng.randrange(12)}", f"v{n}.{i}") for i in range(3)]
            pick = rng.randrange(4)
            if pick == 0:
                src = sources[rng.randrange(3)]
                target = root / "srv" / src.name
                copies.append((str(src), "/srv/", "Host", target))
                work.append(copy(str(src), "/srv/", "Host", target, _digest(src)))
            elif pick == 1:
                target = short_tmp / f"out{n}.bin"
                copies.append(("/srv/out.bin", str(target), "Guest", target))
                work.append(copy("/srv/out.bin", str(target), "Guest", target,
                                 _digest(root / "srv/out.bin")))
            elif pick == 2:
                work.append(checkpoint(n))
            else:
                work.append(toggle(rng.random() < 0.5))
            await asyncio.wait_for(asyncio.gather(*work), 60)
        assert len(proxy.cuts) >= CUTS, f"only {len(proxy.cuts)} cuts in 120 s"

        # The cuts stop; the session comes back.
        proxy.stop_cutting()
        pair.session.reconnect_now()
        back = time.monotonic()
        assert await pair.session.wait_connected(15)
        wanted = {key for key, on in pair.session.vm.enabled.items() if on}

        def in_step() -> bool:
            running = {k for k, s in pair.agent.manager.services.items() if s.running}
            return running & set(pair.session.vm.enabled) == wanted
        await eventually(in_step, timeout=10)
        print(f"{len(proxy.cuts)} cuts at {sorted(proxy.cuts)} bytes, {proxy.connections} "
              f"connections, {n} rounds; services in step {time.monotonic() - back:.2f} s "
              "after the last reconnect")

        # KVP: each key once, its last value, nothing pending.
        def delivered() -> bool:
            rows = kvp.rows(["DemoVM"], "External")
            return all(r["Pending"] is None for r in rows) and \
                {r["Key"]: r["Value"] for r in rows} == expected
        await eventually(delivered, timeout=20)
        pool = KvpPool(root / "var/lib/hyperv", Pool.EXTERNAL).items()
        assert sorted(k for k, _ in pool) == sorted(expected) and dict(pool) == expected

        # Copies: whole or absent at the destination's name, whatever was cut.
        for target, digest, ok in outcomes:
            if ok:
                assert _digest(target) == digest, f"{target} reported copied but differs"
            elif target.exists():
                assert _digest(target) == digest, f"{target}: part of a file"
        # Each one again completes (resuming an interrupted run's partial file).
        for source, destination, file_source, target in dict.fromkeys(copies):
            await fcopy.copy_vm_file("DemoVM", source, destination, file_source, force=True)
            original = Path(source) if file_source == "Host" else root / "srv/out.bin"
            assert _digest(target) == _digest(original)
        leftovers = [p for d in (root / "srv", short_tmp) for p in d.glob(".*.vmis-*")]
        assert leftovers == [], "partial files left after every copy completed"

        # VSS: thawed, no checkpoint left running.
        await eventually(lambda: not pair.agent.ctx.frozen, timeout=10)
        history = vss.history(["DemoVM"])
        assert all(c["Status"] != "Running" for c in history), history
        print(f"{len(outcomes)} copies ({sum(ok for _, _, ok in outcomes)} completed under "
              f"cuts), {len(history)} checkpoints "
              f"({sum(c['Status'] == 'Completed' for c in history)} completed), "
              f"{len(expected)} KVP keys")
        print("copies failed with:", "; ".join(sorted(set(errors))))
        await proxy.close()
