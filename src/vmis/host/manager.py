"""The host manager: the VM registry, one session per VM, the services' host halves.

The manager is where the host's parts meet (docs/architecture.md): the store,
one host half per catalogued service (vmis.services.host_half), the guest
kind that opens links to guests (vmis.services.link) and the hypervisor
backends (vmis.services.hypervisor). It gives the host halves what they may
use of it (a :class:`~vmis.services.host_half.HostContext`). The control
plane's operations are methods here, so the HTTP layer stays a thin
translation; each service's own operations are methods of its host half
(``manager.service(KvpHost).set(...)``). Names given by users follow
Hyper-V: VM names and service names are case-insensitive, and VM names
accept wildcards.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import Engine

from vmis.errors import NotFoundError, ServiceUnavailable, StateError
from vmis.host.events import EventHub
from vmis.host.session import VmSession
from vmis.host.store import Store
from vmis.host.vminfo import vm_row
from vmis.links.vmis_agent import VmisAgent
from vmis.services.catalog import CATALOG, ServiceSpec, match_host_names
from vmis.services.host_half import Contact, HostContext, HostService, VmRecord
from vmis.services.hypervisor import Hypervisor, known_state
from vmis.services.link import GuestKind
from vmis.services.status import ServiceStatus
from vmis.transport.address import parse_address

__all__ = ["HostManager"]

S = TypeVar("S", bound=HostService[Any])

_log = logging.getLogger("vmis.host")

#: longest time between two sweeps (see HostManager._sweep), seconds
SWEEP_INTERVAL = 1.0
#: shortest time between two sweeps, whatever heartbeat interval a VM has
MIN_SWEEP_INTERVAL = 0.1


class HostManager:
    """Owns the store, the services' host halves and the VM sessions.

    :param store: the registry.
    :param guest_kind: opens links to the VMs' guests (default: the vmis agent).
    :param hypervisors: the backends that act on VMs' machines, asked in order.
    :param data_dir: where the manager keeps its files (setup disks, machines).
    """

    def __init__(self, store: Store, *, guest_kind: GuestKind | None = None,
                 hypervisors: Sequence[Hypervisor] = (), data_dir: Path | None = None) -> None:
        self.store = store
        self.guest_kind: GuestKind = guest_kind or VmisAgent()
        self.hypervisors = list(hypervisors)
        self.data_dir = data_dir
        #: what changes, for screens that follow it live
        self.events = EventHub()
        self.sessions: dict[str, VmSession] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._seen: dict[str, str] = {}
        self._services: dict[str, HostService[Any]] = {}
        host: HostContext = self
        for spec in CATALOG:
            half = spec.half("host")
            if half is not None:
                self._services[spec.key] = half(host)

    # Section: HostContext

    @property
    def engine(self) -> Engine:
        """The store's database."""
        return self.store.engine

    def service(self, cls: type[S]) -> S:
        """A service's host half (``manager.service(KvpHost)``).

        :raise NotFoundError: When the catalogue has no such service.
        """
        service = self._services.get(cls.spec.key)
        if not isinstance(service, cls):
            raise NotFoundError(f"this host manager has no {cls.spec.key} service")
        return service

    def current(self, vm_id: str) -> VmSession | None:
        """The VM's session while it is registered."""
        return self.sessions.get(vm_id)

    def hypervisor_for(self, vm: VmRecord) -> Hypervisor | None:
        """The first backend that acts on *vm*, if one does."""
        return next((h for h in self.hypervisors if h.handles(vm)), None)

    def publish(self, type: str, *, vm_name: str | None = None, vm_id: str | None = None,
                **data: Any) -> None:
        """Publish an event on the manager's stream."""
        self.events.publish(type, vm_name=vm_name, vm_id=vm_id, **data)

    # Section: lifecycle

    async def start(self) -> None:
        """Start the services, then a session for every registered VM."""
        for service in self._services.values():
            await service.start()
        for vm in self.store.list_vms():
            self._start_session(vm)
        self._sweeper = asyncio.create_task(self._sweep(), name="heartbeat-sweep")
        self.publish("host", State="Up", VMs=len(self.sessions))

    async def close(self) -> None:
        """Stop every session, then the services."""
        self.publish("host", State="Down")
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.gather(*(s.stop() for s in self.sessions.values()))
        self.sessions.clear()
        for service in self._services.values():
            await service.close()

    def _start_session(self, vm: VmRecord) -> VmSession:
        session = VmSession(vm, self._services.values(), self.guest_kind, self.events)
        self.sessions[vm.id] = session
        session.start()
        return session

    async def _sweep(self) -> None:
        # Status is computed on demand from each VM's last beat; this one pass
        # over all VMs per heartbeat interval (at most SWEEP_INTERVAL) is the
        # only periodic work: it PINGs guests whose beats stopped (see
        # VmSession.sweep) and logs transitions as they happen. A thousand VMs
        # cost one timer a second, not a thousand.
        delay = SWEEP_INTERVAL
        while True:
            await asyncio.sleep(delay)
            delay = self.sweep_once()

    def sweep_once(self) -> float:
        """Visit every session once; return the seconds until the next visit."""
        now = time.monotonic()
        shortest = SWEEP_INTERVAL * 1000
        seen = self._seen
        # Nothing below awaits or adds a VM: the dict is walked as it is.
        for vm_id, session in self.sessions.items():
            state = session.sweep(now)
            shortest = min(shortest, session.watch_interval_ms)
            before = seen.get(vm_id)
            if state != before:
                seen[vm_id] = state
                if before is not None and state == Contact.LOST:
                    session.log.warning("heartbeat: Lost Communication")
                if state:
                    session.publish("heartbeat", Heartbeat=state)
                session.check_status()
        return max(shortest / 1000, MIN_SWEEP_INTERVAL)

    # Section: VMs

    def add_vm(self, name: str, channel: str, *, qmp: str | None = None, kind: str = "external",
               heartbeat_interval_ms: int | None = None) -> VmRecord:
        """Register a VM and start its session.

        :raise ConfigError: For an invalid channel address.
        :raise StateError: When the name is taken.
        """
        parse_address(channel)
        if not name or any(c in name for c in "*?["):
            raise StateError(f"invalid VM name {name!r}: wildcards are not allowed in names")
        vm = self.store.add_vm(name, channel, qmp=qmp, kind=kind,
                               heartbeat_interval_ms=heartbeat_interval_ms)
        self._start_session(vm)
        _log.info("VM %s added (%s)", name, channel)
        self.publish("vm-added", vm_name=vm.name, vm_id=vm.id, Channel=vm.channel, Kind=vm.kind)
        return vm

    async def remove_vm(self, name: str) -> VmRecord:
        """Unregister a VM and end its session."""
        vm = self.store.remove_vm(name)
        session = self.sessions.pop(vm.id, None)
        self._seen.pop(vm.id, None)
        if session is not None:
            await session.stop()
        _log.info("VM %s removed", vm.name)
        self.publish("vm-removed", vm_name=vm.name, vm_id=vm.id)
        return vm

    def update_vm(self, name: str, **values: Any) -> VmRecord:
        """Change a VM's channel, QMP socket or heartbeat settings."""
        if "channel" in values:
            parse_address(values["channel"])
        vm = self.store.update_vm(name, **values)
        self.sessions[vm.id].update(vm)
        return vm

    def session(self, name: str) -> VmSession:
        """The session of one VM, by exact (case-insensitive) name.

        :raise NotFoundError: When no such VM is registered.
        """
        key = name.lower()
        for session in self.sessions.values():
            if session.vm.name.lower() == key:
                return session
        raise NotFoundError(f"no VM named {name!r} is registered (see 'vmis vm list')")

    def match(self, patterns: Iterable[str]) -> list[VmSession]:
        """Sessions whose VM name matches any pattern (wildcards, case-insensitive), by name.

        :raise NotFoundError: When a pattern without wildcards matches nothing,
            or when nothing matches at all.
        """
        chosen: dict[str, VmSession] = {}
        for pattern in patterns:
            if any(c in pattern for c in "*?["):
                for s in self.sessions.values():
                    if fnmatch.fnmatchcase(s.vm.name.lower(), pattern.lower()):
                        chosen[s.vm.id] = s
            else:
                s = self.session(pattern)
                chosen[s.vm.id] = s
        if not chosen:
            raise NotFoundError(f"no VM matches {', '.join(patterns)}")
        return sorted(chosen.values(), key=lambda s: s.vm.name.lower())

    def list_vms(self) -> list[dict[str, Any]]:
        """Registered VMs with their connection state."""
        return [self.vm_info(s) for s in sorted(self.sessions.values(),
                                                key=lambda s: s.vm.name.lower())]

    @staticmethod
    def vm_info(session: VmSession) -> dict[str, Any]:
        """One VM's registry entry and connection facts."""
        vm = session.vm
        return {
            "Name": vm.name, "Id": vm.id, "Channel": vm.channel, "Qmp": vm.qmp, "Kind": vm.kind,
            "Connected": session.connected, "Heartbeat": session.contact(),
            "AgentVersion": session.agent.get("version"), "LastError": session.last_error,
            "HeartbeatIntervalMs": vm.heartbeat_interval_ms,
        }

    async def get_vms(self, patterns: list[str] | None) -> list[dict[str, Any]]:
        """Get-VM rows (vmis.host.vminfo)."""
        sessions = self.match(patterns) if patterns else sorted(
            self.sessions.values(), key=lambda s: s.vm.name.lower())
        return list(await asyncio.gather(*(vm_row(s, self.hypervisor_for(s.vm))
                                           for s in sessions)))

    # Section: integration services

    async def services(self, vm_patterns: list[str],
                       names: list[str] | None) -> list[ServiceStatus]:
        """Get-VMIntegrationService rows; an Off VM's services show no status."""
        specs = match_host_names(names) if names else list(CATALOG.host_services)
        sessions = self.match(vm_patterns)
        off = await asyncio.gather(*(self.is_off(s) for s in sessions))
        return [s.status(spec, off=o) for s, o in zip(sessions, off, strict=True)
                for spec in specs]

    async def is_off(self, session: VmSession) -> bool:
        """Whether the VM is off: stopped from here, or so its hypervisor says."""
        if session.connected:
            return False
        if session.powered_off:
            return True
        hypervisor = self.hypervisor_for(session.vm)
        return hypervisor is not None and await known_state(hypervisor, session) == "Off"

    async def set_enabled(self, vm_patterns: list[str], names: list[str],
                          enabled: bool) -> list[dict[str, Any]]:
        """Enable-/Disable-VMIntegrationService on matching VMs.

        The desired state is saved first (one transaction for all VMs), then
        pushed to every connected guest concurrently; a VM without a session
        gets it when one starts. A guest that refuses (its service disabled
        in the guest) is reported per VM and service, the rest still apply.

        :return: one entry per VM and service: ``{"VMName", "Name", "Enabled",
            "Applied", "Error"}``.
        """
        sessions = self.match(vm_patterns)
        specs = match_host_names(names)
        if not specs:
            raise NotFoundError(f"no integration service matches {', '.join(names)}")
        self.store.set_enabled((s.vm.id, spec.key, enabled) for s in sessions for spec in specs)
        for s in sessions:
            s.vm = _with_enabled(s.vm, {spec.key: enabled for spec in specs})
            for spec in specs:
                s.publish("settings", Name=spec.host_name, Enabled=enabled)

        async def push(session: VmSession, spec: ServiceSpec) -> dict[str, Any]:
            entry: dict[str, Any] = {"VMName": session.vm.name, "Name": spec.host_name,
                                     "Enabled": enabled, "Applied": False, "Error": None}
            try:
                entry["Applied"] = await session.set_service(spec, enabled) is not None
            except ServiceUnavailable as exc:
                entry["Error"] = str(exc)
            return entry

        results = list(await asyncio.gather(*(push(s, spec) for s in sessions for spec in specs)))
        for s in sessions:
            s.check_status()
        return results


def _with_enabled(vm: VmRecord, changes: dict[str, bool]) -> VmRecord:
    return replace(vm, enabled={**vm.enabled, **changes})
