"""Service numbers, control operations and version negotiation (docs/protocol.md §3.2, §4, §6).

Pure data and pure functions: the guest and the host both decide versions
with :func:`negotiate`, so they can never disagree about the rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Any, NamedTuple

from vmis.errors import RemoteProtocolError

__all__ = [
    "CONTROL",
    "FRAMEWORK_VERSIONS",
    "ControlOp",
    "Negotiated",
    "ServiceId",
    "Version",
    "negotiate",
    "parse_version",
    "parse_version_list",
]

#: docs/protocol.md §4: the control service's number
CONTROL = 0

Version = tuple[int, int]

#: docs/protocol.md §3.2: framework versions this code speaks, highest first
FRAMEWORK_VERSIONS: tuple[Version, ...] = ((1, 0),)


class ServiceId(IntEnum):
    """Service numbers on the wire, docs/protocol.md §4."""

    CONTROL = 0
    HEARTBEAT = 1
    KVP = 2
    SHUTDOWN = 3
    TIMESYNC = 4
    VSS = 5
    FCOPY = 6
    VMSESSION = 7

    @property
    def key(self) -> str:
        """The service's key in HELLO payloads (``"heartbeat"``, ``"kvp"``, ...)."""
        return self.name.lower()

    @classmethod
    def from_key(cls, key: str) -> ServiceId:
        """Look a service up by its HELLO key.

        :raise KeyError: When no service has that key.
        """
        return cls[key.upper()]


class ControlOp(IntEnum):
    """Operations of the control service, docs/protocol.md §6."""

    #: resync handshake, §3.1
    SYNC = 1
    #: negotiation, §3.2
    HELLO = 2
    #: host asks the guest to start or stop a service
    SET_SERVICE = 3
    #: guest tells the host a service changed state on its own
    SERVICE_STATE = 4
    #: liveness probe, empty payloads
    PING = 5
    #: host asks the guest to install a staged agent bundle and restart into it
    UPDATE = 6


def parse_version(value: Any) -> Version:
    """Parse ``[major, minor]`` from a json payload.

    :raise RemoteProtocolError: When *value* is not two non-negative integers.
    """
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 65536 for v in value)
    ):
        return (value[0], value[1])
    raise RemoteProtocolError(f"invalid version {value!r}")


def parse_version_list(value: Any) -> list[Version]:
    """Parse a list of versions, highest first as sent."""
    if not isinstance(value, list):
        raise RemoteProtocolError(f"invalid version list {value!r}")
    return [parse_version(v) for v in value]


class Negotiated(NamedTuple):
    """Outcome of a negotiation, docs/protocol.md §3.2 (a NamedTuple, not a dataclass: the
    service catalogue imports this module, and a guest tool's start would import inspect)."""

    #: the framework version both speak
    framework: Version
    #: service key -> chosen version, or None when the guest has the service
    #: but shares no version with the host; absent keys: the guest lacks it
    services: Mapping[str, Version | None]


def _best(ours: Sequence[Version], theirs: Sequence[Version]) -> Version | None:
    # Our own preference order decides, as in Hyper-V's vmbus_prep_negotiate_resp.
    common = set(theirs)
    return next((v for v in sorted(ours, reverse=True) if v in common), None)


def negotiate(
    offer_framework: Sequence[Version],
    offer_services: Mapping[str, Sequence[Version]],
    our_framework: Sequence[Version],
    our_services: Mapping[str, Sequence[Version]],
) -> Negotiated | None:
    """Choose versions as the guest does (docs/protocol.md §3.2).

    :param offer_framework: the host's framework versions.
    :param offer_services: the host's service key -> versions.
    :param our_framework: the guest's framework versions.
    :param our_services: the services the guest has, key -> versions.
    :return: the outcome, or None when no framework version is common.
    """
    framework = _best(our_framework, offer_framework)
    if framework is None:
        return None
    services: dict[str, Version | None] = {}
    for key, versions in our_services.items():
        if key in offer_services:
            services[key] = _best(versions, offer_services[key])
    return Negotiated(framework, services)
