"""The service catalogue of SPEC.md §2: names, display names, defaults, versions.

One :class:`ServiceSpec` per service drives everything that lists services:
the host's Get-VMIntegrationService rows, the guest's Get-Service rows, the
HELLO offer and answer, and name lookups from the command lines.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from enum import Enum

from vmis.errors import NotFoundError
from vmis.protocol.services import ServiceId, Version

__all__ = [
    "CATALOG",
    "HOST_SERVICES",
    "ServiceSpec",
    "StartupType",
    "by_guest_name",
    "by_host_name",
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
    #: never runs; the host cannot start it (SPEC.md §3 rule 6)
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


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """Static facts about one integration service."""

    #: wire number, docs/protocol.md §4
    id: ServiceId
    #: name in Get-VMIntegrationService, None for guest-controlled services
    host_name: str | None
    #: Windows service name in the guest (Get-Service -Name)
    guest_name: str
    #: Windows display name in the guest
    display_name: str
    #: enabled on the host for a new VM (SPEC.md §2: all but Guest Service Interface)
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

    @property
    def key(self) -> str:
        """Key in HELLO payloads and configuration files."""
        return self.id.key


CATALOG: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        ServiceId.FCOPY, "Guest Service Interface", "vmicguestinterface",
        "Hyper-V Guest Service Interface", False, StartupType.MANUAL, ((1, 0),),
        "file copy between host and guest (Copy-VMFile)",
    ),
    ServiceSpec(
        ServiceId.HEARTBEAT, "Heartbeat", "vmicheartbeat",
        "Hyper-V Heartbeat Service", True, StartupType.AUTOMATIC, ((1, 0),),
        "liveness and application health of the guest",
    ),
    ServiceSpec(
        ServiceId.KVP, "Key-Value Pair Exchange", "vmickvpexchange",
        "Hyper-V Data Exchange Service", True, StartupType.AUTOMATIC, ((1, 0),),
        "key-value pairs between host and guest, and guest facts",
    ),
    ServiceSpec(
        ServiceId.SHUTDOWN, "Shutdown", "vmicshutdown",
        "Hyper-V Guest Shutdown Service", True, StartupType.AUTOMATIC, ((1, 0),),
        "orderly shutdown and restart of the guest from the host",
    ),
    ServiceSpec(
        ServiceId.TIMESYNC, "Time Synchronization", "vmictimesync",
        "Hyper-V Time Synchronization Service", True, StartupType.AUTOMATIC, ((1, 0),),
        "keeps the guest clock on the host's time",
    ),
    ServiceSpec(
        ServiceId.VMSESSION, None, "vmicvmsession",
        "Hyper-V VM Session Service", True, StartupType.DISABLED, ((1, 0),),
        "commands run in the guest from the host (Invoke-Command)",
    ),
    ServiceSpec(
        ServiceId.VSS, "VSS", "vmicvss",
        "Hyper-V Volume Shadow Copy Requestor", True, StartupType.AUTOMATIC, ((1, 0),),
        "quiesces the guest's filesystems for a consistent backup",
    ),
)

#: services listed and switched by the host, in Get-VMIntegrationService order
HOST_SERVICES: tuple[ServiceSpec, ...] = tuple(
    sorted((s for s in CATALOG if s.host_name), key=lambda s: s.host_name or "")
)

_BY_KEY = {s.key: s for s in CATALOG}
_BY_ID = {s.id: s for s in CATALOG}


def by_key(key: str) -> ServiceSpec:
    """Look a service up by key (``"kvp"``)."""
    return _BY_KEY[key]


def by_id(service: int) -> ServiceSpec | None:
    """Look a service up by wire number; None for control or unknown numbers."""
    return _BY_ID.get(ServiceId(service)) if service in ServiceId._value2member_map_ else None


def by_host_name(name: str) -> ServiceSpec:
    """Look a host-listed service up by its Get-VMIntegrationService name, case-insensitively.

    :raise NotFoundError: Naming the valid names.
    """
    for spec in HOST_SERVICES:
        if spec.host_name and spec.host_name.lower() == name.strip().lower():
            return spec
    valid = ", ".join(f'"{s.host_name}"' for s in HOST_SERVICES)
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
    chosen: set[ServiceId] = set()
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            chosen |= {
                s.id for s in HOST_SERVICES
                if fnmatch.fnmatchcase((s.host_name or "").lower(), pattern.lower())
            }
        else:
            chosen.add(by_host_name(pattern).id)
    return [s for s in HOST_SERVICES if s.id in chosen]


def match_guest_names(patterns: list[str]) -> list[ServiceSpec]:
    """Guest services matching any of *patterns* (wildcards allowed), sorted by name.

    :raise NotFoundError: When a pattern without wildcards names no service.
    """
    chosen: set[ServiceId] = set()
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            chosen |= {
                s.id for s in CATALOG if fnmatch.fnmatchcase(s.guest_name, pattern.lower())
            }
        else:
            chosen.add(by_guest_name(pattern).id)
    return sorted((s for s in CATALOG if s.id in chosen), key=lambda s: s.guest_name)
