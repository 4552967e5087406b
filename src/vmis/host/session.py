"""One supervised host-guest session per VM.

:class:`VmSession` opens a link to the VM's guest (vmis.services.link),
applies the host's desired service state, and then keeps rules 4-6 of
docs/hyperv.md §2 while the link lasts (:meth:`VmSession._apply_rules`).
When the link fails it opens another with exponential backoff, forever,
until the VM is removed. Each service's host half keeps its state for this
VM in a part the session owns (``session.part(KvpHost)``); the status of
each service is computed from what the session, the link's offer and that
part know, when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from vmis.errors import (
    ChannelError,
    ConfigError,
    ProtocolError,
    RemoteServiceError,
    RequestTimeout,
    ServiceUnavailable,
    VmisError,
)
from vmis.host.events import EventHub
from vmis.host.request_stats import RequestStats, request_stats
from vmis.host.service_status import out_of_date, service_status
from vmis.protocol import Payload, Received
from vmis.services.catalog import CATALOG, ServiceSpec
from vmis.services.host_half import (
    Contact,
    HostService,
    Liveness,
    VmContext,
    VmPart,
    VmRecord,
)
from vmis.services.link import GuestKind, GuestLink, LinkHello, NotificationHandler, ServiceOffer
from vmis.services.status import ServiceStatus

__all__ = ["Backoff", "VmSession"]

P = TypeVar("P", bound=VmPart)

_log = logging.getLogger("vmis.host")

#: seconds the guest agent has to answer a liveness PING (see VmSession.sweep)
PING_TIMEOUT = 5.0
#: seconds the guest has to start or stop a service
SET_SERVICE_TIMEOUT = 15.0
#: how often a VM whose services name no liveness source is looked at
DEFAULT_WATCH_MS = 1000


class Backoff:
    """Exponential reconnect delays with jitter: 0.2 s doubling to 5 s."""

    def __init__(self, first: float = 0.2, limit: float = 5.0) -> None:
        self.first = first
        self.limit = limit
        self.delay = first

    def next(self) -> float:
        """The next delay; each call doubles the following one."""
        delay = self.delay
        self.delay = min(self.delay * 2, self.limit)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        """Back to the first delay after a session that worked."""
        self.delay = self.first


class VmSession:
    """Supervises the link to one VM (a :class:`~vmis.services.host_half.VmContext`).

    :param vm: the VM's record (desired state included).
    :param services: the host halves, in catalogue order: each gives this VM a part.
    :param kinds: the guest kinds by name; the VM's record names the one that
        opens links to its guest (``VmRecord.guest_agent``).
    :param events: where the VM's changes are published (a fresh hub when not shared).
    :param requests: where the host halves' requests are counted, by service key
        (vmis.host.request_stats; fresh ones when not shared).
    """

    def __init__(self, vm: VmRecord, services: Iterable[HostService[Any]],
                 kinds: Mapping[str, GuestKind], events: EventHub | None = None,
                 requests: Mapping[str, RequestStats] | None = None) -> None:
        self.vm = vm
        self.log = _log.getChild(vm.name)
        self.kinds = kinds
        self.events = events if events is not None else EventHub()
        self._requests = requests if requests is not None else request_stats()
        #: the statuses last published, by service key (see check_status)
        self._published: dict[str, tuple[bool, str | None, str | None, str]] = {}
        #: the rows last computed by check_status, by service key (see last_status)
        self._rows: dict[str, ServiceStatus] = {}
        #: when each service's status (and, under ``agent``, the agent's version) last
        #: changed: a compliance row's Since (vmis.host.fleet.compliance)
        self.since: dict[str, datetime] = {}
        self._agent_seen: Any = None
        self.link: GuestLink | None = None
        #: when the guest's system started, on this host's monotonic clock, as its agent
        #: said in the handshake (its ``uptime``); None when it did not (qemu-ga)
        self.booted_at: float | None = None
        #: True once any session with this VM completed its handshake
        self.contacted = False
        #: True while a link is open
        self.connected = False
        #: the reason the last connection attempt or session failed
        self.last_error = "not contacted yet"
        #: why the guest refused the handshake's framework versions, if it did
        self.mismatch = ""
        self._powered_off = False
        self._hello = LinkHello({}, {})
        self._parts: dict[str, VmPart] = {}
        self._liveness: Liveness | None = None
        context: VmContext = self
        for service in services:
            part = service.new_part(context)
            self._parts[service.spec.key] = part
            if service.liveness:
                self._liveness = cast(Liveness, part)
        self._handlers: dict[tuple[int, int], NotificationHandler] = {
            (spec.id, op): handler
            for spec in CATALOG if spec.key in self._parts
            for op, handler in self._parts[spec.key].handlers().items()
        }
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._session_up = asyncio.Event()
        self._backoff = Backoff()
        self._rule_tasks: set[asyncio.Task[Any]] = set()
        #: why this host ended the running session itself (see sweep), if it did
        self._dropped = ""
        #: monotonic time from which :meth:`sweep` may PING; None while no session runs
        self._watch_from: float | None = None
        #: the liveness PING in flight, if any
        self._ping: asyncio.Task[None] | None = None

    @property
    def powered_off(self) -> bool:
        """Set when the VM was powered off from here (Stop-VM); Get-VM shows it Off."""
        return self._powered_off

    @powered_off.setter
    def powered_off(self, off: bool) -> None:
        if off != self._powered_off:
            self._powered_off = off
            self.check_status()

    # Section: events

    def publish(self, type: str, **data: Any) -> None:
        """Publish an event of this VM on the manager's stream."""
        self.events.publish(type, vm_name=self.vm.name, vm_id=self.vm.id, **data)

    def check_status(self) -> None:
        """Publish a ``service`` event for each service whose status changed since the last
        look; called where a status can change (not per beat: the sweep calls it on a
        contact change)."""
        off = self._powered_off and not self.connected
        if self.agent.get("version") != self._agent_seen or "agent" not in self.since:
            self._agent_seen = self.agent.get("version")
            self.since["agent"] = datetime.now(UTC)
        for spec in CATALOG.host_services:
            row = self._rows[spec.key] = self.status(spec, off=off)
            seen = (row.enabled, row.primary.description if row.primary else None,
                    row.secondary.description if row.secondary else None, row.reason)
            if self._published.get(spec.key) != seen:
                self._published[spec.key] = seen
                self.since[spec.key] = datetime.now(UTC)
                self.publish("service", Name=row.name, Enabled=row.enabled,
                             PrimaryStatusDescription=seen[1],
                             SecondaryStatusDescription=seen[2], Reason=row.reason)

    def last_status(self, spec: ServiceSpec) -> ServiceStatus:
        """The row of *spec* as :meth:`check_status` last found it (computed now if it
        never ran): what a scrape of a thousand VMs reads instead of computing six
        thousand rows. It is current because every change of a status calls
        :meth:`check_status`."""
        row = self._rows.get(spec.key)
        if row is None:
            row = self.status(spec, off=self._powered_off and not self.connected)
        return row

    # Section: the parts

    def part(self, service: type[HostService[P]]) -> P:
        """This VM's part of *service* (``session.part(KvpHost)``)."""
        return cast(P, self._parts[service.spec.key])

    @property
    def agent(self) -> Mapping[str, Any]:
        """The guest agent's facts from the current (or last) link."""
        return self._hello.agent

    @property
    def guest(self) -> Mapping[str, ServiceOffer]:
        """What the guest offers, by service key (from the current or last link)."""
        return self._hello.services

    @property
    def absent(self) -> Mapping[str, str]:
        """Why the guest's agent lacks a service, by key, where its kind says (qemu-ga)."""
        return self._hello.absent

    @property
    def handlers(self) -> Mapping[tuple[int, int], NotificationHandler]:
        """The parts' handlers of guest notifications (the link dispatches to them)."""
        return self._handlers

    def contact(self, now: float | None = None) -> str:
        """Whether the guest is alive: ``NoContact``, ``Ok`` or ``LostCommunication``."""
        if self._liveness is None:
            return Contact.OK if self.connected else Contact.NO_CONTACT
        return self._liveness.contact(now)

    @property
    def watch_interval_ms(self) -> int:
        """How often the manager's sweep looks at this VM."""
        return self._liveness.interval_ms if self._liveness is not None else DEFAULT_WATCH_MS

    # Section: supervision

    def start(self) -> None:
        """Begin supervising (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"session:{self.vm.name}")

    async def stop(self) -> None:
        """Stop supervising, close the link, end the parts' work (VM removed, manager closing)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.link is not None:
            self.link.close()
        for part in self._parts.values():
            await part.close()

    def update(self, vm: VmRecord) -> None:
        """Take a changed record (desired state, channel, heartbeat settings)."""
        channel_changed = (vm.channel, vm.guest_agent) != (self.vm.channel, self.vm.guest_agent)
        self.vm = vm
        for part in self._parts.values():
            part.on_record_changed()
        if channel_changed and self.link is not None:
            self.link.close()
        self.reconnect_now()

    def reconnect_now(self) -> None:
        """Skip the rest of the current backoff delay."""
        self._backoff.reset()
        self._wake.set()

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until a session is running; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._session_up.wait()
            return True
        except TimeoutError:
            return False

    async def _supervise(self) -> None:
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (VmisError, OSError) as exc:
                if str(exc) != self.last_error:
                    self.log.info("no session: %s", exc)
                self.last_error = str(exc)
            except Exception:
                self.log.exception("session failed unexpectedly")
                self.last_error = "internal error (see the host manager's log)"
            finally:
                self._session_ended()
            self._wake.clear()
            try:
                async with asyncio.timeout(self._backoff.next()):
                    await self._wake.wait()
            except TimeoutError:
                pass

    @property
    def kind(self) -> GuestKind:
        """The guest kind that opens this VM's links.

        :raise ConfigError: When no kind of that name is known to this manager.
        """
        kind = self.kinds.get(self.vm.guest_agent)
        if kind is None:
            raise ConfigError(f"{self.vm.name}: no guest agent kind {self.vm.guest_agent!r} "
                              f"(known: {', '.join(sorted(self.kinds))})")
        return kind

    async def _session(self) -> None:
        try:
            link = await self.kind.open(self.vm, self)
        except RemoteServiceError as exc:
            if exc.code == "protocol-mismatch":
                self.mismatch = str(exc)
            raise
        self.link = link
        try:
            self.mismatch = ""
            self._powered_off = False  # a guest that answers runs
            self._hello = link.hello
            uptime = self.agent.get("uptime")
            self.booted_at = time.monotonic() - uptime \
                if isinstance(uptime, int | float) and not isinstance(uptime, bool) else None
            self._backoff.reset()
            self.contacted = True
            self.connected = True
            self.last_error = ""
            self._session_up.set()
            for part in self._parts.values():
                part.on_link_opened()
            self.log.info("session running (agent %s)", self.agent.get("version", "?"))
            await self._apply_desired(link)
            for part in list(self._parts.values()):
                try:
                    await part.on_running()
                except (VmisError, OSError) as exc:
                    self.log.warning("after-connect step %s failed: %s", type(part).__name__, exc)
            # From here the manager's sweep watches this session (see sweep): one
            # pass over all VMs per interval instead of a timer per VM.
            self._watch_in_an_interval()
            self.check_status()
            await link.wait_closed()
            raise ChannelError(self._dropped or link.lost_reason or "the channel closed")
        finally:
            self._watch_from = None
            if self._ping is not None:
                self._ping.cancel()
                self._ping = None
            self._dropped = ""
            link.close()

    def sweep(self, now: float) -> str:
        """One visit of the manager's sweep: whether the guest is alive, and a PING if not.

        A virtio-serial port has no connection semantics (docs/protocol.md §1):
        when the agent in the guest stops or restarts, the host's socket to
        QEMU stays connected and simply goes quiet, and a new agent hunts for
        a SYNC the host would never send. So whenever the guest does not show
        it is alive (it stopped beating, or Heartbeat is disabled), the agent
        is asked a PING; no answer within :data:`PING_TIMEOUT` closes the
        link, and the supervisor opens another to whatever agent holds the
        port by then.

        :param now: ``time.monotonic()`` of this pass.
        :return: the contact state, "" before the first contact.
        """
        if not self.contacted:
            return ""
        state = self.contact(now)
        if (state != Contact.OK and self._ping is None and self._watch_from is not None
                and now >= self._watch_from and self.link is not None):
            self._ping = asyncio.create_task(self._ping_agent(self.link),
                                             name=f"ping:{self.vm.name}")
            self._ping.add_done_callback(self._ping_done)
        return state

    def _watch_in_an_interval(self) -> None:
        self._watch_from = time.monotonic() + self.watch_interval_ms / 1000

    def _ping_done(self, task: asyncio.Task[None]) -> None:
        if self._ping is task:
            self._ping = None

    async def _ping_agent(self, link: GuestLink) -> None:
        try:
            await link.ping(PING_TIMEOUT)
            # An answer is a sign of life: the next PING (heartbeat still not
            # current, or disabled) waits an interval, not the next sweep.
            self._watch_in_an_interval()
        except RequestTimeout:
            self._dropped = (f"the guest agent stopped answering (no heartbeat, no answer "
                             f"to PING within {PING_TIMEOUT:g} s)")
            self.log.warning("%s; resynchronising", self._dropped)
            link.close()
        except (ChannelError, ProtocolError, RemoteServiceError):
            pass  # the session is ending anyway

    def _session_ended(self) -> None:
        if self.connected:
            self.log.warning("session ended: %s", self.last_error)
        self.connected = False
        self._session_up.clear()
        for part in self._parts.values():
            part.on_link_closed()
        self.link = None
        self.check_status()

    async def _apply_desired(self, link: GuestLink) -> None:
        await asyncio.gather(*(
            self._set_service(link, spec, self.vm.enabled[spec.key], quiet=True)
            for spec in CATALOG.host_services
            if spec.key in self.guest and self.guest[spec.key].version is not None
        ))

    def settings_for(self, spec: ServiceSpec) -> dict[str, Any]:
        """Host settings sent to the guest with each start of *spec*."""
        part = self._parts.get(spec.key)
        return part.settings() if part is not None else {}

    async def _set_service(self, link: GuestLink, spec: ServiceSpec, enabled: bool,
                           quiet: bool = False) -> dict[str, Any]:
        try:
            return await link.set_service(spec.key, enabled, self.settings_for(spec),
                                          timeout=SET_SERVICE_TIMEOUT)
        except RemoteServiceError as exc:
            if not quiet:
                raise
            self.log.warning("cannot %s %s: %s", "start" if enabled else "stop",
                             spec.guest_name, exc)
        except (ChannelError, ProtocolError) as exc:
            if not quiet:
                raise
            self.log.debug("SET_SERVICE %s failed: %s", spec.key, exc)
        return {}

    async def set_service(self, spec: ServiceSpec, enabled: bool) -> dict[str, Any] | None:
        """Apply a host enable/disable to the running session, if any.

        :return: the guest's state after the change, or None when no session runs
            (the desired state is applied when one starts).
        :raise ServiceUnavailable: When the guest cannot start the service.
        """
        link = self.link
        if link is None or not self.connected or spec.key not in self.guest:
            return None
        try:
            return await self._set_service(link, spec, enabled)
        except RemoteServiceError as exc:
            raise ServiceUnavailable(f"{self.vm.name}: {exc}") from exc
        except ChannelError as exc:
            self.log.debug("SET_SERVICE not delivered: %s", exc)
            return None
        finally:
            self.check_status()

    # Section: LinkEvents

    def service_state(self, key: str, state: str, startup: str) -> None:
        """The guest changed a service on its own: keep the rules."""
        spec = CATALOG.by_key(key)
        self.check_status()
        task = asyncio.ensure_future(self._apply_rules(spec))
        self._rule_tasks.add(task)
        task.add_done_callback(self._rule_tasks.discard)

    def lost(self, reason: str) -> None:
        """The link ended."""
        self.last_error = reason

    async def _apply_rules(self, spec: ServiceSpec) -> None:
        """Rules 4-6 of docs/hyperv.md §2 after a change made inside the guest."""
        link = self.link
        if spec.host_name is None or link is None:
            return  # guest-controlled service (VM Session): no host rule applies
        state = self.guest[spec.key]
        wanted = self.vm.enabled[spec.key]
        if not wanted and state.state == "running":
            self.log.info("rule 4: %s was started in the guest but is disabled on the host; "
                          "stopping it", spec.guest_name)
            await self._set_service(link, spec, False, quiet=True)
        elif wanted and state.state != "running":
            if state.startup == "disabled":
                self.log.warning("rule 6: %s is disabled in the guest; the host cannot start it",
                                 spec.guest_name)
                return
            self.log.info("rule 5: %s was stopped in the guest but is enabled on the host; "
                          "starting it", spec.guest_name)
            await self._set_service(link, spec, True, quiet=True)
        self.check_status()

    # Section: requests of the host halves

    async def request(self, spec: ServiceSpec, op: int, payload: Payload = b"",
                      timeout: float | None = 30.0, into: memoryview | None = None) -> Received:
        """Send a request of *spec*, checking first that the service can answer.

        :raise ServiceUnavailable: When the service is disabled on the host, the VM
            is not connected, or the guest lacks or has stopped the service.
        """
        stats = self._requests[spec.key]
        try:
            self.require(spec)
        except ServiceUnavailable:
            stats.record("unavailable")
            raise
        assert self.link is not None
        start = time.perf_counter()
        try:
            received = await self.link.request(spec.id, op, payload, timeout=timeout, into=into)
        except RemoteServiceError as exc:
            stats.record("refused", time.perf_counter() - start)
            if exc.code in ("service-stopped", "service-disabled", "unknown-service"):
                raise ServiceUnavailable(f"{self.vm.name}: {exc}") from exc
            raise
        except RequestTimeout:
            stats.record("timeout", time.perf_counter() - start)
            raise
        except (ChannelError, ProtocolError):
            stats.record("channel", time.perf_counter() - start)
            raise
        stats.record("ok", time.perf_counter() - start)
        return received

    def require(self, spec: ServiceSpec) -> None:
        """Raise ServiceUnavailable unless the service can take requests now."""
        label = spec.host_name or spec.guest_name
        if spec.host_name is not None and not self.vm.enabled.get(spec.key, False):
            raise ServiceUnavailable(
                f"{self.vm.name}: the {label} integration service is disabled on the host "
                f"(Enable-VMIntegrationService -VMName {self.vm.name} -Name \"{label}\")"
            )
        if not self.connected or self.link is None:
            raise ServiceUnavailable(
                f"{self.vm.name}: no contact with the guest agent ({self.last_error})"
            )
        state = self.guest.get(spec.key)
        if state is None or state.version is None:
            raise ServiceUnavailable(f"{self.vm.name}: {out_of_date(self, spec, state)}")
        if state.state != "running":
            how = ("it is disabled in the guest (StartupType Disabled)"
                   if state.startup == "disabled" else "it is stopped in the guest")
            if state.limit:
                how = state.limit
            raise ServiceUnavailable(f"{self.vm.name}: {label} is not running: {how}")

    # Section: status

    def status(self, spec: ServiceSpec, off: bool = False) -> ServiceStatus:
        """Get-VMIntegrationService's row for one host service (vmis.host.service_status).

        :param off: the VM is known to be off (no status then, as Hyper-V shows it).
        """
        return service_status(self, spec, self._parts.get(spec.key), off)
