"""The host manager: the VM registry, one session per VM, the services' host halves.

The manager is where the host's parts meet (docs/architecture.md): the store,
one host half per catalogued service (vmis.services.host_half), the guest
kind that opens links to guests (vmis.services.link), the hypervisor
backends (vmis.services.hypervisor), and its part in a fleet of hosts
sharing one store (vmis.host.fleet: it runs sessions only for the VMs it
owns). It gives the host halves what they may use of it (a
:class:`~vmis.services.host_half.HostContext`). The control
plane's operations are methods here, so the HTTP layer stays a thin
translation; each service's own operations are methods of its host half
(``manager.service(KvpHost).set(...)``). Names given by users follow
Hyper-V: VM names and service names are case-insensitive, and VM names
accept wildcards.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine

from vmis.errors import ConfigError, NotFoundError, ServiceUnavailable
from vmis.host.events import EventHub, first_id_now
from vmis.host.fleet.fleet import Fleet, Targets
from vmis.host.fleet.hosts import RemoteVm
from vmis.host.fleet.policies import Policies
from vmis.host.fleet.reports import remote_vm_list, service_rows, vm_rows, vm_rows_text
from vmis.host.request_stats import request_stats
from vmis.host.session import VmSession
from vmis.host.store import Store, set_enabled
from vmis.host.vminfo import vm_row
from vmis.host.vmname import check_vm_name
from vmis.links.qemu_ga import QemuGa
from vmis.links.vmis_agent import VmisAgent
from vmis.services.catalog import CATALOG, ServiceSpec, match_host_names
from vmis.services.host_half import Contact, HostContext, HostService, VmRecord
from vmis.services.hypervisor import Hypervisor, known_state
from vmis.services.link import GuestKind
from vmis.transport.address import parse_address

__all__ = ["HostManager", "default_guest_kinds"]

S = TypeVar("S", bound=HostService[Any])

_log = logging.getLogger("vmis.host")

#: longest time between two sweeps (see HostManager._sweep), seconds
SWEEP_INTERVAL = 1.0
#: shortest time between two sweeps, whatever heartbeat interval a VM has
MIN_SWEEP_INTERVAL = 0.1


class HostManager:
    """Owns the store, the services' host halves and the VM sessions.

    :param store: the registry.
    :param guest_kinds: the kinds of guest agent, by name: each opens links to
        the VMs whose record names it (default: the vmis agent and qemu-ga).
    :param hypervisors: the backends that act on VMs' machines, asked in order.
    :param data_dir: where the manager keeps its files (setup disks, machines).
    :param host_name: this host's name in its fleet (docs/fleet.md); default the machine's.
    :raise ConfigError: For a host name a host may not have.
    """

    def __init__(self, store: Store, *, guest_kinds: Mapping[str, GuestKind] | None = None,
                 hypervisors: Sequence[Hypervisor] = (), data_dir: Path | None = None,
                 host_name: str | None = None) -> None:
        self.store = store
        self.guest_kinds: dict[str, GuestKind] = dict(
            guest_kinds if guest_kinds is not None else default_guest_kinds())
        self.hypervisors = list(hypervisors)
        self.data_dir = data_dir
        #: what changes, for screens that follow it live
        self.events = EventHub(first=first_id_now())
        #: the host halves' requests to guests, by service key (docs/metrics.md)
        self.requests = request_stats()
        self.sessions: dict[str, VmSession] = {}
        #: this host among the hosts that share the store
        self.fleet = Fleet(self, host_name)
        #: integration service policies, and this host's VMs converged to them
        self.policies = Policies(self)
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
        """Join the fleet, start the services, then a session for every VM this host owns.

        :raise StateError: When a host manager of the same name runs.
        """
        self.fleet.join()
        self.policies.converge_now()  # the sessions start with the policies' word
        for service in self._services.values():
            await service.start()
        for vm in self.store.list_vms(host=self.fleet.me.key):
            self._start_session(vm)
        self._sweeper = asyncio.create_task(self._sweep(), name="heartbeat-sweep")
        self.fleet.start()
        self.publish("host", State="Up", VMs=len(self.sessions), ComputerName=self.fleet.me.name)

    def end_events(self) -> None:
        """Publish the manager's ``host`` Down and end the event streams (idempotent).

        The server calls it as soon as it is told to stop: a stream's client
        is told, and its open response ends, so the server need not wait for it.
        """
        if not self.events.closed:
            self.publish("host", State="Down")
            self.events.close()

    async def close(self) -> None:
        """Leave the fleet, stop every session, then the services."""
        self.end_events()
        await self.fleet.close()
        await self.policies.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.gather(*(s.stop() for s in self.sessions.values()))
        self.sessions.clear()
        for service in self._services.values():
            await service.close()

    def _start_session(self, vm: VmRecord) -> VmSession:
        session = VmSession(vm, self._services.values(), self.guest_kinds, self.events,
                            self.requests)
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
               guest_agent: str = "vmis", heartbeat_interval_ms: int | None = None,
               libvirt_uri: str | None = None, libvirt_domain: str | None = None) -> VmRecord:
        """Register a VM and start its session.

        :param guest_agent: the kind of guest agent it runs (``vmis``, ``qemu-ga``).
        :raise ConfigError: For an invalid name (vmis.host.vmname) or channel address,
            or an unknown guest agent.
        :raise StateError: When the name is taken.
        """
        check_vm_name(name)
        parse_address(channel)
        self._check_guest_agent(guest_agent)
        vm = self.store.add_vm(name, channel, qmp=qmp, kind=kind, guest_agent=guest_agent,
                               host=self.fleet.me.key,
                               heartbeat_interval_ms=heartbeat_interval_ms,
                               libvirt_uri=libvirt_uri, libvirt_domain=libvirt_domain)
        if self.policies.converge_vm(vm.id):
            vm = self.store.get_vm_by_id(vm.id)
        self._start_session(vm)
        _log.info("VM %s added (%s, %s)", name, channel, guest_agent)
        self.publish("vm-added", vm_name=vm.name, vm_id=vm.id, Channel=vm.channel, Kind=vm.kind,
                     GuestAgent=vm.guest_agent)
        return vm

    def _check_guest_agent(self, name: str) -> None:
        if name not in self.guest_kinds:
            raise ConfigError(f"unknown guest agent {name!r}: use "
                              f"{' or '.join(sorted(self.guest_kinds))}")
    async def remove_vm(self, name: str, *, by_id: bool = False) -> VmRecord:
        """Unregister a VM and end its session.

        :param name: the VM's name, or else its id; with *by_id*, only its id
            (a VM registered under a name no command line can spell).
        :raise NotFoundError: When no VM has that name or id.
        """
        session = self._by_id(name) if by_id else self._named(name)
        vm = self.store.remove_vm_by_id(session.vm.id)
        del self.sessions[vm.id]
        self._seen.pop(vm.id, None)
        await session.stop()
        _log.info("VM %s removed", vm.name)
        self.publish("vm-removed", vm_name=vm.name, vm_id=vm.id)
        return vm

    def update_vm(self, name: str, **values: Any) -> VmRecord:
        """Change a VM's channel, QMP socket, guest agent or heartbeat settings.

        :raise NotFoundError: When this host has no such VM (another may).
        """
        if "channel" in values:
            parse_address(values["channel"])
        if "guest_agent" in values:
            self._check_guest_agent(values["guest_agent"])
        session = self.session(name)
        vm = self.store.update_vm(session.vm.name, host=self.fleet.me.key, **values)
        session.update(vm)
        return vm

    def adopt(self, vm: VmRecord) -> VmSession:
        """Start the session of a VM another host gave this one (Move-VM, docs/fleet.md)."""
        session = self._start_session(vm)
        _log.info("VM %s is this host's now (%s)", vm.name, vm.channel)
        self.publish("vm-added", vm_name=vm.name, vm_id=vm.id, Channel=vm.channel, Kind=vm.kind,
                     Adopted=True)
        return session

    async def release(self, session: VmSession, why: str) -> None:
        """End the session of a VM that stays registered: it is another host's now."""
        vm = session.vm
        if self.sessions.get(vm.id) is not session:
            return
        del self.sessions[vm.id]
        self._seen.pop(vm.id, None)
        await session.stop()
        _log.info("VM %s released: %s", vm.name, why)
        self.publish("vm-removed", vm_name=vm.name, vm_id=vm.id, Released=why)

    def session(self, name: str) -> VmSession:
        """The session of one VM, by exact (case-insensitive) name.

        :raise NotFoundError: When no such VM is registered.
        """
        key = name.lower()
        for session in self.sessions.values():
            if session.vm.name.lower() == key:
                return session
        elsewhere = self.fleet.where_else(name)
        if elsewhere is not None:
            raise NotFoundError(f"VM {name!r} is on host {elsewhere}, not on this host "
                                f"({self.fleet.me.name}): run the command there, or with "
                                f"-ComputerName {elsewhere} if it takes one (docs/fleet.md)")
        raise NotFoundError(f"no VM named {name!r} is registered (see 'vmis vm list')")

    def _by_id(self, vm_id: str) -> VmSession:
        session = self.sessions.get(vm_id.lower())
        if session is None:
            raise NotFoundError(f"no VM with id {vm_id!r} is registered (see 'vmis vm list')")
        return session

    def _named(self, name: str) -> VmSession:
        """The VM of that name, else the VM of that id (a name no command line can spell)."""
        try:
            return self.session(name)
        except NotFoundError:
            if name.lower() in self.sessions:
                return self.sessions[name.lower()]
            raise

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

    def list_vms(self, computers: list[str] | None = None) -> list[dict[str, Any]]:
        """Registered VMs with their connection state: this host's, or those of the
        hosts *computers* names (``-ComputerName``, docs/fleet.md)."""
        targets = self._targets(None, computers)
        rows = [{**self.vm_info(s), **self.fleet.local_columns()} for s in targets.local]
        return _by_name(rows + remote_vm_list(self.engine, targets.remote))

    def vm_info(self, session: VmSession) -> dict[str, Any]:
        """One VM's registry entry and connection facts."""
        vm = session.vm
        return {
            "Name": vm.name, "Id": vm.id, "Channel": vm.channel, "Qmp": vm.qmp, "Kind": vm.kind,
            "GuestAgent": vm.guest_agent,
            "Connected": session.connected, "Heartbeat": session.contact(),
            "AgentVersion": session.agent.get("version"), "LastError": session.last_error,
            "BeatLatencyMs": session.agent.get("beat_latency_ms"),
            "HeartbeatIntervalMs": vm.heartbeat_interval_ms,
            "LibvirtUri": vm.libvirt_uri, "LibvirtDomain": vm.libvirt_domain,
            "ComputerName": self.fleet.me.name,
        }

    def _targets(self, patterns: list[str] | None, computers: list[str] | None) -> Targets:
        if computers:
            return self.fleet.targets(patterns, computers)
        return Targets(self.match(patterns) if patterns else sorted(
            self.sessions.values(), key=lambda s: s.vm.name.lower()), [])

    async def get_vms(self, patterns: list[str] | None,
                      computers: list[str] | None = None) -> list[dict[str, Any]]:
        """Get-VM rows (vmis.host.vminfo): this host's VMs, or those of the hosts
        *computers* names (their owners' reports, vmis.host.fleet.reports)."""
        targets = self._targets(patterns, computers)
        rows = [{**row, **self.fleet.local_columns()} for row in await asyncio.gather(
            *(vm_row(s, self.hypervisor_for(s.vm)) for s in targets.local))]
        return _by_name(rows + vm_rows(self.engine, targets.remote))

    async def get_vms_json(self, patterns: list[str] | None,
                           computers: list[str] | None = None) -> str:
        """:meth:`get_vms` as JSON text: every VM of a fleet's hosts without decoding
        and encoding their owners' rows again (vmis.host.fleet.reports.vm_rows_text)."""
        if patterns or not computers or not self.fleet.shared:
            return json.dumps(await self.get_vms(patterns, computers))
        local, others = self.fleet.resolve(computers)
        sessions = list(self.sessions.values()) if local else []
        rows = [(s.vm.name.lower(), json.dumps({**row, **self.fleet.local_columns()}))
                for s, row in zip(sessions, await asyncio.gather(
                    *(vm_row(s, self.hypervisor_for(s.vm)) for s in sessions)), strict=True)]
        rows += await asyncio.to_thread(vm_rows_text, self.engine, others)
        rows.sort(key=lambda row: row[0])
        return "[" + ", ".join(text for _, text in rows) + "]"

    # Section: integration services

    async def services(self, vm_patterns: list[str], names: list[str] | None,
                       computers: list[str] | None = None) -> list[dict[str, Any]]:
        """Get-VMIntegrationService rows; an Off VM's services show no status; another
        host's VMs show what their owners reported (docs/fleet.md)."""
        specs = match_host_names(names) if names else list(CATALOG.host_services)
        targets = self._targets(vm_patterns, computers)
        sessions = targets.local
        off = await asyncio.gather(*(self.is_off(s) for s in sessions))
        rows = [{**s.status(spec, off=o).to_json(), **self.fleet.local_columns()}
                for s, o in zip(sessions, off, strict=True) for spec in specs]
        return _by_name(rows + service_rows(self.engine, targets.remote, specs), "VMName")

    async def is_off(self, session: VmSession) -> bool:
        """Whether the VM is off: stopped from here, or so its hypervisor says."""
        if session.connected:
            return False
        if session.powered_off:
            return True
        hypervisor = self.hypervisor_for(session.vm)
        return hypervisor is not None and await known_state(hypervisor, session) == "Off"

    async def set_enabled(self, vm_patterns: list[str], names: list[str], enabled: bool,
                          computers: list[str] | None = None, *,
                          override_policy: bool = False) -> list[dict[str, Any]]:
        """Enable-/Disable-VMIntegrationService on matching VMs.

        The desired state is saved first (one transaction for all VMs), then
        pushed to every connected guest concurrently; a VM without a session
        gets it when one starts. A guest that refuses (its service disabled
        in the guest) is reported per VM and service, the rest still apply.
        Another host's VM gets its desired state saved the same way, and a
        request that has its owner push it (docs/fleet.md).

        :return: one entry per VM and service: ``{"VMName", "Name", "Enabled",
            "Applied", "Error", "ErrorType", "ComputerName"}``, and ``Pending``
            (with ``PendingReason``) for another host's VM that was not told yet.
        """
        specs = match_host_names(names)
        if not specs:
            raise NotFoundError(f"no integration service matches {', '.join(names)}")
        if not override_policy:  # a policy's word wins (docs/fleet.md §5)
            targets = self._targets(vm_patterns, computers)
            await asyncio.to_thread(self.policies.refuse_conflicts, [
                *((s.vm.id, s.vm.name, self.fleet.me.key) for s in targets.local),
                *((v.id, v.name, v.host_key) for v in targets.remote)],
                [spec.key for spec in specs], enabled)

        async def here(patterns: list[str]) -> list[dict[str, Any]]:
            sessions = self.match(patterns)
            self.store.set_enabled((s.vm.id, spec.key, enabled)
                                   for s in sessions for spec in specs)
            for s in sessions:
                s.vm = _with_enabled(s.vm, {spec.key: enabled for spec in specs})
                for spec in specs:
                    s.publish("settings", Name=spec.host_name, Enabled=enabled)
            return await self.push_settings(sessions, specs)

        def desired(conn: Connection, remote: Sequence[RemoteVm]) -> dict[str, Any]:
            set_enabled(conn, [(vm.id, spec.key, enabled) for vm in remote for spec in specs])
            return {}

        return await self.fleet.across(
            "services", vm_patterns, computers,
            {"names": [spec.host_name for spec in specs], "enabled": enabled}, local=here,
            prepare=desired)

    async def push_settings(self, sessions: Sequence[VmSession],
                            specs: Sequence[ServiceSpec]) -> list[dict[str, Any]]:
        """Push the desired state of *specs* (the VMs' records') to the connected guests.

        :return: one entry per VM and service (see :meth:`set_enabled`).
        """
        async def push(session: VmSession, spec: ServiceSpec) -> dict[str, Any]:
            enabled = session.vm.enabled[spec.key]
            entry: dict[str, Any] = {"VMName": session.vm.name, "Name": spec.host_name,
                                     "Enabled": enabled, "Applied": False, "Error": None,
                                     "ErrorType": None}
            try:
                entry["Applied"] = await session.set_service(spec, enabled) is not None
            except ServiceUnavailable as exc:
                entry["Error"], entry["ErrorType"] = str(exc), type(exc).__name__
            return entry

        results = list(await asyncio.gather(*(push(s, spec) for s in sessions for spec in specs)))
        pushed = {r["VMName"] for r in results if r["Applied"]}
        for s in sessions:
            if s.vm.name not in pushed:  # a push checks its VM's status itself
                s.check_status()
        return results


def default_guest_kinds() -> dict[str, GuestKind]:
    """The kinds of guest agent a host manager knows unless told otherwise."""
    kinds: tuple[GuestKind, ...] = (VmisAgent(), QemuGa())
    return {kind.name: kind for kind in kinds}


def _with_enabled(vm: VmRecord, changes: dict[str, bool]) -> VmRecord:
    return replace(vm, enabled={**vm.enabled, **changes})


def _by_name(rows: list[dict[str, Any]], key: str = "Name") -> list[dict[str, Any]]:
    # stable: one VM's rows keep their order (its services in catalogue order)
    return sorted(rows, key=lambda row: str(row[key]).lower())
