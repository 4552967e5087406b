"""One supervised host-guest session per VM.

:class:`VmSession` dials the VM's channel, runs SYNC and HELLO, applies the
host's desired service state, and then keeps the rules of SPEC.md §3 while
the session lasts (:meth:`VmSession._apply_rules`). When the channel fails
it dials again with exponential backoff, forever, until the VM is removed.
The status of each service (vmis.host.status) is computed from what this
object knows, when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from vmis.errors import (
    ChannelError,
    ProtocolError,
    RemoteServiceError,
    RequestTimeout,
    ServiceUnavailable,
    VmisError,
)
from vmis.host.status import OperationalStatus, ServiceStatus
from vmis.host.store import VmRecord
from vmis.protocol import (
    FRAMEWORK_VERSIONS,
    ControlOp,
    NotificationReceived,
    Payload,
    Received,
    RequestReceived,
    Role,
    ServiceId,
    Synced,
    decode_json,
    encode_json,
)
from vmis.protocol.services import CONTROL, parse_version, parse_version_list
from vmis.services.catalog import CATALOG, HOST_SERVICES, ServiceSpec, by_key
from vmis.services.heartbeat import HeartbeatOp, decode_beat
from vmis.services.heartbeat.host import HeartbeatMonitor, HeartbeatSettings, HeartbeatState
from vmis.transport.address import parse_address
from vmis.transport.channel import Channel
from vmis.transport.dial import dial

__all__ = ["Backoff", "GuestServiceState", "NotificationHook", "RunningHook", "VmSession"]

_log = logging.getLogger("vmis.host")

#: seconds the guest agent has to answer a liveness PING (see VmSession.sweep)
PING_TIMEOUT = 5.0

#: host handlers of data-plane notifications: (service, op) -> callable(session, payload)
NotificationHook = Callable[["VmSession", bytes], None]
#: called with the session each time a session starts running
RunningHook = Callable[["VmSession"], Awaitable[None]]


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


class GuestServiceState:
    """What the guest said about one service in HELLO and SERVICE_STATE."""

    __slots__ = ("offers", "startup", "state", "version")

    def __init__(self, version: tuple[int, int] | None, state: str, startup: str,
                 offers: list[tuple[int, int]] | None = None) -> None:
        self.version = version
        self.state = state
        self.startup = startup
        #: the versions the guest speaks, when none is common with ours
        self.offers = offers or []


class VmSession:
    """Supervises the channel to one VM; the host-side ChannelHandler.

    :param vm: the VM's record (desired state included).
    :param hooks: data-plane notification handlers by (service, op).
    """

    def __init__(self, vm: VmRecord,
                 hooks: dict[tuple[int, int], NotificationHook] | None = None,
                 on_running: list[RunningHook] | None = None) -> None:
        self.vm = vm
        self.log = _log.getChild(vm.name)
        self.hooks = hooks or {}
        #: awaited after each session reaches RUNNING and the desired state is applied
        #: (e.g. deliver KVP writes made while the VM was away, start time sync)
        self.on_running = on_running if on_running is not None else []
        self.heartbeat = HeartbeatMonitor(self._heartbeat_settings(vm))
        self.channel: Channel | None = None
        #: True once any session with this VM completed HELLO
        self.contacted = False
        #: True while a session is running
        self.connected = False
        #: the reason the last connection attempt or session failed
        self.last_error = "not contacted yet"
        #: "protocol-mismatch" when HELLO was refused for the framework version
        self.mismatch = ""
        #: guest agent facts from HELLO
        self.agent: dict[str, Any] = {}
        self.guest: dict[str, GuestServiceState] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._session_up = asyncio.Event()
        self._backoff = Backoff()
        self._rule_tasks: set[asyncio.Task[Any]] = set()
        #: per-VM attributes data-plane services keep (e.g. time sync figures)
        self.extra: dict[str, Any] = {}
        #: why this host ended the running session itself (see sweep), if it did
        self._dropped = ""
        #: monotonic time from which :meth:`sweep` may PING; None while no session runs
        self._watch_from: float | None = None
        #: the liveness PING in flight, if any
        self._ping: asyncio.Task[None] | None = None

    @staticmethod
    def _heartbeat_settings(vm: VmRecord) -> HeartbeatSettings:
        return HeartbeatSettings(vm.heartbeat_interval_ms, vm.heartbeat_latency_ms,
                                 vm.heartbeat_error_threshold)

    # Section: supervision

    def start(self) -> None:
        """Begin supervising (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"session:{self.vm.name}")

    async def stop(self) -> None:
        """Stop supervising and close the channel."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.channel is not None:
            self.channel.close()

    def update(self, vm: VmRecord) -> None:
        """Take a changed record (desired state, channel, heartbeat settings)."""
        channel_changed = vm.channel != self.vm.channel
        self.vm = vm
        self.heartbeat.settings = self._heartbeat_settings(vm)
        if channel_changed and self.channel is not None:
            self.channel.close()
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

    async def _session(self) -> None:
        address = parse_address(self.vm.channel)
        channel = await dial(address, lambda: Channel(Role.HOST, self, name=self.vm.name))
        self.channel = channel
        try:
            await channel.sync()
            await self._hello(channel)
            self._backoff.reset()
            self.contacted = True
            self.connected = True
            self.last_error = ""
            self._session_up.set()
            self.heartbeat.new_session()
            self.log.info("session running (agent %s)", self.agent.get("version", "?"))
            await self._apply_desired(channel)
            for hook in list(self.on_running):
                try:
                    await hook(self)
                except (VmisError, OSError) as exc:
                    self.log.warning("after-connect step %s failed: %s",
                                     getattr(hook, "__qualname__", hook), exc)
            # From here the manager's sweep watches this session (see sweep): one
            # pass over all VMs per interval instead of a timer per VM.
            self._watch_in_an_interval()
            await channel.wait_closed()
            raise ChannelError(self._dropped or channel_lost_reason(channel))
        finally:
            self._watch_from = None
            if self._ping is not None:
                self._ping.cancel()
                self._ping = None
            self._dropped = ""
            channel.close()

    def sweep(self, now: float) -> str:
        """One visit of the manager's sweep: the heartbeat state, and a PING if it is not OK.

        A virtio-serial port has no connection semantics (docs/protocol.md §1):
        when the agent in the guest stops or restarts, the host's socket to
        QEMU stays connected and simply goes quiet, and a new agent hunts for
        a SYNC the host would never send. So whenever no heartbeat is current
        (the guest stopped beating, or Heartbeat is disabled), the agent is
        asked a PING; no answer within :data:`PING_TIMEOUT` closes the channel,
        and the supervisor dials again and resynchronises with whatever agent
        holds the port by then.

        :param now: ``time.monotonic()`` of this pass.
        :return: the heartbeat state, "" before the first contact.
        """
        if not self.contacted:
            return ""
        state = self.heartbeat.state(now)
        if (state != HeartbeatState.OK and self._ping is None and self._watch_from is not None
                and now >= self._watch_from and self.channel is not None):
            self._ping = asyncio.create_task(self._ping_agent(self.channel),
                                             name=f"ping:{self.vm.name}")
            self._ping.add_done_callback(self._ping_done)
        return state

    def _watch_in_an_interval(self) -> None:
        self._watch_from = time.monotonic() + self.heartbeat.settings.interval_ms / 1000

    def _ping_done(self, task: asyncio.Task[None]) -> None:
        if self._ping is task:
            self._ping = None

    async def _ping_agent(self, channel: Channel) -> None:
        try:
            await channel.request(CONTROL, ControlOp.PING, b"", timeout=PING_TIMEOUT)
            # An answer is a sign of life: the next PING (heartbeat still not
            # current, or disabled) waits an interval, not the next sweep.
            self._watch_in_an_interval()
        except RequestTimeout:
            self._dropped = (f"the guest agent stopped answering (no heartbeat, no answer "
                             f"to PING within {PING_TIMEOUT:g} s)")
            self.log.warning("%s; resynchronising", self._dropped)
            channel.close()
        except (ChannelError, ProtocolError, RemoteServiceError):
            pass  # the session is ending anyway

    def _session_ended(self) -> None:
        if self.connected:
            self.log.warning("session ended: %s", self.last_error)
        self.connected = False
        self._session_up.clear()
        self.heartbeat.session_ended()
        self.channel = None

    async def _hello(self, channel: Channel) -> None:
        offer = {
            "framework": [list(v) for v in FRAMEWORK_VERSIONS],
            "services": {s.key: [list(v) for v in s.versions] for s in CATALOG},
            "max_payload": channel.conn.max_payload,
            "host": {"name": socket.gethostname(), "vm_name": self.vm.name, "vm_id": self.vm.id},
        }
        try:
            answer = await channel.hello(offer)
        except RemoteServiceError as exc:
            if exc.code == "protocol-mismatch":
                self.mismatch = str(exc)
            raise
        self.mismatch = ""
        self.agent = answer.get("agent") or {}
        guest: dict[str, GuestServiceState] = {}
        for key, entry in (answer.get("services") or {}).items():
            if key not in {s.key for s in CATALOG} or not isinstance(entry, dict):
                continue
            version = entry.get("version")
            offers = entry.get("offers")
            guest[key] = GuestServiceState(
                parse_version(version) if version is not None else None,
                str(entry.get("state", "stopped")),
                str(entry.get("startup", "automatic")),
                parse_version_list(offers) if isinstance(offers, list) else None,
            )
        self.guest = guest

    async def _apply_desired(self, channel: Channel) -> None:
        await asyncio.gather(*(
            self._set_service(channel, spec, self.vm.enabled[spec.key], quiet=True)
            for spec in HOST_SERVICES
            if spec.key in self.guest and self.guest[spec.key].version is not None
        ))

    def settings_for(self, spec: ServiceSpec) -> dict[str, Any]:
        """Host settings sent to the guest with SET_SERVICE."""
        if spec.id is ServiceId.HEARTBEAT:
            return self.heartbeat.settings.for_guest()
        return {}

    async def _set_service(self, channel: Channel, spec: ServiceSpec, enabled: bool,
                           quiet: bool = False) -> dict[str, Any]:
        payload = encode_json({"service": spec.key, "enabled": enabled,
                               "settings": self.settings_for(spec)})
        try:
            answer = decode_json(await channel.request(CONTROL, ControlOp.SET_SERVICE, payload,
                                                       timeout=15))
        except RemoteServiceError as exc:
            if exc.code == "service-disabled" and spec.key in self.guest:
                self.guest[spec.key].state = "stopped"
                self.guest[spec.key].startup = "disabled"
            if not quiet:
                raise
            self.log.warning("cannot %s %s: %s", "start" if enabled else "stop",
                             spec.guest_name, exc)
            return {}
        except (ChannelError, ProtocolError) as exc:
            if not quiet:
                raise
            self.log.debug("SET_SERVICE %s failed: %s", spec.key, exc)
            return {}
        state = self.guest.get(spec.key)
        if state is not None:
            state.state = str(answer.get("state", state.state))
            state.startup = str(answer.get("startup", state.startup))
        return answer

    async def set_service(self, spec: ServiceSpec, enabled: bool) -> dict[str, Any] | None:
        """Apply a host enable/disable to the running session, if any.

        :return: the guest's state after the change, or None when no session runs
            (the desired state is applied when one starts).
        :raise ServiceUnavailable: When the guest cannot start the service.
        """
        channel = self.channel
        if channel is None or not self.connected or spec.key not in self.guest:
            return None
        try:
            return await self._set_service(channel, spec, enabled)
        except RemoteServiceError as exc:
            raise ServiceUnavailable(f"{self.vm.name}: {exc}") from exc
        except ChannelError as exc:
            self.log.debug("SET_SERVICE not delivered: %s", exc)
            return None

    # Section: ChannelHandler

    def on_synced(self, channel: Channel, event: Synced) -> None:
        pass

    def on_request(self, channel: Channel, request: RequestReceived) -> None:
        channel.fail(request, "unknown-op", "the host serves no guest requests in this version")

    def on_session_lost(self, channel: Channel, reason: str) -> None:
        self.last_error = reason

    def on_notification(self, channel: Channel, note: NotificationReceived) -> None:
        if note.service == ServiceId.HEARTBEAT:
            self._on_heartbeat(note)
        elif note.service == CONTROL and note.op == ControlOp.SERVICE_STATE:
            self._on_service_state(note.payload)
        else:
            hook = self.hooks.get((note.service, note.op))
            if hook is not None:
                hook(self, note.payload)

    def _on_heartbeat(self, note: NotificationReceived) -> None:
        try:
            if note.op == HeartbeatOp.BEAT:
                seq, health = decode_beat(note.payload)
                if self.heartbeat.beat(seq, health):
                    self.log.info("heartbeat: Ok")
            elif note.op == HeartbeatOp.HEALTH:
                body = decode_json(note.payload)
                failed = body.get("failed") or []
                self.heartbeat.set_health(
                    str(body.get("health", "ok")),
                    [str(f) for f in failed] if isinstance(failed, list) else [])
                self.log.info("application health: %s %s", self.heartbeat.health,
                              self.heartbeat.failed or "")
        except ProtocolError as exc:
            self.log.warning("bad heartbeat: %s", exc)

    def _on_service_state(self, payload: bytes) -> None:
        try:
            body = decode_json(payload)
            spec = by_key(str(body["service"]))
        except (ProtocolError, KeyError) as exc:
            self.log.warning("bad SERVICE_STATE: %s", exc)
            return
        state = self.guest.get(spec.key)
        if state is None:
            return
        state.state = str(body.get("state", state.state))
        state.startup = str(body.get("startup", state.startup))
        task = asyncio.ensure_future(self._apply_rules(spec))
        self._rule_tasks.add(task)
        task.add_done_callback(self._rule_tasks.discard)

    async def _apply_rules(self, spec: ServiceSpec) -> None:
        """SPEC.md §3 rules 4-6 after a change made inside the guest."""
        if spec.host_name is None or self.channel is None:
            return  # guest-controlled service (VM Session): no host rule applies
        state = self.guest[spec.key]
        wanted = self.vm.enabled[spec.key]
        if not wanted and state.state == "running":
            self.log.info("rule 4: %s was started in the guest but is disabled on the host; "
                          "stopping it", spec.guest_name)
            await self._set_service(self.channel, spec, False, quiet=True)
        elif wanted and state.state != "running":
            if state.startup == "disabled":
                self.log.warning("rule 6: %s is disabled in the guest; the host cannot start it",
                                 spec.guest_name)
                return
            self.log.info("rule 5: %s was stopped in the guest but is enabled on the host; "
                          "starting it", spec.guest_name)
            await self._set_service(self.channel, spec, True, quiet=True)

    # Section: requests for data-plane services

    async def request(self, spec: ServiceSpec, op: int, payload: Payload = b"",
                      timeout: float | None = 30.0) -> Received:
        """Send a data-plane request, checking first that the service can answer.

        :raise ServiceUnavailable: When the service is disabled on the host, the VM
            is not connected, or the guest lacks or has stopped the service.
        """
        self.require(spec)
        assert self.channel is not None
        try:
            return await self.channel.request(spec.id, op, payload, timeout=timeout)
        except RemoteServiceError as exc:
            if exc.code in ("service-stopped", "service-disabled", "unknown-service"):
                raise ServiceUnavailable(f"{self.vm.name}: {exc}") from exc
            raise

    def require(self, spec: ServiceSpec) -> None:
        """Raise ServiceUnavailable unless the service can take requests now."""
        label = spec.host_name or spec.guest_name
        if spec.host_name is not None and not self.vm.enabled.get(spec.key, False):
            raise ServiceUnavailable(
                f"{self.vm.name}: the {label} integration service is disabled on the host "
                f"(Enable-VMIntegrationService -VMName {self.vm.name} -Name \"{label}\")"
            )
        if not self.connected or self.channel is None:
            raise ServiceUnavailable(
                f"{self.vm.name}: no contact with the guest agent ({self.last_error})"
            )
        state = self.guest.get(spec.key)
        if state is None or state.version is None:
            raise ServiceUnavailable(f"{self.vm.name}: {self._out_of_date(spec, state)}")
        if state.state != "running":
            how = ("it is disabled in the guest (StartupType Disabled)"
                   if state.startup == "disabled" else "it is stopped in the guest")
            raise ServiceUnavailable(f"{self.vm.name}: {label} is not running: {how}")

    # Section: status

    def status(self, spec: ServiceSpec) -> ServiceStatus:
        """Get-VMIntegrationService's row for one host service (table in vmis.host.status)."""
        enabled = self.vm.enabled.get(spec.key, spec.default_enabled)
        name = spec.host_name or spec.guest_name
        row: dict[str, Any] = {"vm_name": self.vm.name, "vm_id": self.vm.id, "name": name,
                               "enabled": enabled}
        guest = self.guest.get(spec.key)
        facts: dict[str, Any] = {}
        if guest is not None:
            facts = {"guest_state": guest.state, "guest_startup": guest.startup,
                     "version": ".".join(map(str, guest.version)) if guest.version else None}
        elif self.contacted:
            facts = {"guest_state": "absent"}
        if not enabled:
            return ServiceStatus(**row, primary=OperationalStatus.OK, **facts)
        primary, reason = self._primary(spec, guest)
        secondary = None
        if spec.id is ServiceId.HEARTBEAT and primary in (OperationalStatus.OK,
                                                          OperationalStatus.DEGRADED):
            hb = self.heartbeat.state()
            if hb == HeartbeatState.NO_CONTACT:
                primary, reason = OperationalStatus.NO_CONTACT, "no heartbeat yet"
            elif hb == HeartbeatState.LOST:
                primary, reason = OperationalStatus.LOST_COMMUNICATION, "heartbeats stopped"
            elif self.heartbeat.health == "critical":
                secondary = OperationalStatus.APPLICATION_CRITICAL
                reason = "failing health checks: " + ", ".join(self.heartbeat.failed)
            else:
                secondary = OperationalStatus.OK
        return ServiceStatus(**row, primary=primary, secondary=secondary, reason=reason, **facts)

    def _out_of_date(self, spec: ServiceSpec, guest: GuestServiceState | None) -> str:
        """Why an older guest cannot serve *spec*, naming the guest version it needs."""
        label = spec.host_name or spec.guest_name
        agent = self.agent.get("version", "unknown")
        needs = (f"update its integration services to vmis {spec.since} or newer "
                 "(Update-VMIntegrationServices)")
        if guest is None:
            return f"the guest agent {agent} does not offer {label}; {needs}"
        offered = f" (it speaks {_versions(guest.offers)})" if guest.offers else ""
        return (f"the guest agent {agent} speaks no version of {label} this host speaks "
                f"({_versions(spec.versions)}){offered}; {needs}")

    def _primary(self, spec: ServiceSpec,
                 guest: GuestServiceState | None) -> tuple[OperationalStatus, str]:
        if not self.contacted:
            return OperationalStatus.NO_CONTACT, self.last_error
        if self.mismatch:
            return OperationalStatus.PROTOCOL_MISMATCH, self.mismatch
        if not self.connected:
            return OperationalStatus.LOST_COMMUNICATION, self.last_error
        if self.heartbeat.state() == HeartbeatState.LOST:
            return OperationalStatus.LOST_COMMUNICATION, "heartbeats stopped"
        if guest is None:
            return OperationalStatus.NO_CONTACT, self._out_of_date(spec, guest)
        if guest.version is None:
            return OperationalStatus.PROTOCOL_MISMATCH, self._out_of_date(spec, guest)
        if guest.startup == "disabled" and guest.state != "running":
            return OperationalStatus.ERROR, (
                f"{spec.guest_name} is disabled in the guest (StartupType Disabled); "
                "the host cannot start it"
            )
        if guest.state != "running":
            return OperationalStatus.NO_CONTACT, f"{spec.guest_name} is stopped in the guest"
        if guest.version < spec.versions[0]:
            return OperationalStatus.DEGRADED, (
                f"guest speaks version {'.'.join(map(str, guest.version))}, "
                f"the host {'.'.join(map(str, spec.versions[0]))}"
            )
        return OperationalStatus.OK, ""


def _versions(versions: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> str:
    return ", ".join(".".join(map(str, v)) for v in versions)


def channel_lost_reason(channel: Channel) -> str:
    """Why a channel ended, for status reasons and logs."""
    return channel.lost_reason or "the channel closed"
