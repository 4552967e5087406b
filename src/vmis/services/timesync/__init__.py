"""Time Synchronization (vmictimesync): the arithmetic both halves share.

docs/services/timesync.md describes the operations. The host measures the
guest's clock against its own with NTP's four timestamps (RFC 5905 §8):

- ``t1`` host clock when the SAMPLE request leaves,
- ``t2`` guest clock when it arrives,
- ``t3`` guest clock when the answer leaves,
- ``t4`` host clock when the answer arrives.

offset ``θ = ((t2 - t1) + (t3 - t4)) / 2`` is how far the guest is *ahead*
of the host; round trip ``δ = (t4 - t1) - (t3 - t2)`` is the time on the
wire, without the guest's own processing. θ is exact when both directions
take equally long and off by at most ``δ / 2`` otherwise, so of a burst of
samples the one with the shortest round trip is the most trustworthy
(:func:`best_of`; chrony and ntpd filter the same way).

Everything here is pure: no clock is read and none is changed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from enum import Enum, IntEnum
from typing import Any, NamedTuple

from vmis.errors import RemoteProtocolError

__all__ = [
    "BURST",
    "DEFAULT_INTERVAL_MS",
    "DEFAULT_STEP_THRESHOLD",
    "SAMPLE_BURST",
    "SLEW_RATE",
    "SOCK_MAGIC",
    "SOCK_SAMPLE",
    "SYNCHRONIZED_NS",
    "Action",
    "Flag",
    "Mode",
    "Sample",
    "TimeSyncOp",
    "best_of",
    "decide",
    "sock_sample",
    "state_of",
]

#: host setting: milliseconds between two sample bursts (Hyper-V's cadence is
#: undocumented; VirtualBox uses 10 s). Every sample costs the host a round trip
#: and a write: at 1024 VMs time sync is about a third of the host manager's CPU
#: (bench/heartbeat_scale.py), hence the longer waits while a guest stays in step.
DEFAULT_INTERVAL_MS = 10000
#: samples per SYNC burst (session start, resume, clock jump), when accuracy
#: matters most; the one with the shortest round trip is used
BURST = 8
#: samples per periodic SAMPLE burst, which only tracks a clock already in step
SAMPLE_BURST = 2
#: how fast a slew moves a clock: adjtime(3)'s rate on Linux, 500 µs per second
SLEW_RATE = 0.0005
#: guest setting: offsets at least this large (seconds) are stepped, smaller ones slewed.
#: 128 ms is ntpd's step threshold (RFC 5905 STEPT).
DEFAULT_STEP_THRESHOLD = 0.128
#: an offset this small (ns) counts as Synchronized; 1 ms is the accuracy Microsoft
#: states as reachable for Hyper-V guests
SYNCHRONIZED_NS = 1_000_000


class TimeSyncOp(IntEnum):
    """Time Synchronization operations, docs/services/timesync.md."""

    #: host -> guest request ``{"seq"}``; answer ``{"t2", "t3"}`` (guest clock, ns)
    SAMPLE = 1
    #: host -> guest request: the chosen sample and its flag; answer: what the guest did
    APPLY = 2
    #: guest -> host notification ``{"event": "resume"|"jump", "delta_ns"}``: sync now
    CLOCK_EVENT = 3


class Flag(Enum):
    """Hyper-V's ICTIMESYNCFLAG_* (docs/hyperv.md §9): how hard the host asks."""

    #: periodic hint: the guest slews small offsets and steps large ones
    SAMPLE = "sample"
    #: set the clock now (session start: boot, resume, agent restart; a clock event)
    SYNC = "sync"


class Mode(Enum):
    """Who owns the guest's clock."""

    #: vmis adjusts the clock (no NTP daemon runs)
    OWN = "own"
    #: chronyd takes the samples as its SOCK refclock; vmis never touches the clock
    CHRONY = "chrony"
    #: another NTP daemon runs; vmis steps only on SYNC (once), never slews against it
    NTP = "ntp"


class Action(Enum):
    """What the guest did with one sample."""

    NONE = "none"
    SLEW = "slew"
    STEP = "step"
    #: handed to chronyd as a refclock sample
    CHRONY = "chrony"
    #: left to the NTP daemon
    DEFER = "defer"


class Sample(NamedTuple):
    """One exchange's four timestamps, nanoseconds since the Unix epoch.

    A NamedTuple, not a dataclass: the command line imports this module for
    its defaults, and ``dataclasses`` imports ``inspect`` (bench/cli_start.py).
    """

    t1: int
    t2: int
    t3: int
    t4: int

    @property
    def offset_ns(self) -> int:
        """θ: how far the guest's clock is ahead of the host's (negative: behind)."""
        return ((self.t2 - self.t1) + (self.t3 - self.t4)) // 2

    @property
    def rtt_ns(self) -> int:
        """δ: the round trip on the channel, without the guest's processing time."""
        return (self.t4 - self.t1) - (self.t3 - self.t2)

    def to_json(self) -> dict[str, int]:
        """The four timestamps as a json object."""
        return {"t1": self.t1, "t2": self.t2, "t3": self.t3, "t4": self.t4}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Sample:
        """Read the four timestamps from a json object.

        :raise RemoteProtocolError: When one is missing, not an integer, or
            past the 64 bits of a clock's nanoseconds.
        """
        values = []
        for key in ("t1", "t2", "t3", "t4"):
            value = body.get(key)
            if not isinstance(value, int) or isinstance(value, bool) \
                    or not -2**63 <= value < 2**63:
                raise RemoteProtocolError(f"time sample: {key} must be an integer (ns, "
                                          "64 bits)")
            values.append(value)
        return cls(*values)


def best_of(samples: Iterable[Sample]) -> Sample:
    """The sample with the shortest round trip (its offset has the smallest error bound).

    Samples with a negative round trip are impossible unless a clock jumped
    during the exchange, and are dropped.

    :raise ValueError: When no usable sample is left.
    """
    usable = [s for s in samples if s.rtt_ns >= 0]
    if not usable:
        raise ValueError("no usable time sample (every round trip was negative)")
    return min(usable, key=lambda s: s.rtt_ns)


def decide(offset_ns: int, *, mode: Mode, sync: bool, step_threshold_ns: int,
           noise_ns: int = 0) -> Action:
    """What the guest does with a measured offset.

    - chronyd owns the clock: hand it the sample, whatever the flag;
    - a SYNC (session start, resume, clock jump) steps at once, even under
      another NTP daemon: that is the one-shot correction NTP daemons are slow
      to make after a resume; an offset of zero needs nothing;
    - otherwise another NTP daemon is left alone;
    - vmis owns the clock: an offset within the measurement's own
      uncertainty (*noise_ns*, half the round trip: θ is only known to ±δ/2)
      is left alone, so a loaded guest does not slew after its own jitter;
      step at or above the threshold, slew below it.
    """
    if mode is Mode.CHRONY:
        return Action.CHRONY
    if sync:
        return Action.STEP if offset_ns else Action.NONE
    if mode is Mode.NTP:
        return Action.DEFER
    if abs(offset_ns) <= noise_ns:
        return Action.NONE
    if abs(offset_ns) >= step_threshold_ns:
        return Action.STEP
    return Action.SLEW if offset_ns else Action.NONE


def state_of(action: Action, offset_ns: int) -> str:
    """The word Get-VMTimeSync shows for what became of one sample."""
    if action is Action.CHRONY:
        return "Chrony"
    if action is Action.DEFER:
        return "NtpDaemon"
    if action is Action.STEP:
        return "Stepped"
    if action is Action.NONE or abs(offset_ns) <= SYNCHRONIZED_NS:
        return "Synchronized"
    return "Slewing"


# Section: chrony's SOCK refclock

#: chrony refclock_sock.c: ``#define SOCK_MAGIC 0x534f434b`` ("SOCK")
SOCK_MAGIC = 0x534F434B

#: chrony refclock_sock.c ``struct sock_sample``, in native layout as chronyd reads it
#: with recv(2) into the C struct: ``struct timeval tv`` (time_t tv_sec, suseconds_t
#: tv_usec: two C longs on Linux), ``double offset``, ``int pulse``, ``int leap``,
#: ``int _pad``, ``int magic``. 40 bytes on 64-bit Linux.
SOCK_SAMPLE = struct.Struct("@lldiiii")


def sock_sample(system_ns: int, offset_ns: int, leap: int = 0) -> bytes:
    """One datagram for chrony's ``refclock SOCK``.

    :param system_ns: the guest's system time the sample refers to (ns since the epoch).
    :param offset_ns: θ, how far the guest is ahead of the host; chrony wants the
        opposite, "offset between the true time and the system time".
    :param leap: 0 normal, 1 insert a leap second, 2 delete one.
    """
    sec, usec = divmod(system_ns // 1000, 1_000_000)
    return SOCK_SAMPLE.pack(sec, usec, -offset_ns / 1e9, 0, leap, 0, SOCK_MAGIC)
