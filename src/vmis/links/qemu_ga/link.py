"""The qemu-ga link: the GuestLink of a guest that runs qemu-ga (docs/guest-links.md).

:class:`QemuGaLink` answers the host halves as a vmis guest would: each
service's requests go to its translation (vmis.links.qemu_ga.<service>),
the guest notifications the host halves expect are made by those
translations, and the control operations map onto qemu-ga:

- ``set_service``: qemu-ga runs no services to start or stop; the host's
  Enable/Disable is kept by the link (a disabled service is never used: its
  requests are refused by the session, its pings and pool reads stop), and a
  service whose commands qemu-ga blocks cannot be started (``service-disabled``
  with the reason, rule 6);
- ``ping``: guest-ping;
- ``install_agent``: refused; qemu-ga is the guest's package.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from typing import Any

from vmis.errors import RemoteServiceError, RequestTimeout
from vmis.links.qemu_ga.connection import QgaConnection
from vmis.links.qemu_ga.fcopy import READ_CHUNK, WRITE_CHUNK, FcopyTranslator
from vmis.links.qemu_ga.heartbeat import HeartbeatTranslator, busy_with
from vmis.links.qemu_ga.kvp import KvpTranslator
from vmis.links.qemu_ga.offers import AgentInfo, offers
from vmis.links.qemu_ga.shutdown import ShutdownTranslator
from vmis.links.qemu_ga.timesync import TimeSyncTranslator
from vmis.links.qemu_ga.translator import Translator
from vmis.links.qemu_ga.vmsession import VmSessionTranslator
from vmis.links.qemu_ga.vss import VssTranslator
from vmis.protocol import Payload, Received
from vmis.services.catalog import CATALOG
from vmis.services.fcopy import HEAD_ROOM
from vmis.services.link import LinkEvents, LinkHello, NotificationHandler

__all__ = ["QemuGaLink"]

#: what the host's copy engine adds to a chunk of file data in one request
_FRAME = HEAD_ROOM


class QemuGaLink:
    """One open connection to a guest's qemu-ga (a :class:`~vmis.services.link.GuestLink`).

    :param name: the VM's name.
    :param events: the VM's session.
    :param conn: the synced connection.
    :param agent: guest-info's (and guest-get-osinfo's) answer.
    :param facts: the agent facts the session shows (version, boot id...).
    :param handles: qemu-ga file handles open for this VM, kept across links.
    """

    kind = "qemu-ga"

    def __init__(self, name: str, events: LinkEvents, conn: QgaConnection, agent: AgentInfo,
                 *, facts: dict[str, Any], handles: set[int], log: logging.Logger) -> None:
        self.name = name
        self.events = events
        self.conn = conn
        self.agent = agent
        self.log = log
        self.handles = handles
        #: True while the guest's filesystems are frozen by this link
        self.frozen = False
        services, absent = offers(agent)
        self.hello = LinkHello(facts, services, absent)
        # Read once: the host halves' handlers of guest notifications.
        self._handlers: Mapping[tuple[int, int], NotificationHandler] = events.handlers
        self._tasks: set[asyncio.Task[Any]] = set()
        translators: list[Translator] = [
            HeartbeatTranslator(self, facts), KvpTranslator(self), ShutdownTranslator(self),
            TimeSyncTranslator(self), VssTranslator(self), FcopyTranslator(self),
            VmSessionTranslator(self)]
        self._translators = {t.spec.id: t for t in translators}
        conn.on_lost = self._lost

    # Section: GuestLink

    @property
    def max_payload(self) -> int:
        # The host's copy engine asks for READ_CHUNK bytes per READ.
        return READ_CHUNK + _FRAME

    @property
    def peer_max_payload(self) -> int:
        # ... and sends WRITE_CHUNK bytes per WRITE.
        return WRITE_CHUNK + _FRAME

    @property
    def running(self) -> bool:
        return self.conn.running

    @property
    def lost_reason(self) -> str:
        return self.conn.lost_reason

    async def request(self, service: int, op: int, payload: Payload = b"",
                      timeout: float | None = 30.0, into: memoryview | None = None) -> Received:
        # qemu-ga's answers are JSON with base64: there is no raw payload to place
        translator = self._translators.get(service)
        if translator is None:
            raise RemoteServiceError("unknown-service", f"no service {service} over qemu-ga")
        return await translator.request(op, payload, timeout)

    def notify(self, service: int, op: int, payload: Payload = b"") -> None:
        translator = self._translators.get(service)
        if translator is not None and self.conn.running:
            translator.notify(op, payload)

    async def set_service(self, key: str, enabled: bool, settings: Mapping[str, Any],
                          timeout: float) -> dict[str, Any]:
        offer = self.hello.services.get(key)
        if offer is None:
            raise RemoteServiceError("unknown-service", self.hello.absent.get(
                key, f"{self.agent.label} has no {key}"))
        if offer.startup == "disabled":
            if enabled:
                raise RemoteServiceError("service-disabled", offer.limit)
            return {"state": offer.state, "startup": offer.startup}
        offer.state = "running" if enabled else "stopped"
        self._translators[CATALOG.by_key(key).id].set_enabled(enabled, settings)
        return {"state": offer.state, "startup": offer.startup}

    async def ping(self, timeout: float) -> None:
        try:
            await self.conn.call("guest-ping", timeout=timeout)
        except RequestTimeout:
            if busy_with(self, timeout) is None:
                raise
            # qemu-ga answers what was asked before the ping: alive, if busy (see heartbeat).

    async def install_agent(self, bundle: str, sha256: str, version: str,
                            timeout: float) -> dict[str, Any]:
        raise RemoteServiceError(
            "unknown-op", f"{self.name} runs {self.agent.label}, which vmis does not update; "
                          "update the guest's qemu-guest-agent package, or install the vmis "
                          "agent (Insert-SetupDisk) and register the VM with -GuestAgent vmis")

    def close(self) -> None:
        self.conn.close()

    async def wait_closed(self) -> None:
        await self.conn.wait_closed()

    # Section: what the translations use (translator.LinkContext)

    async def call(self, command: str, arguments: Mapping[str, Any] | None = None,
                   timeout: float | None = None) -> Any:
        try:
            return await self.conn.call(command, arguments, timeout)
        except RemoteServiceError as exc:
            if self.frozen and "has been disabled" in str(exc):
                raise RemoteServiceError(
                    "busy", f"the guest is frozen for a backup: qemu-ga answers no {command} "
                            "until the thaw") from None
            raise

    def to_host(self, service: int, op: int, payload: bytes) -> None:
        handler = self._handlers.get((service, op))
        if handler is not None:
            handler(payload)

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.name}: {name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("%s failed: %s", task.get_name(), task.exception(),
                           exc_info=task.exception())

    def _lost(self, reason: str) -> None:
        for translator in self._translators.values():
            translator.close()
        for task in list(self._tasks):
            task.cancel()
        self.events.lost(reason)
