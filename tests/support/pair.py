"""An in-process host manager and guest agent joined by a real Unix socket.

Both run in the test's event loop, so a test can reach into either side
(the agent's services, the session's state) while everything between them
goes through the real channel, codec and service code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from vmis.api.access import on_unix_socket
from vmis.api.app import create_app
from vmis.guest.adapters import make_adapters
from vmis.guest.agent import Agent
from vmis.guest.config import AgentConfig
from vmis.guest.services import available_services
from vmis.host.manager import HostManager
from vmis.host.session import VmSession
from vmis.host.store import Store
from vmis.services.guest_half import GuestService


@dataclass
class Pair:
    manager: HostManager
    agent: Agent
    session: VmSession
    root: Path
    api: httpx.AsyncClient

    async def restart_agent(self, **kwargs: Any) -> None:
        """Stop the agent and start a new one on the same root (a guest restart)."""
        await self._stop_agent()
        self.agent, self._agent_task = await _start_agent(self.root, **kwargs)

    async def _stop_agent(self) -> None:
        self.agent.shutdown()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._agent_task, 10)

    _agent_task: asyncio.Task[None] = None  # type: ignore[assignment]


async def _start_agent(
    root: Path,
    services: Sequence[type[GuestService]] | None = None,
    adapters: Mapping[str, Any] | None = None,
    versions: Mapping[str, Any] | None = None,
    config: AgentConfig | None = None,
) -> tuple[Agent, asyncio.Task[None]]:
    config = config or AgentConfig(channel="unix:/run/vmis/channel.sock", adapters="fake",
                                   health_interval=0.2, health_timeout=5)
    agent = Agent(config, root, services if services is not None else available_services(),
                  adapters if adapters is not None else make_adapters("fake", root), versions)
    ready = asyncio.Event()
    task = asyncio.create_task(agent.run(ready=ready.set))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()
    return agent, task


@contextlib.asynccontextmanager
async def host_guest_pair(
    tmp_path: Path,
    *,
    services: Sequence[type[GuestService]] | None = None,
    adapters: Mapping[str, Any] | None = None,
    versions: Mapping[str, Any] | None = None,
    config: AgentConfig | None = None,
    heartbeat_interval_ms: int = 200,
    wait: bool = True,
    db_url: str | None = None,
) -> AsyncIterator[Pair]:
    """A connected host manager and guest agent; the VM is called DemoVM.

    :param db_url: the manager's store (default: SQLite in *tmp_path*).
    """
    root = tmp_path / "guest"
    root.mkdir(parents=True, exist_ok=True)
    agent, task = await _start_agent(root, services, adapters, versions, config)
    store = Store(db_url or f"sqlite:///{tmp_path / 'host.db'}")
    manager = HostManager(store)
    await manager.start()
    manager.add_vm("DemoVM", f"unix:{root / 'run/vmis/channel.sock'}",
                   heartbeat_interval_ms=heartbeat_interval_ms)
    session = manager.session("DemoVM")
    app = create_app(manager)
    # as the manager's Unix socket serves it: its caller needs no token
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=on_unix_socket(app)),
                            base_url="http://vmis")
    pair = Pair(manager, agent, session, root, api)
    pair._agent_task = task
    try:
        if wait:
            assert await session.wait_connected(15), session.last_error
            await eventually(lambda: session.contact() == "Ok")
        yield pair
    finally:
        await api.aclose()
        await manager.close()
        await pair._stop_agent()


async def eventually(check: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll *check* (sync or async) until it returns something truthy; fail on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {check}")
        await asyncio.sleep(interval)


def quick_config(**changes: Any) -> AgentConfig:
    """A lab-style agent config with fast health checks."""
    base = AgentConfig(channel="unix:/run/vmis/channel.sock", adapters="fake",
                       health_interval=0.2, health_timeout=5)
    return replace(base, **changes)
