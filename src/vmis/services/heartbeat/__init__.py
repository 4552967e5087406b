"""Heartbeat (vmicheartbeat): liveness and application health, docs/protocol.md §7.

The guest pushes a BEAT every interval and a HEALTH notification the moment
application health changes; the host (:mod:`.host`) turns their timing into
Hyper-V's statuses: No Contact, OK, Lost Communication, Application Critical.
"""

from enum import IntEnum

__all__ = ["DEFAULT_ERROR_THRESHOLD", "DEFAULT_INTERVAL_MS", "DEFAULT_LATENCY_MS", "HeartbeatOp"]

#: Msvm_HeartbeatComponentSettingData defaults (hyperv-facts.md §7.1)
DEFAULT_INTERVAL_MS = 2000
DEFAULT_LATENCY_MS = 1000
DEFAULT_ERROR_THRESHOLD = 2


class HeartbeatOp(IntEnum):
    """Heartbeat operations, docs/protocol.md §7."""

    #: guest -> host notification every interval: {"seq", "health"}
    BEAT = 1
    #: guest -> host notification on a health change: {"health", "failed"}
    HEALTH = 2
