"""Host half of the heartbeat: beat timing to Hyper-V statuses (docs/protocol.md §7).

Nothing runs per beat but a timestamp update; the status is computed when
asked, from the time of the last beat. That keeps a host with a thousand
VMs beating every second cheap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from vmis.services.heartbeat import (
    DEFAULT_ERROR_THRESHOLD,
    DEFAULT_INTERVAL_MS,
    DEFAULT_LATENCY_MS,
)

__all__ = ["HeartbeatMonitor", "HeartbeatSettings", "HeartbeatState"]


@dataclass(frozen=True, slots=True)
class HeartbeatSettings:
    """Msvm_HeartbeatComponentSettingData: Interval, Latency, ErrorThreshold."""

    interval_ms: int = DEFAULT_INTERVAL_MS
    latency_ms: int = DEFAULT_LATENCY_MS
    error_threshold: int = DEFAULT_ERROR_THRESHOLD

    @property
    def lost_after(self) -> float:
        """Seconds without a beat after which communication counts as lost.

        The first miss is counted ``interval + latency`` after a beat, every
        further one an interval later; ``error_threshold`` misses is lost.
        """
        return (self.interval_ms * self.error_threshold + self.latency_ms) / 1000

    def for_guest(self) -> dict[str, Any]:
        """The settings the guest needs, sent with SET_SERVICE."""
        return {"interval_ms": self.interval_ms}


class HeartbeatState:
    """Contact states, as Get-VM's Heartbeat property words them."""

    NO_CONTACT = "NoContact"
    LOST = "LostCommunication"
    OK = "Ok"


class HeartbeatMonitor:
    """Tracks one VM's beats; :meth:`state` says where contact stands now.

    :param clock: monotonic seconds, injectable for tests.
    """

    def __init__(self, settings: HeartbeatSettings, clock: Any = time.monotonic) -> None:
        self._lost_after = settings.lost_after
        self._settings = settings
        self._clock = clock
        #: monotonic time of the last beat of this session, None before the first
        self.last_beat: float | None = None
        #: sequence number of the last beat
        self.seq = 0
        #: "ok" or "critical": the guest's coalesced application health
        self.health = "ok"
        #: names of the failing health checks
        self.failed: list[str] = []
        self._ended = False

    @property
    def settings(self) -> HeartbeatSettings:
        """Interval, latency and error threshold."""
        return self._settings

    @settings.setter
    def settings(self, settings: HeartbeatSettings) -> None:
        # Kept apart: state() and beat() run for every beat of every VM.
        self._lost_after = settings.lost_after
        self._settings = settings

    def beat(self, seq: int, health: str) -> bool:
        """Record a BEAT; True when contact was not OK just before it (a transition)."""
        now = self._clock()
        last = self.last_beat
        recovered = last is None or self._ended or now - last > self._lost_after
        self.last_beat = now
        self.seq = seq
        self.health = health
        self._ended = False
        return recovered

    def set_health(self, health: str, failed: list[str]) -> None:
        """Record a HEALTH notification."""
        self.health = health
        self.failed = failed

    def session_ended(self) -> None:
        """The channel closed: contact is lost at once, not after the threshold."""
        self._ended = True

    def new_session(self) -> None:
        """A new session started: No Contact until its first beat, unless lost before."""
        self._ended = False
        if self.last_beat is not None:
            # Keep the last beat: until the first beat of the new session the
            # guest counts as lost (it was seen before), not as never seen.
            self.last_beat = min(self.last_beat, self._clock())

    def state(self, now: float | None = None) -> str:
        """``NoContact``, ``LostCommunication`` or ``Ok``, at *now* (the monitor's clock).

        :param now: default: the clock now (a sweep over many VMs reads it once).
        """
        if self.last_beat is None:
            return HeartbeatState.NO_CONTACT
        if now is None:
            now = self._clock()
        if self._ended or now - self.last_beat > self._lost_after:
            return HeartbeatState.LOST
        return HeartbeatState.OK
