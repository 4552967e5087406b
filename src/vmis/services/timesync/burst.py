"""Time Synchronization on the host: bursts of samples and what Get-VMTimeSync shows.

:func:`measure` runs one burst of SAMPLE exchanges and keeps the best;
:func:`sync_once` adds the APPLY; :class:`TimeSyncMonitor` keeps what
Get-VMTimeSync shows for one VM. The host half
(vmis.services.timesync.host) runs them on each VM's session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vmis.protocol import decode_json, encode_json
from vmis.services.timesync import (
    BURST,
    DEFAULT_INTERVAL_MS,
    DEFAULT_STEP_THRESHOLD,
    SAMPLE_BURST,
    SLEW_RATE,
    SYNCHRONIZED_NS,
    Action,
    Flag,
    Mode,
    Sample,
    TimeSyncOp,
    best_of,
    decide,
    state_of,
)

__all__ = ["MAX_BACKOFF", "MAX_RESYNCS", "PGATE", "RESYNC_RTT_NS", "Requester",
           "TimeSyncMonitor", "measure", "sync_once", "without_apply"]

DEFAULT_STEP_THRESHOLD_NS = int(DEFAULT_STEP_THRESHOLD * 1e9)

#: sends one Time Synchronization request (op, payload) and returns the answer payload
Requester = Callable[[int, bytes], Awaitable[bytes]]


async def measure(request: Requester, clock: Callable[[], int] = time.time_ns,
                  burst: int = BURST, prev: Mapping[str, Any] | None = None,
                  ) -> tuple[Sample, int, dict[str, Any]]:
    """Run *burst* SAMPLE exchanges back to back.

    :param prev: the host's verdict on the last burst, when that burst sent
        no APPLY; the first request carries it so the guest's own status
        stays current (docs/services/timesync.md §1.1).
    :return: the best sample, how many were usable, and the last answer's
        other members (the guest's ``mode`` and ``pending``, when it sends them).
    :raise ValueError: When no sample was usable.
    """
    samples = []
    body: dict[str, Any] = {}
    for seq in range(burst):
        payload = encode_json({"seq": seq, "prev": dict(prev)} if prev and seq == 0
                              else {"seq": seq})
        # t1 as late and t4 as early as the event loop allows: whatever lies
        # between them and the wire counts against the round trip.
        t1 = clock()
        answer = await request(TimeSyncOp.SAMPLE, payload)
        t4 = clock()
        body = decode_json(answer)
        samples.append(Sample.from_json({"t1": t1, "t2": body.get("t2"), "t3": body.get("t3"),
                                         "t4": t4}))
    return best_of(samples), sum(1 for s in samples if s.rtt_ns >= 0), body


def without_apply(sample: Sample, flag: Flag, guest: Mapping[str, Any]) -> Action | None:
    """What the guest would do with *sample* if that is nothing; None when it needs the APPLY.

    The guest's SAMPLE answer says who owns its clock (``mode``) and whether
    it waits to step (``pending``). When :func:`decide` would then leave the
    clock alone (the offset is within the sample's own uncertainty, or
    another NTP daemon owns the clock), the host spares the APPLY round trip;
    the step threshold, which only the guest knows, plays no part in that
    outcome. A SYNC, chrony (which takes every sample) and an older guest
    that does not say its mode always get the APPLY.
    """
    try:
        mode = Mode(guest.get("mode"))
    except ValueError:
        return None
    if flag is Flag.SYNC or guest.get("pending") is not False:
        return None
    action = decide(sample.offset_ns, mode=mode, sync=False,
                    step_threshold_ns=DEFAULT_STEP_THRESHOLD_NS,
                    noise_ns=max(sample.rtt_ns // 2, 0))
    return action if action in (Action.NONE, Action.DEFER) else None


async def sync_once(request: Requester, flag: Flag, clock: Callable[[], int] = time.time_ns,
                    burst: int | None = None, prev: Mapping[str, Any] | None = None,
                    ) -> tuple[Sample, dict[str, Any]]:
    """One measurement and, unless the guest would do nothing with it, its APPLY.

    :param burst: samples to take; default :data:`BURST` for a SYNC and
        :data:`SAMPLE_BURST` for a periodic SAMPLE.
    :param prev: passed on to :func:`measure`.
    :return: the sample and the guest's answer to APPLY, or, when no APPLY
        was sent, the host's own verdict in the same members with
        ``"applied": False``.
    """
    if burst is None:
        burst = BURST if flag is Flag.SYNC else SAMPLE_BURST
    sample, used, guest = await measure(request, clock, burst, prev)
    quiet = without_apply(sample, flag, guest)
    if quiet is not None:
        return sample, {"state": state_of(quiet, sample.offset_ns), "action": quiet.value,
                        "mode": guest["mode"], "offset_ns": sample.offset_ns,
                        "rtt_ns": sample.rtt_ns, "sample_ns": sample.t2, "applied": False}
    answer = await request(TimeSyncOp.APPLY, encode_json(
        {**sample.to_json(), "flag": flag.value, "samples": used}))
    return sample, decode_json(answer)


#: the wait between bursts grows to at most this many intervals (320 s by
#: default; NTP's longest poll is 1024 s): only while the clock stays in step
#: and its measured drift would keep it there (TimeSyncMonitor.record)
MAX_BACKOFF = 32
#: RFC 5905 §11.3 PGATE: an offset within this many times the sample's own
#: uncertainty (half its round trip) is jitter, not a clock out of step
PGATE = 4
#: a SYNC whose best sample was this uncertain (δ/2 over 1 ms) may leave the
#: clock out of step: it is followed by another SYNC after the interval, at
#: most :data:`MAX_RESYNCS` times in a row (TimeSyncMonitor._after_sync)
RESYNC_RTT_NS = 2 * SYNCHRONIZED_NS
MAX_RESYNCS = 3
#: the wait doubles only if the offset, drifting as measured, stays within
#: this by the next burst (half of what counts as Synchronized)
DRIFT_BUDGET_NS = SYNCHRONIZED_NS // 2


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    try:
        return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError, OSError):
        return None  # a time the guest reported that no calendar holds


@dataclass
class TimeSyncMonitor:
    """What the host knows about one VM's clock."""

    #: milliseconds between bursts (host setting)
    interval_ms: int = DEFAULT_INTERVAL_MS
    #: the next burst is a SYNC (session start, clock event, explicit request)
    sync_pending: bool = True
    #: the guest's answer to the last APPLY
    last: dict[str, Any] = field(default_factory=dict)
    last_sample: Sample | None = None
    #: host clock (ns) at the last completed sync
    last_sync_ns: int | None = None
    last_flag: str | None = None
    #: number of completed syncs since the host manager started
    syncs: int = 0
    #: why the last attempt failed, "" after a success
    error: str = ""
    #: a failure since the last success was logged as a warning
    warned: bool = False
    #: the burst loop of the current session, if any
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: multiplier of :attr:`interval_ms` while the guest stays in step
    backoff: int = 1
    #: milliseconds the guest's last slew takes to complete (0: none in progress)
    slew_ms: int = 0
    #: SYNCs repeated in a row because their samples were too uncertain
    resyncs: int = 0
    #: round trip of the last SYNC's sample
    _sync_rtt_ns: int = 0
    #: (host ns, offset, round trip) of the last burst that left the clock alone
    _free: tuple[int, int, int] | None = None

    @property
    def next_wait_ms(self) -> int:
        """How long until the next burst: the interval, stretched while in step.

        As NTP lengthens its poll interval for a stable clock, each burst that
        finds the guest Synchronized doubles the wait, up to
        :data:`MAX_BACKOFF` times the interval, as long as the drift measured
        between bursts would not carry the clock out of step by the next one;
        any other outcome (a slew, a step, a clock event) goes back to the
        interval at once. A host with many VMs spends its time on the clocks
        that need it.

        While the guest slews, the next burst waits until the slew should be
        done (at most the longest wait): a look halfway through would only
        find the correction still under way, as ntpd keeps its poll interval
        rather than shortening it while it slews.
        """
        return max(self.interval_ms * self.backoff,
                   min(self.slew_ms, self.interval_ms * MAX_BACKOFF))

    def record(self, sample: Sample, flag: Flag, answer: dict[str, Any], now_ns: int) -> None:
        """Keep the outcome of one sync (the guest's APPLY answer or, without one, our verdict)."""
        if answer.get("applied") is False:
            # No APPLY: what only the guest says (daemon, note, last step) stands,
            # unless who owns the clock changed since it said it.
            same_owner = self.last.get("mode") == answer.get("mode")
            answer = {**self.last, **answer}
            if not same_owner:
                answer.update(daemon=None, note="")
        self.last, self.last_sample, self.last_flag = answer, sample, flag.value
        self.last_sync_ns = now_ns
        self.syncs += 1
        self.error = ""
        # In step: the guest found its offset within 1 ms or within what this
        # round trip can tell apart (decide() leaves such offsets alone); or it
        # slewed an offset within PGATE times that uncertainty, which is how
        # NTP tells jitter from drift when it adjusts its poll (RFC 5905 §11.3):
        # on a loaded host or guest, round trips of milliseconds otherwise keep
        # every such guest at the shortest wait.
        action = answer.get("action")
        in_step = answer.get("state") in ("Synchronized", "Chrony") or (
            action == "slew" and sample is not None and sample.rtt_ns > 0
            and abs(sample.offset_ns) * 2 <= PGATE * sample.rtt_ns)
        if not in_step:
            self.backoff = 1
        else:
            # One doubling per burst at most, and back down to the longest
            # wait the measured drift allows.
            backoff = min(self.backoff * 2, MAX_BACKOFF)
            while backoff > 1 and not self._stays_in_step(sample, now_ns,
                                                          self.interval_ms * backoff):
                backoff //= 2
            self.backoff = backoff
        if flag is Flag.SYNC and sample is not None:
            self._after_sync(sample, answer)
        # The drift reference: where this burst left the offset. A slew or a
        # step takes it to zero (the next burst comes once a slew is done);
        # chronyd or another NTP daemon steers the clock its own way.
        if sample is None or action not in ("none", "slew", "step"):
            self._free = None
        else:
            self._free = (now_ns, sample.offset_ns if action == "none" else 0, sample.rtt_ns)
        offset = answer.get("offset_ns")
        self.slew_ms = (int(abs(offset) / SLEW_RATE / 1e6)
                        if action == "slew" and isinstance(offset, int) and abs(offset) < 2**63
                        else 0)

    def _after_sync(self, sample: Sample, answer: dict[str, Any]) -> None:
        """Ask for another SYNC when this one's step may have left the clock out of step.

        A step is only as good as its sample: one measured through a busy
        channel (δ/2 of 50 ms at a boot storm) is set right by another SYNC
        once things are quieter, not by minutes of slewing. Only a clock vmis
        owns is stepped again (another NTP daemon gets its one step), and
        only while the round trips get shorter: a channel that is always
        slow gets one more SYNC, not three steps by its noise.
        """
        improving = self.resyncs == 0 or sample.rtt_ns * 2 <= self._sync_rtt_ns
        if (answer.get("action") == "step" and answer.get("mode") == Mode.OWN.value
                and sample.rtt_ns > RESYNC_RTT_NS and self.resyncs < MAX_RESYNCS
                and improving):
            self.sync_pending = True
            self.resyncs += 1
        else:
            self.resyncs = 0
        self._sync_rtt_ns = sample.rtt_ns

    def _stays_in_step(self, sample: Sample, now_ns: int, wait_ms: int) -> bool:
        """Whether the offset, drifting as since the last free-running burst, stays in budget.

        The drift is what the offset moved since the reference (the last
        burst that left the clock alone, or zero after a correction) beyond
        the two measurements' uncertainty (δ/2 each), so jitter does not count.
        """
        if self._free is None or sample is None:
            return True
        then_ns, then_offset, then_rtt = self._free
        elapsed = now_ns - then_ns
        if elapsed <= 0:
            return True
        moved = abs(sample.offset_ns - then_offset) - (max(sample.rtt_ns, 0)
                                                       + max(then_rtt, 0)) // 2
        drift = max(moved, 0) / elapsed
        return abs(sample.offset_ns) + drift * wait_ms * 1_000_000 <= DRIFT_BUDGET_NS

    @property
    def verdict(self) -> dict[str, Any] | None:
        """The host's verdict on the last burst when it sent no APPLY (for the guest's status)."""
        if self.last.get("applied") is not False:
            return None
        return {k: self.last.get(k)
                for k in ("state", "action", "offset_ns", "rtt_ns", "sample_ns")}

    def request_sync(self) -> None:
        """Make the next burst a SYNC and run it now."""
        self.sync_pending = True
        self.backoff = 1
        self.slew_ms = 0
        self.resyncs = 0
        self._free = None
        self.wake.set()

    def row(self, vm_name: str, state_override: str | None = None) -> dict[str, Any]:
        """Get-VMTimeSync's record for this VM.

        :param state_override: the state when the service cannot be asked now
            (``Disabled``, ``NoContact``, ``Stopped``), else the guest's last word.
        """
        last = self.last
        sample = self.last_sample
        state = state_override or (str(last.get("state")) if last else "NoContact")
        step_ns = last.get("last_step_ns")
        return {
            "VMName": vm_name,
            "State": state,
            "OffsetNs": sample.offset_ns if sample else None,
            "RoundTripNs": sample.rtt_ns if sample else None,
            "Action": last.get("action"),
            "Mode": last.get("mode"),
            "Daemon": last.get("daemon"),
            "Flag": self.last_flag,
            "LastSample": _iso(self.last_sync_ns),
            "LastStep": _iso(step_ns if isinstance(step_ns, int) else None),
            "LastStepDeltaNs": last.get("last_step_delta_ns"),
            "IntervalMs": self.interval_ms,
            "NextWaitMs": self.next_wait_ms,
            "Syncs": self.syncs,
            "Note": last.get("note") or "",
            "Error": self.error,
        }
