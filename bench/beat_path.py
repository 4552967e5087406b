"""Beat path: the host's Python work for one BEAT, from received bytes to the heartbeat monitor.

No sockets and no event loop wakeups (bench/wakeups.py measures those):
a host ``Channel`` with the manager's ``VmSession`` as its handler is handed
one BEAT frame at a time the way asyncio's BufferedProtocol hands bytes over
(``get_buffer``, ``buffer_updated``), through the vmis agent's guest link to
the Heartbeat host half. The baseline, measured in the same
run, is the bare protocol: ``Connection.receive_data`` and ``events()``.
Both connections first run the real handshake (SYNC, HELLO) against an
in-memory guest ``Connection``.

    .venv/bin/python bench/beat_path.py [--beats 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

from vmis.host.session import VmSession
from vmis.links.vmis_agent import VmisAgent, VmisAgentLink
from vmis.protocol import Connection, RequestReceived, Role, ServiceId, State, encode_json
from vmis.services.heartbeat import HeartbeatOp, encode_beat
from vmis.services.heartbeat.host import HeartbeatHost
from vmis.services.host_half import VmRecord
from vmis.transport.channel import Channel


class NullTransport:
    """Takes what the channel writes (nothing, once the handshake is done)."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


class _NoHost:
    """The Heartbeat host half asks nothing of its manager."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


def handshake(host: Connection) -> Connection:
    """Bring *host* to RUNNING against an in-memory guest; return the guest."""
    guest = Connection(Role.GUEST)

    def to_guest() -> None:
        for buf in host.data_to_send():
            guest.receive_data(buf)

    def to_host() -> None:
        for buf in guest.data_to_send():
            host.receive_data(buf)

    host.start_sync()
    to_guest()
    list(guest.events())
    to_host()
    list(host.events())
    host.send_hello({"framework": [[1, 0]], "services": {"heartbeat": [[1, 0]]}})
    to_guest()
    for event in guest.events():
        if isinstance(event, RequestReceived):
            guest.send_response(event, encode_json({"framework": [1, 0], "services": {}}))
    to_host()
    list(host.events())
    if host.state is not State.RUNNING or guest.state is not State.RUNNING:
        raise SystemExit(f"handshake failed: host {host.state}, guest {guest.state}")
    return guest


def beat_bytes(guest: Connection) -> bytes:
    guest.send_notification(ServiceId.HEARTBEAT, HeartbeatOp.BEAT, encode_beat(1, "ok"))
    return b"".join(bytes(b) for b in guest.data_to_send())


async def manager_path(beats: int) -> float:
    vm = VmRecord("bench-id", "bench", "unix:/nonexistent", None, "external", "vmis", 1000, 1000,
                  2, {})
    heartbeat = HeartbeatHost(_NoHost())  # type: ignore[arg-type]
    session = VmSession(vm, [heartbeat], {"vmis": VmisAgent()})
    link = VmisAgentLink(session, logging.getLogger("bench"))
    channel = Channel(Role.HOST, link)
    link.channel = channel
    channel.connection_made(NullTransport())  # type: ignore[arg-type]
    frame = beat_bytes(handshake(channel.conn))
    size = len(frame)
    get_buffer, buffer_updated = channel.get_buffer, channel.buffer_updated
    start = time.perf_counter()
    for _ in range(beats):
        get_buffer(-1)[:size] = frame
        buffer_updated(size)
    elapsed = time.perf_counter() - start
    if session.part(HeartbeatHost).monitor.last_beat is None:
        raise SystemExit("the beats never reached the heartbeat monitor")
    return elapsed / beats


def bare_path(beats: int) -> float:
    host = Connection(Role.HOST)
    frame = beat_bytes(handshake(host))
    seen = 0
    start = time.perf_counter()
    for _ in range(beats):
        host.receive_data(frame)
        for _event in host.events():
            seen += 1
    elapsed = time.perf_counter() - start
    if seen != beats:
        raise SystemExit(f"the bare protocol saw {seen} of {beats} beats")
    return elapsed / beats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beats", type=int, default=200_000)
    args = parser.parse_args()
    manager = asyncio.run(manager_path(args.beats))
    bare = bare_path(args.beats)
    print(f"{args.beats} beats, Python work per beat")
    for name, seconds in (("host manager path", manager), ("bare protocol", bare)):
        print(f"{name:20}{seconds * 1e6:7.2f} us  ({seconds * 1024 * 100:.2f} % of a core "
              f"at 1024 beats/s)")
    print(f"manager / bare: {manager / bare:.2f}")


if __name__ == "__main__":
    main()
