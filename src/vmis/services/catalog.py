"""The service catalogue (docs/services/README.md): names, display names, defaults, versions.

One :class:`ServiceSpec` line per service drives everything that lists
services: the host's Get-VMIntegrationService rows, the guest's Get-Service
rows, the HELLO offer and answer, and name lookups from the command lines.
A line also says where the service lives: the package ``vmis.services.<key>``
whose ``guest`` module holds the guest half (``SERVICE``, a
:class:`~vmis.services.guest_half.GuestService`) and whose ``host`` module
holds the host half (``SERVICE``, a :class:`~vmis.services.host_half.HostService`).
The halves are imported only when a side asks for them (:meth:`ServiceSpec.half`),
so a guest never loads a host half's dependencies. Adding a service is one
package and one line here.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple, overload

from vmis.errors import NotFoundError
from vmis.protocol.services import ServiceId

if TYPE_CHECKING:
    from vmis.protocol.services import Version

__all__ = [
    "CATALOG",
    "Catalog",
    "ServiceSpec",
    "StartupType",
    "by_guest_name",
    "by_host_name",
    "by_id",
    "by_key",
    "match_guest_names",
    "match_host_names",
]


class StartupType(Enum):
    """Guest start types, as Windows' Set-Service -StartupType."""

    #: started when the agent starts (unless the host disabled it) and by the host
    AUTOMATIC = "automatic"
    #: started by the host when it enables the service, or by a guest administrator
    MANUAL = "manual"
    #: never runs; the host cannot start it (docs/hyperv.md §2, rule 6)
    DISABLED = "disabled"

    @property
    def title(self) -> str:
        """``Automatic``, ``Manual`` or ``Disabled`` as PowerShell prints them."""
        return self.value.capitalize()

    @classmethod
    def parse(cls, text: str) -> StartupType:
        """Parse a start type, case-insensitively.

        :raise NotFoundError: For an unknown name.
        """
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise NotFoundError(
                f"unknown startup type {text!r}: use Automatic, Manual or Disabled"
            ) from None


class ServiceSpec(NamedTuple):
    """Static facts about one integration service: one line of the catalogue.

    A NamedTuple, not a dataclass: the guest tools list the catalogue, and
    dataclasses would import inspect, ast and dis at their start.
    """

    #: wire number, docs/protocol.md §4
    id: int
    #: key in HELLO payloads, configuration files and package names
    key: str
    #: name in Get-VMIntegrationService, None for guest-controlled services
    host_name: str | None
    #: Windows service name in the guest (Get-Service -Name)
    guest_name: str
    #: Windows display name in the guest
    display_name: str
    #: enabled on the host for a new VM (docs/services/README.md: all but Guest Service Interface)
    default_enabled: bool
    #: start type in a freshly installed guest
    default_startup: StartupType
    #: versions this code speaks, highest first
    versions: tuple[Version, ...]
    #: one line for help texts
    summary: str
    #: the first vmis release whose guest agent speaks :attr:`versions` [0]:
    #: what an older guest needs to be updated to (the host's messages name it)
    since: str = "0.1.0"
    #: the package holding the service's halves; default ``vmis.services.<key>``
    package: str = ""

    def half(self, side: str) -> Any:
        """The ``SERVICE`` class of the ``guest`` or ``host`` module of the service's package.

        :return: the class, or None when the package has no module for *side*
            (a service the host only lists, or one without a host half).
        :raise ImportError: When the module exists but fails to import (a bug).
        """
        name = f"{self.package or f'vmis.services.{self.key}'}.{side}"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                return None
            raise
        return getattr(module, "SERVICE", None)


class Catalog(Sequence[ServiceSpec]):
    """The services this code knows, by key.

    A sequence of :class:`ServiceSpec`; :meth:`add` exists for tests that
    plug in a service of their own (a toy) the way a new line here would.
    """

    def __init__(self, specs: Iterable[ServiceSpec]) -> None:
        self._specs: list[ServiceSpec] = []
        self._by_key: dict[str, ServiceSpec] = {}
        self._by_id: dict[int, ServiceSpec] = {}
        self._host: tuple[ServiceSpec, ...] = ()
        for spec in specs:
            self.add(spec)

    @overload
    def __getitem__(self, index: int) -> ServiceSpec: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ServiceSpec]: ...
    def __getitem__(self, index: int | slice) -> ServiceSpec | Sequence[ServiceSpec]:
        return self._specs[index]

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def host_services(self) -> tuple[ServiceSpec, ...]:
        """Services listed and switched by the host, in Get-VMIntegrationService order."""
        return self._host

    def add(self, spec: ServiceSpec) -> None:
        """Add a line.

        :raise ValueError: When its key or wire number is taken.
        """
        if spec.key in self._by_key or spec.id in self._by_id:
            raise ValueError(f"service {spec.key!r} ({spec.id}) is in the catalogue already")
        self._specs.append(spec)
        self._index()

    def remove(self, key: str) -> None:
        """Take a line out again (tests)."""
        self._specs.remove(self._by_key[key])
        self._index()

    def _index(self) -> None:
        self._specs.sort(key=lambda s: s.key)
        self._by_key = {s.key: s for s in self._specs}
        self._by_id = {s.id: s for s in self._specs}
        self._host = tuple(sorted((s for s in self._specs if s.host_name),
                                  key=lambda s: s.host_name or ""))

    def by_key(self, key: str) -> ServiceSpec:
        """Look a service up by key (``"kvp"``).

        :raise KeyError: For an unknown key.
        """
        return self._by_key[key]

    def by_id(self, service: int) -> ServiceSpec | None:
        """Look a service up by wire number; None for control or unknown numbers."""
        return self._by_id.get(service)


CATALOG = Catalog((
    ServiceSpec(ServiceId.FCOPY, "fcopy", "Guest Service Interface", "vmicguestinterface",
        "Hyper-V Guest Service Interface", False, StartupType.MANUAL, ((1, 1), (1, 0)),
        "file copy between host and guest (Copy-VMFile)", since="0.2.0"),
    ServiceSpec(ServiceId.HEARTBEAT, "heartbeat", "Heartbeat", "vmicheartbeat",
        "Hyper-V Heartbeat Service", True, StartupType.AUTOMATIC, ((1, 0),),
        "liveness and application health of the guest"),
    ServiceSpec(ServiceId.KVP, "kvp", "Key-Value Pair Exchange", "vmickvpexchange",
        "Hyper-V Data Exchange Service", True, StartupType.AUTOMATIC, ((1, 0),),
        "key-value pairs between host and guest, and guest facts"),
    ServiceSpec(ServiceId.SHUTDOWN, "shutdown", "Shutdown", "vmicshutdown",
        "Hyper-V Guest Shutdown Service", True, StartupType.AUTOMATIC, ((1, 0),),
        "orderly shutdown and restart of the guest from the host"),
    ServiceSpec(ServiceId.TIMESYNC, "timesync", "Time Synchronization", "vmictimesync",
        "Hyper-V Time Synchronization Service", True, StartupType.AUTOMATIC, ((1, 0),),
        "keeps the guest clock on the host's time"),
    ServiceSpec(ServiceId.VMSESSION, "vmsession", None, "vmicvmsession",
        "Hyper-V VM Session Service", True, StartupType.DISABLED, ((1, 0),),
        "commands run in the guest from the host (Invoke-Command)"),
    ServiceSpec(ServiceId.VSS, "vss", "VSS", "vmicvss",
        "Hyper-V Volume Shadow Copy Requestor", True, StartupType.AUTOMATIC, ((1, 0),),
        "quiesces the guest's filesystems for a consistent backup"),
))


def by_key(key: str) -> ServiceSpec:
    """Look a service up by key (``"kvp"``)."""
    return CATALOG.by_key(key)


def by_id(service: int) -> ServiceSpec | None:
    """Look a service up by wire number; None for control or unknown numbers."""
    return CATALOG.by_id(service)


def by_host_name(name: str) -> ServiceSpec:
    """Look a host-listed service up by its Get-VMIntegrationService name, case-insensitively.

    :raise NotFoundError: Naming the valid names.
    """
    for spec in CATALOG.host_services:
        if spec.host_name and spec.host_name.lower() == name.strip().lower():
            return spec
    valid = ", ".join(f'"{s.host_name}"' for s in CATALOG.host_services)
    raise NotFoundError(f"no integration service named {name!r}; valid names: {valid}")


def by_guest_name(name: str) -> ServiceSpec:
    """Look a service up by guest service name (``vmicheartbeat``), case-insensitively.

    :raise NotFoundError: Naming the valid names.
    """
    for spec in CATALOG:
        if spec.guest_name == name.strip().lower():
            return spec
    valid = ", ".join(s.guest_name for s in CATALOG)
    raise NotFoundError(f"no guest service named {name!r}; valid names: {valid}")


def match_host_names(patterns: list[str]) -> list[ServiceSpec]:
    """Host services matching any of *patterns* (wildcards ``*`` and ``?``), in catalogue order.

    :raise NotFoundError: When a pattern without wildcards names no service.
    """
    chosen: set[int] = set()
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            chosen |= {
                s.id for s in CATALOG.host_services
                if fnmatch.fnmatchcase((s.host_name or "").lower(), pattern.lower())
            }
        else:
            chosen.add(by_host_name(pattern).id)
    return [s for s in CATALOG.host_services if s.id in chosen]


def match_guest_names(patterns: list[str]) -> list[ServiceSpec]:
    """Guest services matching any of *patterns* (wildcards allowed), sorted by name.

    :raise NotFoundError: When a pattern without wildcards names no service.
    """
    chosen: set[int] = set()
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            chosen |= {
                s.id for s in CATALOG if fnmatch.fnmatchcase(s.guest_name, pattern.lower())
            }
        else:
            chosen.add(by_guest_name(pattern).id)
    return sorted((s for s in CATALOG if s.id in chosen), key=lambda s: s.guest_name)
