"""Hyper-V's status model for integration services (docs/status.md).

Which state gives which status, for a service of a VM (the first line that
applies wins; docs/status.md has the same table for administrators):

=====================================================  ======================  =================
state                                                  Primary                 reason
=====================================================  ======================  =================
the VM is off and no guest answers                     (none)                  -
disabled on the host                                   OK                      -
no session with the guest yet (since the host started) No Contact              last failure
a session existed but ended, or heartbeats stopped     Lost Communication      channel/heartbeat
no common framework version                            Protocol Mismatch       versions offered
the guest does not offer the service                   No Contact              not installed
no common service version                              Protocol Mismatch       versions
guest start type Disabled                              Error                   cannot be started
stopped in the guest (the host is restarting it)       No Contact              stopped in guest
running, older service version than the host's         Degraded                versions
running                                                OK                      -
=====================================================  ======================  =================

Heartbeat adds a secondary status while its primary is OK or Degraded:
OK, or Application Critical when a guest health check fails. Heartbeat's
primary is No Contact until the first beat of a session.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["OperationalStatus", "ServiceStatus", "VMHeartbeatStatus"]


class OperationalStatus(IntEnum):
    """VMIntegrationComponentOperationalStatus: WMI OperationalStatus codes."""

    OK = 2
    DEGRADED = 3
    ERROR = 6
    NON_RECOVERABLE_ERROR = 7
    NO_CONTACT = 12
    LOST_COMMUNICATION = 13
    PAUSED = 15
    PROTOCOL_MISMATCH = 32775
    APPLICATION_CRITICAL = 32782
    COMMUNICATION_TIMED_OUT = 32783
    COMMUNICATION_FAILED = 32784
    DISABLED = 32896

    @property
    def description(self) -> str:
        """The StatusDescription text Hyper-V prints (``Lost Communication``)."""
        return _DESCRIPTIONS[self]

    @property
    def enum_name(self) -> str:
        """The PowerShell enum member name (``LostCommunication``)."""
        return "".join(part.capitalize() for part in self.name.split("_"))


_DESCRIPTIONS = {
    OperationalStatus.OK: "OK",
    OperationalStatus.DEGRADED: "Degraded",
    OperationalStatus.ERROR: "Error",
    OperationalStatus.NON_RECOVERABLE_ERROR: "Non-Recoverable Error",
    OperationalStatus.NO_CONTACT: "No Contact",
    OperationalStatus.LOST_COMMUNICATION: "Lost Communication",
    OperationalStatus.PAUSED: "Paused",
    OperationalStatus.PROTOCOL_MISMATCH: "Protocol Mismatch",
    OperationalStatus.APPLICATION_CRITICAL: "Application Critical",
    OperationalStatus.COMMUNICATION_TIMED_OUT: "Communication Timed Out",
    OperationalStatus.COMMUNICATION_FAILED: "Communication Failed",
    OperationalStatus.DISABLED: "Disabled",
}


class VMHeartbeatStatus(IntEnum):
    """Get-VM's Heartbeat property (docs/status.md)."""

    Unknown = 0
    Disabled = 1
    NoContact = 2
    Error = 3
    LostCommunication = 4
    OkApplicationsUnknown = 5
    OkApplicationsHealthy = 6
    OkApplicationsCritical = 7
    Paused = 8


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One row of Get-VMIntegrationService, with vmis's reason and versions."""

    vm_name: str
    vm_id: str
    name: str
    enabled: bool
    #: None while the VM is off: Hyper-V shows no status then
    primary: OperationalStatus | None
    secondary: OperationalStatus | None = None
    #: why the status is what it is, in one line (empty when OK)
    reason: str = ""
    #: negotiated service version, "major.minor", if any
    version: str | None = None
    #: guest service state: running, stopped, absent, unknown
    guest_state: str = "unknown"
    #: guest start type, if known
    guest_startup: str | None = None

    def to_json(self) -> dict[str, object]:
        """The Hyper-V object's properties plus vmis's, for ``--json``."""
        statuses = [s for s in (self.primary, self.secondary) if s is not None]
        return {
            "VMName": self.vm_name,
            "VMId": self.vm_id,
            "Name": self.name,
            "Enabled": self.enabled,
            "OperationalStatus": [s.enum_name for s in statuses],
            "PrimaryOperationalStatus": self.primary.enum_name if self.primary else None,
            "SecondaryOperationalStatus": self.secondary.enum_name if self.secondary else None,
            "StatusDescription": [s.description for s in statuses],
            "PrimaryStatusDescription": self.primary.description if self.primary else None,
            "SecondaryStatusDescription": self.secondary.description if self.secondary else None,
            "Reason": self.reason,
            "Version": self.version,
            "GuestState": self.guest_state,
            "GuestStartupType": self.guest_startup,
        }
