"""Shutdown (vmicshutdown): orderly power-off and restart from the host.

docs/services/shutdown.md describes the operations. As in Hyper-V
(docs/hyperv.md §10) the guest answers **before** it acts, so the host
learns that the request was accepted before the channel goes away; a power
command that then fails is reported with a FAILED notification.
"""

from enum import Enum, IntEnum

__all__ = ["ACT_DELAY", "MAX_REASON_BYTES", "PowerAction", "ShutdownOp"]

#: Hyper-V's shutdown_msg_data.display_message holds 2048 bytes
MAX_REASON_BYTES = 2048
#: seconds between the answer and the power command, so the answer is on its way first
ACT_DELAY = 0.1


class ShutdownOp(IntEnum):
    """Shutdown operations, docs/services/shutdown.md."""

    #: host -> guest request ``{"action", "force", "reason"}``; answered before acting
    SHUTDOWN = 1
    #: guest -> host notification ``{"action", "error"}``: the power command failed
    FAILED = 2


class PowerAction(Enum):
    """What the host asks for (Hyper-V flags 0 shutdown, 2 reboot)."""

    POWEROFF = "poweroff"
    REBOOT = "reboot"
