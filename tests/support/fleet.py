"""Host managers of a fleet in this process (each a real HostManager with its own
LISTEN connection, sharing the test's event loop) and guest agents for their VMs:
tests/fleet/test_fleet_store.py, tests/policy/, bench/fleet_scale.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from support.pair import _start_agent

from vmis.host.manager import HostManager
from vmis.host.store import Store


@asynccontextmanager
async def host(url: str, name: str) -> AsyncIterator[HostManager]:
    manager = HostManager(Store(url), host_name=name)
    await manager.start()
    try:
        yield manager
    finally:
        await manager.close()


@asynccontextmanager
async def guest(root: Path) -> AsyncIterator[str]:
    """A guest agent on *root*; its channel address."""
    agent, task = await _start_agent(root)
    try:
        yield f"unix:{root / 'run/vmis/channel.sock'}"
    finally:
        agent.shutdown()
        await asyncio.wait_for(task, 10)
