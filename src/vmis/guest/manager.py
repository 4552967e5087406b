"""The guest's service manager: start types, start and stop, the host's wishes.

The rules of docs/hyperv.md §2 meet here on the guest side:

- a service whose start type is Disabled never runs, and a host that tries
  to start it gets ``service-disabled`` (rule 6);
- a change made in the guest (Start-Service, Stop-Service, Set-Service) is
  reported to the host with a SERVICE_STATE notification, and the host
  undoes it when it contradicts its own setting (rules 4 and 5);
- at agent start, Automatic services start unless the host last disabled
  them, Manual ones only if the host last enabled them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from vmis.errors import ServiceError
from vmis.guest.state import ServiceState
from vmis.services.catalog import CATALOG, ServiceSpec, StartupType
from vmis.services.guest_half import GuestService

__all__ = ["ServiceManager", "ServiceStatus"]

_log = logging.getLogger("vmis.guest.manager")

ServiceStatus = dict[str, str]


class ServiceManager:
    """Owns every guest service's lifecycle.

    :param services: the service objects this agent has, by key.
    :param state: persistent start types and host wishes.
    :param on_guest_change: called with the spec after a change made in the guest.
    """

    def __init__(
        self,
        services: Mapping[str, GuestService],
        state: ServiceState,
        on_guest_change: Callable[[ServiceSpec], None],
    ) -> None:
        self.services = dict(services)
        self.state = state
        self._on_guest_change = on_guest_change
        self._locks = {key: asyncio.Lock() for key in self.services}

    # Section: queries

    def has(self, spec: ServiceSpec) -> bool:
        """True if this agent offers the service."""
        return spec.key in self.services

    def status(self, spec: ServiceSpec) -> ServiceStatus:
        """``{"state": "running"|"stopped", "startup": ...}`` of a service it has."""
        service = self.services[spec.key]
        return {
            "state": "running" if service.running else "stopped",
            "startup": self.state.startup[spec.guest_name].value,
        }

    def listing(self) -> list[dict[str, Any]]:
        """Every catalogued service with its state (``absent`` if not offered)."""
        rows = []
        for spec in sorted(CATALOG, key=lambda s: s.guest_name):
            row: dict[str, Any] = {"name": spec.guest_name, "display_name": spec.display_name}
            if self.has(spec):
                row.update(self.status(spec))
                row["host_enabled"] = self.state.host_enabled[spec.guest_name]
            else:
                row.update(state="absent", startup="-", host_enabled=None)
            rows.append(row)
        return rows

    # Section: lifecycle

    async def start_at_boot(self) -> None:
        """Start what should run before any host has spoken (see module docstring)."""
        for key, service in self.services.items():
            spec = service.spec
            startup = self.state.startup[spec.guest_name]
            wish = self.state.host_enabled[spec.guest_name]
            host_allows = wish if wish is not None else spec.default_enabled
            if spec.host_name is None:
                host_allows = True
            if (startup is StartupType.AUTOMATIC and host_allows) or (
                startup is StartupType.MANUAL and wish is True
            ):
                await self._start(key)

    async def stop_all(self) -> None:
        """Stop every service (agent shutdown)."""
        for key in self.services:
            async with self._locks[key]:
                await self.services[key].stop()

    async def set_host_enabled(
        self, spec: ServiceSpec, enabled: bool, settings: Mapping[str, Any]
    ) -> ServiceStatus:
        """Apply a SET_SERVICE from the host.

        :raise ServiceError: ``service-disabled`` when the start type forbids it.
        """
        service = self.services[spec.key]
        self.state.set_host_enabled(spec.guest_name, enabled)
        service.configure(settings)
        if enabled:
            if self.state.startup[spec.guest_name] is StartupType.DISABLED:
                raise ServiceError(
                    "service-disabled",
                    f"{spec.guest_name} is disabled in the guest (StartupType Disabled); "
                    "the host cannot start it",
                )
            await self._start(spec.key)
        else:
            await self._stop(spec.key)
        return self.status(spec)

    async def guest_start(self, spec: ServiceSpec) -> ServiceStatus:
        """Start-Service in the guest.

        :raise ServiceError: ``service-disabled`` for a Disabled service.
        """
        if self.state.startup[spec.guest_name] is StartupType.DISABLED:
            raise ServiceError(
                "service-disabled",
                f"cannot start {spec.guest_name}: its startup type is Disabled",
            )
        changed = await self._start(spec.key)
        if changed:
            self._on_guest_change(spec)
        return self.status(spec)

    async def guest_stop(self, spec: ServiceSpec) -> ServiceStatus:
        """Stop-Service in the guest."""
        if await self._stop(spec.key):
            self._on_guest_change(spec)
        return self.status(spec)

    async def guest_set_startup(self, spec: ServiceSpec, startup: StartupType) -> ServiceStatus:
        """Set-Service -StartupType in the guest; Disabled also stops the service."""
        self.state.set_startup(spec.guest_name, startup)
        if startup is StartupType.DISABLED:
            await self._stop(spec.key)
        self._on_guest_change(spec)
        return self.status(spec)

    async def _start(self, key: str) -> bool:
        async with self._locks[key]:
            service = self.services[key]
            if service.running:
                return False
            try:
                await service.start()
            except ServiceError:
                raise
            except Exception as exc:
                _log.exception("%s failed to start", service.spec.guest_name)
                raise ServiceError(
                    "failed", f"{service.spec.guest_name} failed to start: {exc}"
                ) from exc
            _log.info("%s started", service.spec.guest_name)
            return True

    async def _stop(self, key: str) -> bool:
        async with self._locks[key]:
            service = self.services[key]
            if not service.running:
                return False
            await service.stop()
            _log.info("%s stopped", service.spec.guest_name)
            return True
