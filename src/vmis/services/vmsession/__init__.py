"""VM Session (vmicvmsession): commands run in the guest from the host.

The wire operations, their payloads, flow control, keepalives and the exit
status rules are in docs/services/vmsession.md; this module holds what both
halves share: op codes, stream numbers, limits and the exit status rule.
The guest half is :mod:`.guest` (one running command in :mod:`.guest_session`,
policy in :mod:`.policy`), the host half is
``vmis.services.vmsession.host``.
"""

from __future__ import annotations

import signal
from enum import IntEnum

__all__ = [
    "CHUNK",
    "DEFAULT_WINDOW",
    "KEEPALIVE_MISSES",
    "MAX_WINDOW",
    "MIN_WINDOW",
    "SIGNALS",
    "Stream",
    "VmSessionOp",
    "exit_status",
    "idle_deadline",
]

#: docs/services/vmsession.md §3: bytes of one OUTPUT or INPUT frame's raw part.
#: The smallest payload a peer may announce is 64 KiB (docs/protocol.md §2.4);
#: 4 KiB are left for the json head.
CHUNK = 60 * 1024
#: docs/services/vmsession.md §3: bytes a sender may have unacknowledged, per session
DEFAULT_WINDOW = 256 * 1024
MIN_WINDOW = CHUNK
MAX_WINDOW = 16 * 1024 * 1024
#: docs/services/vmsession.md §4: silent keepalive intervals before the peer counts as gone
KEEPALIVE_MISSES = 4
#: signals the host may send to a session's process group, by name
SIGNALS: dict[str, int] = {
    "INT": signal.SIGINT,
    "TERM": signal.SIGTERM,
    "KILL": signal.SIGKILL,
    "HUP": signal.SIGHUP,
    "QUIT": signal.SIGQUIT,
}


class VmSessionOp(IntEnum):
    """VM Session operations, docs/services/vmsession.md §2."""

    #: host -> guest request, json: run a command; answer json {pid, keepalive_ms, ...}
    START = 1
    #: host -> guest notification, json+raw: bytes for the command's stdin, or its end
    INPUT = 2
    #: guest -> host notification, json+raw: bytes the command wrote to stdout or stderr
    OUTPUT = 3
    #: either way, notification, json: the receiver consumed bytes; the sender may send more
    WINDOW = 4
    #: host -> guest request, json: send a signal to the command's process group
    SIGNAL = 5
    #: guest -> host notification, json: the command ended; nothing follows for it
    EXIT = 6
    #: either way, notification, json: these sessions are alive (sent every interval)
    KEEPALIVE = 7


class Stream(IntEnum):
    """Output streams, numbered as their file descriptors."""

    STDOUT = 1
    STDERR = 2


def exit_status(code: int | None, signum: int | None) -> int:
    """The shell's exit status of a process: its code, or 128+n after signal n.

    :param code: the exit code, when the process exited.
    :param signum: the signal that ended it, when one did.
    :return: 0-255; 255 when neither is known.
    """
    if signum:
        return 128 + signum
    if code is not None:
        return code & 0xFF
    return 255


def idle_deadline(keepalive: float) -> float:
    """Seconds of silence after which a session's peer counts as gone."""
    return max(keepalive * KEEPALIVE_MISSES, 1.0)
