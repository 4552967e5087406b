"""Heartbeat (vmicheartbeat): liveness and application health, docs/protocol.md §7.

The guest pushes a BEAT every interval and a HEALTH notification the moment
application health changes; the host (:mod:`.host`) turns their timing into
Hyper-V's statuses: No Contact, OK, Lost Communication, Application Critical.
"""

import struct
from enum import IntEnum

from vmis.errors import RemoteProtocolError

__all__ = [
    "DEFAULT_ERROR_THRESHOLD",
    "DEFAULT_INTERVAL_MS",
    "DEFAULT_LATENCY_MS",
    "HEALTH_CODES",
    "HeartbeatOp",
    "beat_delay",
    "decode_beat",
    "encode_beat",
]

#: Msvm_HeartbeatComponentSettingData defaults (docs/hyperv.md §6)
DEFAULT_INTERVAL_MS = 2000
DEFAULT_LATENCY_MS = 1000
DEFAULT_ERROR_THRESHOLD = 2


class HeartbeatOp(IntEnum):
    """Heartbeat operations, docs/protocol.md §7."""

    #: guest -> host notification every interval: raw ``<QB`` (seq, health code)
    BEAT = 1
    #: guest -> host notification on a health change: {"health", "failed"}
    HEALTH = 2


#: docs/protocol.md §7: the BEAT payload. Raw, not json: a host with a
#: thousand VMs decodes a thousand of them a second.
_BEAT = struct.Struct("<QB")
#: health word <-> code in a BEAT
HEALTH_CODES = {"ok": 0, "critical": 1}
_HEALTH_WORDS = {v: k for k, v in HEALTH_CODES.items()}


def encode_beat(seq: int, health: str) -> bytes:
    """The payload of a BEAT."""
    return _BEAT.pack(seq & 0xFFFFFFFFFFFFFFFF, HEALTH_CODES[health])


def decode_beat(payload: bytes) -> tuple[int, str]:
    """``(seq, health)`` from a BEAT payload.

    :raise RemoteProtocolError: When the payload is not one.
    """
    try:
        seq, code = _BEAT.unpack(payload)
        return seq, _HEALTH_WORDS[code]
    except (struct.error, KeyError):
        raise RemoteProtocolError(f"malformed BEAT payload of {len(payload)} bytes") from None


#: a beat timer that fires this close before its grid point (a guest clock
#: slewed or stepped against the monotonic clock timers run on) already beat
_EARLY_NS = 10_000_000


def beat_delay(now_ns: int, interval_ns: int) -> int:
    """Nanoseconds from *now_ns* (wall clock) to the next beat, docs/protocol.md §7.

    Beats fall on wall-clock multiples of the interval, so guests whose clocks
    the host keeps in step beat together and a host with many VMs wakes once
    for a batch of beats instead of once per VM (as the Linux kernel's
    ``round_jiffies`` batches periodic timers). A timer that fired up to
    10 ms (at most an eighth of the interval) early does not beat twice, so
    two beats are never more than an interval and 10 ms apart.
    """
    delay = interval_ns - now_ns % interval_ns
    return delay + interval_ns if delay < min(interval_ns // 8, _EARLY_NS) else delay
