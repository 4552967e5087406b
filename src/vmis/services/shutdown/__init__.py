"""Shutdown (vmicshutdown): orderly power-off and restart from the host.

docs/services/shutdown.md describes the operations. As in Hyper-V
(docs/hyperv.md §10) the guest answers **before** it acts, so the host
learns that the request was accepted before the channel goes away; a power
command that then fails is reported with a FAILED notification.
"""

import json
from enum import Enum, IntEnum

__all__ = ["ACT_DELAY", "LIST_INHIBITORS", "MAX_REASON_BYTES", "PowerAction", "ShutdownOp",
           "parse_inhibitors"]

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


#: logind's D-Bus call that lists inhibitors, as systemctl itself consults them
LIST_INHIBITORS = ("busctl", "--json=short", "call", "org.freedesktop.login1",
                   "/org/freedesktop/login1", "org.freedesktop.login1.Manager",
                   "ListInhibitors")


def parse_inhibitors(output: str) -> list[str]:
    """Block inhibitors on shutdown from ``busctl --json=short`` ListInhibitors output.

    The reply is ``a(ssssuu)``: what (``shutdown:sleep``), who, why, mode
    (``block``, ``block-weak``, ``delay``), uid, pid. Delay inhibitors only
    postpone a shutdown, so they do not count.

    :raise ValueError: When the output is not such a reply.
    """
    reply = json.loads(output)
    data = reply.get("data") if isinstance(reply, dict) else None
    if not isinstance(data, list) or not data or not isinstance(data[0], list):
        raise ValueError("not an a(ssssuu) reply")
    found = []
    for item in data[0]:
        if not (isinstance(item, list) and len(item) == 6):
            raise ValueError(f"unexpected inhibitor entry {item!r}")
        what, who, why, mode, _uid, pid = item
        if "shutdown" in str(what).split(":") and str(mode).startswith("block"):
            found.append(f"{who} (pid {pid}): {why}")
    return found
