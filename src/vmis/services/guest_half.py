"""The contract every guest service half follows, and what the agent gives it.

A guest service is a class with a :class:`~vmis.services.catalog.ServiceSpec`,
``start``/``stop`` coroutines, and a table of request handlers keyed by op
code. The agent owns the lifecycle (start types, the host/guest rules) and
the dispatch; a service only does its own work. Every request gets an answer
(docs/protocol.md §5.2): a handler returns the payload, or raises
:class:`~vmis.errors.ServiceError` with a code of docs/protocol.md §5.1; anything else it
raises is answered as ``failed`` and logged with its traceback.

Real effects (clock, power, filesystem freeze) go through the adapters in
:class:`GuestContext`, so the lab runs the same service code with fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from vmis.protocol import RequestReceived
from vmis.services.catalog import ServiceSpec

__all__ = [
    "ControlOp",
    "GuestContext",
    "GuestService",
    "Handler",
    "Notifier",
]


class Notifier(Protocol):
    """Sends notifications to the host if a session is running, else drops them."""

    def __call__(self, service: int, op: int, payload: bytes) -> None: ...


@dataclass
class GuestContext:
    """Everything a guest service may use; built once by the agent."""

    #: all guest paths resolve inside this directory (``/`` in a real guest)
    root: Path
    #: the agent's settings (vmis.guest.config.AgentConfig)
    config: Any
    #: send a notification to the host
    notify: Notifier
    #: real-effect adapters by name ("clock", "power", "freezer", ...), real or fake
    adapters: Mapping[str, Any] = field(default_factory=dict)
    #: called with True when the guest's filesystems are frozen, False after the thaw
    freeze_listeners: list[Callable[[bool], None]] = field(default_factory=list)
    _frozen: bool = False

    @property
    def frozen(self) -> bool:
        """True while filesystems are frozen: nothing may write to disk."""
        return self._frozen

    def set_frozen(self, frozen: bool) -> None:
        """Record a freeze or thaw and tell every listener (VSS calls this)."""
        if frozen != self._frozen:
            self._frozen = frozen
            for listener in self.freeze_listeners:
                listener(frozen)

    def path(self, guest_path: str | Path) -> Path:
        """Map an absolute guest path into :attr:`root`."""
        p = Path(guest_path)
        return self.root / p.relative_to("/") if p.is_absolute() else self.root / p


Handler = Callable[[RequestReceived], Awaitable[bytes]]
#: a guest-tool operation: json request object in, json-able answer out
ControlOp = Callable[[dict[str, Any]], Awaitable[Any]]


class GuestService:
    """Base class of guest service halves.

    Subclasses set :attr:`spec`, fill :attr:`handlers` in ``__init__`` and
    override :meth:`on_start`, :meth:`on_stop`, :meth:`configure` as needed.
    Background work is started with :meth:`spawn`; :meth:`stop` cancels it.
    """

    spec: ClassVar[ServiceSpec]

    def __init__(self, ctx: GuestContext) -> None:
        self.ctx = ctx
        self.log = logging.getLogger(f"vmis.guest.{self.spec.key}")
        #: op code -> request handler
        self.handlers: dict[int, Handler] = {}
        #: op code -> notification handler (payload in, nothing out)
        self.notification_handlers: dict[int, Callable[[bytes], None]] = {}
        #: operations offered to the guest tools on the control socket, by name
        self.control_ops: dict[str, ControlOp] = {}
        #: host settings from the last SET_SERVICE
        self.settings: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = False

    @property
    def running(self) -> bool:
        """True between a successful start and the next stop."""
        return self._running

    async def start(self) -> None:
        """Start the service (idempotent)."""
        if self._running:
            return
        await self.on_start()
        self._running = True

    async def stop(self) -> None:
        """Stop the service and cancel its background tasks (idempotent)."""
        if not self._running:
            return
        self._running = False
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.on_stop()

    def spawn(self, coro: Awaitable[Any], name: str = "") -> asyncio.Task[Any]:
        """Run background work that :meth:`stop` cancels; failures are logged."""
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(f"{self.spec.key}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def configure(self, settings: Mapping[str, Any]) -> None:
        """Apply host settings sent with SET_SERVICE (default: keep them)."""
        self.settings = dict(settings)

    def recover(self) -> None:
        """Undo what an agent that died left behind (VSS: filesystems it left frozen).

        Called once when the agent starts, before any service starts, whether
        or not this one will run.
        """

    def on_session(self, running: bool) -> None:
        """A host session started (True) or ended (False)."""

    async def on_start(self) -> None:
        """Service-specific start work."""

    async def on_stop(self) -> None:
        """Service-specific stop work."""
