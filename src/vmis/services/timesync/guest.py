"""Guest half of Time Synchronization: answer samples, adjust the clock, watch for jumps.

The host measures (:mod:`vmis.services.timesync`); the guest decides and acts
through the ``clock`` adapter (clock_settime/adjtime in a real guest, the lab
VM's VirtualClock in the lab), unless an NTP daemon runs:

- chronyd listening on the SOCK refclock socket gets every sample as a
  refclock sample and the clock is never touched (docs/services/timesync.md
  has the chrony.conf line);
- another NTP daemon (or chronyd without that socket) is left alone except
  for the one-shot step of a SYNC.

A watcher compares CLOCK_REALTIME with CLOCK_MONOTONIC and CLOCK_BOOTTIME
every second: BOOTTIME runs on through a suspend and MONOTONIC does not, so a
growing gap between them is a resume; REALTIME moving against MONOTONIC by
more than our own slewing explains is a clock jump. Either makes the next
sample a SYNC, and the host is told at once so it does not wait for its
next interval.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmis.errors import ServiceError
from vmis.protocol import RequestReceived, ServiceId, decode_json, encode_json
from vmis.services.catalog import by_key
from vmis.services.guest_half import GuestContext, GuestService
from vmis.services.timesync import (
    DEFAULT_STEP_THRESHOLD,
    Action,
    Flag,
    Mode,
    Sample,
    TimeSyncOp,
    decide,
    sock_sample,
    state_of,
)
from vmis.services.timesync.jumps import JumpDetector

__all__ = ["NTP_DAEMONS", "SERVICE", "JumpDetector", "TimeSyncService", "find_ntp_daemon"]

_log = logging.getLogger("vmis.guest.timesync")

#: process names (``/proc/PID/comm``, cut at 15 characters) of NTP daemons
NTP_DAEMONS = ("chronyd", "ntpd", "openntpd", "systemd-timesyn", "timesyncd", "ptp4l", "phc2sys")
#: seconds between two looks at the clocks for a resume or a jump
WATCH_INTERVAL = 1.0
#: seconds a look at who owns the clock (a scan of /proc) holds for SAMPLE answers
MODE_TTL = 1.0
def find_ntp_daemon(proc: Path) -> str | None:
    """The name of a running NTP daemon, from ``<proc>/*/comm``; None if there is none."""
    try:
        entries = list(os.scandir(proc))
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            comm = Path(entry.path, "comm").read_text().strip()
        except OSError:
            continue  # the process ended while we looked
        if comm in NTP_DAEMONS:
            return comm
    return None


@dataclass
class GuestTimeStatus:
    """The guest's side of the last sample, for ``vmis-guest timesync status``."""

    mode: str = Mode.OWN.value
    daemon: str | None = None
    state: str = "NoSample"
    action: str = Action.NONE.value
    offset_ns: int | None = None
    rtt_ns: int | None = None
    last_sample_ns: int | None = None
    last_step_ns: int | None = None
    last_step_delta_ns: int | None = None
    note: str = ""


class TimeSyncService(GuestService):
    """vmictimesync: answers samples and keeps the guest clock on the host's time."""

    spec = by_key("timesync")

    def __init__(self, ctx: GuestContext) -> None:
        super().__init__(ctx)
        self.handlers[TimeSyncOp.SAMPLE] = self._sample
        self.handlers[TimeSyncOp.APPLY] = self._apply
        self.control_ops["timesync.status"] = self._status
        self.status = GuestTimeStatus()
        #: True when the next sample must be stepped whatever its flag
        self.sync_pending = True
        self._detector: JumpDetector | None = None
        #: (monotonic time, mode) of the last look at who owns the clock
        self._mode_seen: tuple[float, Mode] | None = None

    # Section: configuration and adapters

    @property
    def clock(self) -> Any:
        """The clock adapter (vmis.guest.adapters.Clock)."""
        clock = self.ctx.adapters.get("clock")
        if clock is None:
            raise ServiceError("failed", "this agent has no clock adapter")
        return clock

    @property
    def step_threshold_ns(self) -> int:
        """``[timesync] step_threshold`` in nanoseconds."""
        seconds = getattr(self.ctx.config, "step_threshold", DEFAULT_STEP_THRESHOLD)
        return int(float(seconds) * 1e9)

    @property
    def chrony_socket(self) -> Path:
        """Where chronyd's SOCK refclock listens (inside the agent's root)."""
        return self.ctx.path(getattr(self.ctx.config, "chrony_socket", "/run/chrony.vmis.sock"))

    async def on_start(self) -> None:
        # A service (re)start is an agent restart or a host re-enable: the
        # clock may be anywhere, so the first sample steps (SYNC).
        self.sync_pending = True
        self._detector = JumpDetector(self.clock.now_ns, self.step_threshold_ns)
        self.spawn(self._watch(), "watch")

    # Section: host requests

    async def _sample(self, request: RequestReceived) -> bytes:
        t2 = self.clock.now_ns()
        body = decode_json(request.payload)
        seq = body.get("seq", 0)
        prev = body.get("prev")
        if isinstance(prev, dict):
            self._took_verdict(prev, t2)
        mode = self._mode_now()
        # t3 is read last, just before the answer is written (vmis.guest.agent
        # responds in the same step), so our own work is outside the round trip.
        # mode and pending let the host leave out an APPLY that would change
        # nothing (docs/services/timesync.md §1.1).
        return encode_json({"seq": seq, "t2": t2, "mode": mode.value,
                            "pending": self.sync_pending, "t3": self.clock.now_ns()})

    def _took_verdict(self, prev: dict[str, Any], now_ns: int) -> None:
        """The host's word on a sample it sent no APPLY for: the clock was left alone."""
        offset, rtt, state, action = (prev.get("offset_ns"), prev.get("rtt_ns"),
                                      prev.get("state"), prev.get("action"))
        if not (isinstance(offset, int) and isinstance(rtt, int) and isinstance(state, str)
                and action in (Action.NONE.value, Action.DEFER.value)):
            self.log.debug("ignored a malformed verdict from the host: %r", prev)
            return
        s = self.status
        s.offset_ns, s.rtt_ns, s.state, s.action = offset, rtt, state, str(action)
        # the judged sample's own arrival here (this clock); else when the word came
        sample_ns = prev.get("sample_ns")
        s.last_sample_ns = sample_ns if isinstance(sample_ns, int) else now_ns

    def _mode_now(self) -> Mode:
        """Who owns the clock, looked at once per :data:`MODE_TTL` (a burst asks up to 8 times)."""
        now = time.monotonic()
        if self._mode_seen is None or now - self._mode_seen[0] > MODE_TTL:
            self._mode_seen = (now, self._mode()[0])
        return self._mode_seen[1]

    async def _apply(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        sample = Sample.from_json(body)
        try:
            flag = Flag(str(body.get("flag", Flag.SAMPLE.value)))
        except ValueError:
            raise ServiceError("bad-request", f"unknown time sync flag {body.get('flag')!r}") \
                from None
        offset = sample.offset_ns
        sync = flag is Flag.SYNC or self.sync_pending
        mode, daemon, note = self._mode()
        self._mode_seen = (time.monotonic(), mode)
        noise = max(sample.rtt_ns // 2, 0)
        action = decide(offset, mode=mode, sync=sync, step_threshold_ns=self.step_threshold_ns,
                        noise_ns=noise)
        if action is Action.CHRONY and not self._to_chrony(offset):
            mode, note = Mode.NTP, (f"chronyd stopped answering on {self.chrony_socket}; "
                                    "leaving the clock to it")
            action = decide(offset, mode=mode, sync=sync, step_threshold_ns=self.step_threshold_ns,
                            noise_ns=noise)
        self._act(action, offset)
        self.sync_pending = False
        s = self.status
        s.mode, s.daemon, s.note, s.action = mode.value, daemon, note, action.value
        s.offset_ns, s.rtt_ns, s.last_sample_ns = offset, sample.rtt_ns, self.clock.now_ns()
        s.state = state_of(action, offset)
        return encode_json({
            "state": s.state, "action": action.value, "mode": mode.value, "daemon": daemon,
            "offset_ns": offset, "rtt_ns": sample.rtt_ns, "note": note,
            "last_step_ns": s.last_step_ns, "last_step_delta_ns": s.last_step_delta_ns,
        })

    def _mode(self) -> tuple[Mode, str | None, str]:
        """Who owns the clock now: ``(mode, daemon name, note)``."""
        if getattr(self.ctx.config, "ntp_daemons", "auto") == "ignore":
            return Mode.OWN, None, ""
        daemon = find_ntp_daemon(self.ctx.path("/proc"))
        if self.chrony_socket.is_socket():
            return Mode.CHRONY, daemon, ""
        if daemon is not None:
            note = ""
            if daemon == "chronyd":
                note = (f"chronyd runs without the vmis refclock; add to chrony.conf: "
                        f"refclock SOCK {self.chrony_socket} refid VMIS")
            return Mode.NTP, daemon, note
        return Mode.OWN, None, ""

    def _to_chrony(self, offset_ns: int) -> bool:
        """Send one refclock sample to chronyd; False when nobody listens."""
        datagram = sock_sample(self.clock.now_ns(), offset_ns)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(datagram, str(self.chrony_socket))
            except OSError as exc:
                self.log.warning("chrony refclock %s: %s", self.chrony_socket, exc)
                return False
        return True

    def _act(self, action: Action, offset_ns: int) -> None:
        clock = self.clock
        if action is Action.STEP:
            # A slew still running would go on after the step and overshoot.
            clock.slew(0)
            clock.step(-offset_ns)
            self.status.last_step_ns = clock.now_ns()
            self.status.last_step_delta_ns = -offset_ns
            self.log.info("stepped the clock by %+.6f s", -offset_ns / 1e9)
            if self._detector is not None:
                self._detector.rebase()
        elif action is Action.SLEW:
            # adjtime semantics: the new correction replaces what is left of
            # the old one, which the measured offset already includes.
            clock.slew(-offset_ns)

    # Section: resume and jump watch

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            detector = self._detector
            event = detector.check() if detector is not None else None
            if event is None:
                continue
            kind, delta = event
            self.log.warning("clock %s detected (%+.3f s); the next sample steps",
                             kind, delta / 1e9)
            self.sync_pending = True
            self.ctx.notify(ServiceId.TIMESYNC, TimeSyncOp.CLOCK_EVENT,
                            encode_json({"event": kind, "delta_ns": delta}))

    # Section: guest tools

    async def _status(self, request: dict[str, Any]) -> Any:
        s = self.status
        mode, daemon, note = self._mode()
        return {
            "state": s.state, "mode": mode.value, "daemon": daemon, "action": s.action,
            "offset_ns": s.offset_ns, "rtt_ns": s.rtt_ns, "last_sample_ns": s.last_sample_ns,
            "last_step_ns": s.last_step_ns, "last_step_delta_ns": s.last_step_delta_ns,
            "sync_pending": self.sync_pending, "note": note or s.note,
            "step_threshold_ns": self.step_threshold_ns,
            "chrony_socket": str(getattr(self.ctx.config, "chrony_socket",
                                         "/run/chrony.vmis.sock")),
            "slew_remaining_ns": self.clock.slew_remaining_ns(),
            "now_ns": self.clock.now_ns(),
        }


#: the agent offers the service this module defines (vmis.guest.services)
SERVICE = TimeSyncService
