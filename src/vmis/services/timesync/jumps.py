"""Clock jumps and resumes from suspend, seen by comparing a wall clock with the kernel's.

A watcher compares a wall clock (CLOCK_REALTIME, or the lab's VirtualClock,
or the host's time sync reference) with CLOCK_MONOTONIC and CLOCK_BOOTTIME
every second or so: BOOTTIME runs on through a suspend and MONOTONIC does
not, so a growing gap between them is a resume; the wall clock moving
against MONOTONIC by more than slewing explains is a jump. The guest half
tells the host of either at once (CLOCK_EVENT); the host half runs a SYNC
for every guest when its own reference clock jumps.

Standard library only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["JumpDetector"]

#: the fastest a well-behaved slew moves the clock: chrony's default maxslewrate
#: (83333 ppm) bounds every daemon we cooperate with; adjtime(3) uses 500 ppm
_MAX_SLEW_RATE = 0.084


def _boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class JumpDetector:
    """Notices a resume from suspend and a clock that jumped.

    :param realtime: the guest's wall clock (the clock adapter's ``now_ns``).
    :param threshold_ns: changes below this are not reported.
    :param monotonic: CLOCK_MONOTONIC (stops during a suspend).
    :param boottime: CLOCK_BOOTTIME (runs on during a suspend).
    """

    def __init__(
        self,
        realtime: Callable[[], int],
        threshold_ns: int,
        monotonic: Callable[[], int] = time.monotonic_ns,
        boottime: Callable[[], int] = _boottime_ns,
    ) -> None:
        self._realtime = realtime
        self._monotonic = monotonic
        self._boottime = boottime
        self.threshold_ns = threshold_ns
        self._mono = 0
        self._wall_gap = 0
        self._sleep_gap = 0
        self.rebase()

    def rebase(self) -> None:
        """Take the clocks as they are now (after a step of our own)."""
        self._mono = self._monotonic()
        self._wall_gap = self._realtime() - self._mono
        self._sleep_gap = self._boottime() - self._mono

    def check(self) -> tuple[str, int] | None:
        """``("resume", slept_ns)``, ``("jump", delta_ns)`` or None; rebases after an event."""
        mono = self._monotonic()
        wall_gap = self._realtime() - mono
        sleep_gap = self._boottime() - mono
        slept = sleep_gap - self._sleep_gap
        moved = wall_gap - self._wall_gap
        # Slewing (ours or an NTP daemon's) moves the wall clock against the
        # monotonic one, but never faster than the maximum slew rate.
        allowed = int((mono - self._mono) * _MAX_SLEW_RATE) + self.threshold_ns
        self._mono, self._wall_gap, self._sleep_gap = mono, wall_gap, sleep_gap
        if slept >= self.threshold_ns:
            return ("resume", slept)
        if abs(moved) > allowed:
            return ("jump", moved)
        return None
