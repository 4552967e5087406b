"""Volume Shadow Copy (vmicvss): quiescing the guest for a consistent backup.

The host freezes the guest, takes its snapshot, and thaws it again
(docs/services/vss.md). The guest half (:mod:`.guest`) runs the freeze hooks
(:mod:`.hooks`) and freezes the filesystems; the host half (:mod:`.host`)
runs a checkpoint around a pluggable snapshot step.

:mod:`vmis.services.vss.freeze` is the one implementation of filesystem
freezing in vmis; the Hyper-V VSS daemon (:mod:`vmis.hyperv.vss`) and the vmis
VSS service both freeze through it.
"""

from enum import IntEnum, StrEnum

__all__ = [
    "DEFAULT_FREEZE_TIMEOUT",
    "DEFAULT_HOOK_TIMEOUT",
    "HOOKS_DIR",
    "MAX_FREEZE_TIMEOUT",
    "GuestVssState",
    "SnapshotType",
    "VssOp",
]

#: seconds a freeze may last before the guest thaws by itself ([vss] freeze_timeout)
DEFAULT_FREEZE_TIMEOUT = 60.0
#: Hyper-V's own limit for a VSS freeze (docs/hyperv.md §8); no request may ask for more
MAX_FREEZE_TIMEOUT = 900.0
#: seconds one hook may run before it is killed ([vss] hook_timeout)
DEFAULT_HOOK_TIMEOUT = 30.0
#: the guest directory of freeze hooks (inside the agent's root)
HOOKS_DIR = "/etc/vmis/freeze.d"


class VssOp(IntEnum):
    """VSS operations, docs/services/vss.md §1."""

    #: host -> guest request: run the freeze hooks and freeze the filesystems
    FREEZE = 1
    #: host -> guest request: thaw the filesystems and run the thaw hooks
    THAW = 2
    #: host -> guest request: the freeze state and the last freeze cycle
    STATUS = 3


class SnapshotType(StrEnum):
    """``Checkpoint-VM -SnapshotType``, Hyper-V's checkpoint types."""

    #: application-consistent through VSS; falls back to Standard if VSS fails
    PRODUCTION = "Production"
    #: application-consistent through VSS, or the checkpoint fails
    PRODUCTION_ONLY = "ProductionOnly"
    #: crash-consistent: the guest is not asked
    STANDARD = "Standard"


class GuestVssState:
    """Values of ``state`` in STATUS answers, docs/services/vss.md §2."""

    #: nothing frozen; the last cycle (if any) ended with a thaw
    THAWED = "thawed"
    #: freeze hooks running or filesystems being frozen
    FREEZING = "freezing"
    #: filesystems frozen, waiting for THAW (or the watchdog)
    FROZEN = "frozen"
    #: nothing frozen; the last cycle was ended by the watchdog, not by a THAW
    TIMED_OUT = "timed-out"
