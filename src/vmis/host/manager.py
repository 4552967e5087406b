"""The host manager: the VM registry, one session per VM, and the host operations.

Everything the API offers is a method here, so the HTTP layer stays a thin
translation. Names given by users follow Hyper-V: VM names and service names
are case-insensitive, and VM names accept wildcards.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from vmis.errors import NotFoundError, ServiceUnavailable, StateError
from vmis.host.session import NotificationHook, RunningHook, VmSession
from vmis.host.status import ServiceStatus
from vmis.host.store import Store, VmRecord
from vmis.host.vminfo import StateProvider, vm_row
from vmis.services.catalog import HOST_SERVICES, ServiceSpec, match_host_names
from vmis.services.heartbeat.host import HeartbeatState
from vmis.transport.address import parse_address

__all__ = ["HostManager"]

_log = logging.getLogger("vmis.host")

#: longest time between two sweeps (see HostManager._sweep), seconds
SWEEP_INTERVAL = 1.0
#: shortest time between two sweeps, whatever heartbeat interval a VM has
MIN_SWEEP_INTERVAL = 0.1


class HostManager:
    """Owns the store and the VM sessions.

    :param store: the registry.
    :param hooks: data-plane notification handlers, by (service, op).
    """

    def __init__(self, store: Store,
                 hooks: dict[tuple[int, int], NotificationHook] | None = None) -> None:
        self.store = store
        self.hooks = dict(hooks or {})
        self.sessions: dict[str, VmSession] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._seen: dict[str, str] = {}
        #: called with (session) whenever a VM is added, for services that keep state
        self.on_vm_added: list[Callable[[VmSession], None]] = []
        #: awaited with (session) each time a VM's session starts running
        self.on_running: list[RunningHook] = []
        #: hypervisor connections that know VMs' power states (QMP), asked in order
        self.state_providers: list[StateProvider] = []

    # Section: lifecycle

    async def start(self) -> None:
        """Start a session for every registered VM."""
        for vm in self.store.list_vms():
            self._start_session(vm)
        self._sweeper = asyncio.create_task(self._sweep(), name="heartbeat-sweep")

    async def close(self) -> None:
        """Stop every session."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.gather(*(s.stop() for s in self.sessions.values()))
        self.sessions.clear()

    def _start_session(self, vm: VmRecord) -> VmSession:
        session = VmSession(vm, self.hooks, self.on_running)
        self.sessions[vm.id] = session
        session.start()
        for hook in self.on_vm_added:
            hook(session)
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
            shortest = min(shortest, session.heartbeat.settings.interval_ms)
            before = seen.get(vm_id)
            if state != before:
                seen[vm_id] = state
                if before is not None and state == HeartbeatState.LOST:
                    session.log.warning("heartbeat: Lost Communication")
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
        return vm

    async def remove_vm(self, name: str) -> VmRecord:
        """Unregister a VM and end its session."""
        vm = self.store.remove_vm(name)
        session = self.sessions.pop(vm.id, None)
        self._seen.pop(vm.id, None)
        if session is not None:
            await session.stop()
        _log.info("VM %s removed", vm.name)
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
            "Connected": session.connected, "Heartbeat": session.heartbeat.state(),
            "AgentVersion": session.agent.get("version"), "LastError": session.last_error,
            "HeartbeatIntervalMs": vm.heartbeat_interval_ms,
        }

    async def get_vms(self, patterns: list[str] | None) -> list[dict[str, Any]]:
        """Get-VM rows (vmis.host.vminfo)."""
        sessions = self.match(patterns) if patterns else sorted(
            self.sessions.values(), key=lambda s: s.vm.name.lower())
        return list(await asyncio.gather(*(vm_row(s, self.state_providers) for s in sessions)))

    # Section: integration services

    def services(self, vm_patterns: list[str], names: list[str] | None) -> list[ServiceStatus]:
        """Get-VMIntegrationService rows."""
        specs = match_host_names(names) if names else list(HOST_SERVICES)
        return [s.status(spec) for s in self.match(vm_patterns) for spec in specs]

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

        async def push(session: VmSession, spec: ServiceSpec) -> dict[str, Any]:
            entry: dict[str, Any] = {"VMName": session.vm.name, "Name": spec.host_name,
                                     "Enabled": enabled, "Applied": False, "Error": None}
            try:
                entry["Applied"] = await session.set_service(spec, enabled) is not None
            except ServiceUnavailable as exc:
                entry["Error"] = str(exc)
            return entry

        return list(await asyncio.gather(*(push(s, spec) for s in sessions for spec in specs)))


def _with_enabled(vm: VmRecord, changes: dict[str, bool]) -> VmRecord:
    return replace(vm, enabled={**vm.enabled, **changes})
