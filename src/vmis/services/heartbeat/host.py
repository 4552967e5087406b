"""Host half of the heartbeat: beat timing to Hyper-V statuses (docs/protocol.md §7).

Nothing runs per beat but a timestamp update; the status is computed when
asked, from the time of the last beat. That keeps a host with a thousand
VMs beating every second cheap. Heartbeat is the host's liveness service:
its part of each VM (:class:`HeartbeatPart`) tells the VM's session whether
the guest is alive (vmis.services.host_half.Liveness), which every other
service's status and the manager's sweep go by.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmis.errors import ProtocolError
from vmis.services.catalog import by_key
from vmis.services.heartbeat import (
    DEFAULT_ERROR_THRESHOLD,
    DEFAULT_INTERVAL_MS,
    DEFAULT_LATENCY_MS,
    HeartbeatOp,
    decode_beat,
)
from vmis.services.host_half import Contact, HostService, VmContext, VmPart, VmRecord
from vmis.services.link import NotificationHandler
from vmis.services.status import OperationalStatus

__all__ = [
    "SERVICE",
    "HeartbeatHost",
    "HeartbeatMonitor",
    "HeartbeatPart",
    "HeartbeatSettings",
    "HeartbeatState",
]


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


class HeartbeatState(Contact):
    """Contact states, as Get-VM's Heartbeat property words them."""


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
        #: seconds between the last two beats, None before the second (a metric)
        self.gap: float | None = None
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
        if last is None:
            recovered = True
        else:
            self.gap = gap = now - last
            recovered = self._ended or gap > self._lost_after
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


def settings_of(vm: VmRecord) -> HeartbeatSettings:
    """A VM's heartbeat settings, as its record keeps them."""
    return HeartbeatSettings(vm.heartbeat_interval_ms, vm.heartbeat_latency_ms,
                             vm.heartbeat_error_threshold)


class HeartbeatPart(VmPart):
    """One VM's beats (a :class:`~vmis.services.host_half.Liveness` for its session)."""

    def __init__(self, vm: VmContext) -> None:
        super().__init__(vm)
        self.monitor = HeartbeatMonitor(settings_of(vm.vm))

    @property
    def health(self) -> str:
        """``ok`` or ``critical``: the guest's application health."""
        return self.monitor.health

    def contact(self, now: float | None = None) -> str:
        return self.monitor.state(now)

    @property
    def interval_ms(self) -> int:
        return self.monitor.settings.interval_ms

    def handlers(self) -> Mapping[int, NotificationHandler]:
        return {HeartbeatOp.BEAT: self._on_beat, HeartbeatOp.HEALTH: self._on_health}

    def settings(self) -> dict[str, Any]:
        return self.monitor.settings.for_guest()

    def on_record_changed(self) -> None:
        self.monitor.settings = settings_of(self.vm.vm)

    def on_link_opened(self) -> None:
        self.monitor.new_session()

    def on_link_closed(self) -> None:
        self.monitor.session_ended()

    def refine_status(self, primary: OperationalStatus, reason: str
                      ) -> tuple[OperationalStatus, OperationalStatus | None, str]:
        state = self.monitor.state()
        if state == HeartbeatState.NO_CONTACT:
            return OperationalStatus.NO_CONTACT, None, "no heartbeat yet"
        if state == HeartbeatState.LOST:
            return OperationalStatus.LOST_COMMUNICATION, None, "heartbeats stopped"
        if self.monitor.health == "critical":
            return (primary, OperationalStatus.APPLICATION_CRITICAL,
                    "failing health checks: " + ", ".join(self.monitor.failed))
        return primary, OperationalStatus.OK, reason

    def _on_beat(self, payload: bytes) -> None:
        try:
            seq, health = decode_beat(payload)
        except ProtocolError as exc:
            self.vm.log.warning("bad heartbeat: %s", exc)
            return
        if self.monitor.beat(seq, health):
            self.vm.log.info("heartbeat: Ok")

    def _on_health(self, payload: bytes) -> None:
        body = self.json_body(payload, "heartbeat")
        if body is None:
            return
        failed = body.get("failed") or []
        self.monitor.set_health(str(body.get("health", "ok")),
                                [str(f) for f in failed] if isinstance(failed, list) else [])
        self.vm.check_status()  # Application Critical, or OK again
        self.vm.log.info("application health: %s %s", self.monitor.health,
                         self.monitor.failed or "")


class HeartbeatHost(HostService[HeartbeatPart]):
    """Heartbeat on the host: the VMs' liveness."""

    spec = by_key("heartbeat")
    liveness = True

    def new_part(self, vm: VmContext) -> HeartbeatPart:
        return HeartbeatPart(vm)


SERVICE = HeartbeatHost
