"""The guest-link seam: a guest kind with no vmis protocol at all runs the host halves unchanged.

:class:`FakeKind` opens :class:`FakeLink` s that implement
vmis.services.link.GuestLink in memory: no channel, no frames, no HELLO. A
host manager given that kind runs the real Heartbeat and KVP host halves
against it: beats give Heartbeat OK and their end Lost Communication; a
Set-VMKvp reaches the fake guest as the KVP service's own SET request, and
the fake guest's pool push shows in Get-VMKvp.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from support.pair import eventually

from vmis.errors import ChannelClosed, RemoteServiceError
from vmis.host.manager import HostManager
from vmis.host.store import Store
from vmis.protocol import decode_json, encode_json
from vmis.services.catalog import by_key
from vmis.services.heartbeat import HeartbeatOp, encode_beat
from vmis.services.host_half import VmRecord
from vmis.services.kvp import KvpOp
from vmis.services.kvp.pool import Pool
from vmis.services.link import LinkEvents, LinkHello, ServiceOffer
from vmis.services.status import OperationalStatus

HB, KVP = by_key("heartbeat"), by_key("kvp")


class FakeLink:
    """A guest that runs Heartbeat and KVP, in memory."""

    kind = "fake"
    max_payload = peer_max_payload = 1 << 20

    def __init__(self, events: LinkEvents) -> None:
        self.events = events
        self.hello = LinkHello({"version": "fake 1.0", "kind": "fake"}, {
            key: ServiceOffer((1, 0), "running", "automatic") for key in ("heartbeat", "kvp")})
        self.requests: list[tuple[int, int, Any]] = []
        self.external: dict[str, str] = {}
        self.started: list[tuple[str, bool, Mapping[str, Any]]] = []
        self.beating = True
        self._closed = asyncio.Event()
        self._beats = asyncio.ensure_future(self._beat())

    async def _beat(self) -> None:
        seq = 0
        while True:
            if self.beating:
                seq += 1
                self.events.handlers[(HB.id, HeartbeatOp.BEAT)](encode_beat(seq, "ok"))
            await asyncio.sleep(0.05)

    def push_pool(self, pool: int, items: list[tuple[str, str]]) -> None:
        self.events.handlers[(KVP.id, KvpOp.POOL)](encode_json(
            {"pool": pool, "items": [list(i) for i in items], "part": 0, "last": True}))

    @property
    def running(self) -> bool:
        return not self._closed.is_set()

    @property
    def lost_reason(self) -> str:
        return "the fake guest went away" if self._closed.is_set() else ""

    async def request(self, service: int, op: int, payload: Any = b"",
                      timeout: float | None = 30.0, into: Any = None) -> bytes:
        if not self.running:
            raise ChannelClosed("closed")
        body = decode_json(payload)
        self.requests.append((service, op, body))
        if (service, op) == (KVP.id, KvpOp.SET):
            if body["pool"] == Pool.EXTERNAL:  # the host's writes
                self.external.update(dict(body["items"]))
            return encode_json({})
        raise RemoteServiceError("unknown-op", f"the fake guest has no op {service}/{op}")

    def notify(self, service: int, op: int, payload: Any = b"") -> None:
        self.requests.append((service, op, None))

    async def set_service(self, key: str, enabled: bool, settings: Mapping[str, Any],
                          timeout: float) -> dict[str, Any]:
        self.started.append((key, enabled, settings))
        offer = self.hello.services[key]
        offer.state = "running" if enabled else "stopped"
        return {"state": offer.state, "startup": offer.startup}

    async def ping(self, timeout: float) -> None:
        if not self.running:
            raise ChannelClosed("closed")

    async def install_agent(self, bundle: str, sha256: str, version: str,
                            timeout: float) -> dict[str, Any]:
        raise RemoteServiceError("unknown-op", "a fake guest is not updated")

    def close(self) -> None:
        self._beats.cancel()
        if not self._closed.is_set():
            self._closed.set()
            self.events.lost(self.lost_reason)

    async def wait_closed(self) -> None:
        await self._closed.wait()


class FakeKind:
    name = "fake"

    def __init__(self) -> None:
        self.links: list[FakeLink] = []

    async def open(self, vm: VmRecord, events: LinkEvents) -> FakeLink:
        link = FakeLink(events)
        self.links.append(link)
        return link


async def test_heartbeat_and_kvp_host_halves_run_over_a_fake_link(tmp_path):
    kind = FakeKind()
    manager = HostManager(Store(f"sqlite:///{tmp_path / 'host.db'}"), guest_kinds={"fake": kind})
    await manager.start()
    try:
        manager.add_vm("FakeVM", "unix:/nonexistent", guest_agent="fake",
                       heartbeat_interval_ms=200)
        session = manager.session("FakeVM")
        assert await session.wait_connected(5)
        link = kind.links[-1]
        # the desired state went out through the link, with Heartbeat's settings
        await eventually(lambda: ("heartbeat", True, {"interval_ms": 200}) in link.started)
        row = await eventually(lambda: (r := session.status(HB)).primary is OperationalStatus.OK
                               and r)
        assert row.secondary is OperationalStatus.OK
        assert session.status(KVP).primary is OperationalStatus.OK

        # KVP: the host facts, then a host write, as the service's own requests
        from vmis.services.kvp.host import KvpHost

        kvp = manager.service(KvpHost)
        result = await kvp.set(["FakeVM"], "role", "db")
        assert result[0]["Delivered"] and link.external == {"role": "db"}
        sets = [body for service, op, body in link.requests if (service, op) == (KVP.id, 1)]
        assert sets[0]["pool"] == Pool.AUTO_EXTERNAL and ["VirtualMachineName", "FakeVM"] in sets[0]["items"]
        link.push_pool(Pool.GUEST, [("ready", "yes")])
        rows = await eventually(lambda: [r for r in kvp.rows(["FakeVM"], "Guest")])
        assert [(r["Key"], r["Value"]) for r in rows] == [("ready", "yes")]

        # the beats stop: Lost Communication for every service, Heartbeat first
        link.beating = False
        await eventually(lambda: session.status(HB).primary
                         is OperationalStatus.LOST_COMMUNICATION, timeout=5)
        assert session.status(KVP).primary is OperationalStatus.LOST_COMMUNICATION
        # ... and the manager's sweep PINGs the link, which still answers
        link.beating = True
        await eventually(lambda: session.status(HB).primary is OperationalStatus.OK, timeout=5)

        # the link ends: a new one is opened, and the host facts go out again on it
        link.close()
        await eventually(lambda: len(kind.links) == 2 and session.connected, timeout=10)
        await eventually(lambda: any(op == KvpOp.SET for _, op, _ in kind.links[-1].requests))
    finally:
        await manager.close()
        for link in kind.links:
            link.close()
