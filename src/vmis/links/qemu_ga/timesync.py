"""Time Synchronization over qemu-ga: guest-get-time measures, guest-set-time steps.

The host half's bursts stay as they are (docs/services/timesync.md §1): a
SAMPLE is one guest-get-time, whose one reading is both t2 and t3 (qemu-ga
reads the clock once), so the round trip δ includes qemu-ga's own time to
answer and the offset θ is still exact to δ/2. APPLY decides as a vmis guest
would (vmis.services.timesync.decide) with what qemu-ga can do:

- a step is guest-set-time of the host's time now plus half the sample's
  round trip, the time the request takes to reach the guest (an NTP-style
  estimate); qemu-ga then also writes the RTC with ``hwclock``, and a guest
  without hwclock answers with an error after the clock was set, which
  still counts as stepped;
- there is no slew: an offset a vmis guest would slew is left, and the
  state says ``Unslewed`` with a note (Get-VMTimeSync);
- a guest whose NTP daemon owns the clock (its pid file names a running
  chronyd or ntpd, or systemd-timesyncd has synchronised) is left to it
  but for the one step of a SYNC, as in a vmis guest (§2.2); qemu-ga reads
  those files with guest-file-open, at most once a minute.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from vmis.errors import ChannelError, ProtocolError, RemoteServiceError, RequestTimeout
from vmis.links.qemu_ga.offers import FILES
from vmis.links.qemu_ga.translator import LinkContext, Translator, json_body
from vmis.protocol import Payload, Received, encode_json
from vmis.services.catalog import by_key
from vmis.services.timesync import (
    DEFAULT_STEP_THRESHOLD,
    SYNCHRONIZED_NS,
    Action,
    Flag,
    Mode,
    Sample,
    TimeSyncOp,
    decide,
)

__all__ = ["NO_SLEW_NOTE", "TimeSyncTranslator", "ntp_daemon"]

SPEC = by_key("timesync")
STEP_THRESHOLD_NS = int(DEFAULT_STEP_THRESHOLD * 1e9)
#: seconds between two looks for an NTP daemon in the guest
DAEMON_CHECK = 60.0
NO_SLEW_NOTE = ("qemu-ga cannot slew the clock: offsets under "
                f"{DEFAULT_STEP_THRESHOLD * 1000:g} ms are left, larger ones stepped")
#: pid files of NTP daemons (Debian's paths, and the common others) -> process name
PID_FILES = (("/run/chrony/chronyd.pid", "chronyd"), ("/run/chronyd.pid", "chronyd"),
             ("/var/run/chronyd.pid", "chronyd"), ("/run/ntpd.pid", "ntpd"),
             ("/var/run/ntpd.pid", "ntpd"))
#: systemd-timesyncd writes this once it has synchronised the clock
TIMESYNCD_MARK = "/run/systemd/timesync/synchronized"


async def _read_file(link: LinkContext, path: str, limit: int = 4096) -> bytes | None:
    """A small guest file's bytes through guest-file-open/read, None if it cannot be read."""
    try:
        handle = await link.call("guest-file-open", {"path": path, "mode": "r"})
    except RemoteServiceError:
        return None
    try:
        answer = await link.call("guest-file-read", {"handle": handle, "count": limit})
        return base64.b64decode(answer.get("buf-b64", ""))
    except RemoteServiceError:
        return None
    finally:
        await link.call("guest-file-close", {"handle": handle})


async def ntp_daemon(link: LinkContext) -> str | None:
    """The NTP daemon that owns the guest's clock, if qemu-ga's file reads show one."""
    for pid_file, name in PID_FILES:
        text = await _read_file(link, pid_file)
        pid = (text or b"").strip()
        if pid.isdigit():
            comm = await _read_file(link, f"/proc/{int(pid)}/comm")
            if comm is not None and comm.strip().decode(errors="replace") == name:
                return name
    if await _read_file(link, TIMESYNCD_MARK) is not None:
        return "systemd-timesyncd"
    return None


class TimeSyncTranslator(Translator):
    """SAMPLE as guest-get-time, APPLY as guest-set-time or nothing."""

    spec = SPEC

    def __init__(self, link: LinkContext) -> None:
        super().__init__(link)
        self.ops = {TimeSyncOp.SAMPLE: self._sample, TimeSyncOp.APPLY: self._apply}
        self._daemon: str | None = None
        self._daemon_checked = float("-inf")
        self._last_step_ns: int | None = None
        self._last_step_delta_ns: int | None = None

    async def _mode(self) -> Mode:
        now = time.monotonic()
        if self.link.agent.enabled(*FILES) and now - self._daemon_checked > DAEMON_CHECK:
            self._daemon_checked = now
            try:
                self._daemon = await ntp_daemon(self.link)
            except (ChannelError, ProtocolError, RequestTimeout) as exc:
                self.link.log.debug("cannot look for an NTP daemon: %s", exc)
        return Mode.NTP if self._daemon else Mode.OWN

    def _busy(self) -> None:
        if self.link.frozen:
            raise RemoteServiceError("busy", "the guest is frozen for a backup; qemu-ga "
                                             "answers no clock request until the thaw")

    async def _sample(self, payload: Payload, timeout: float | None) -> Received:
        self._busy()
        body = json_body(payload)
        guest_now = await self.link.call("guest-get-time", timeout=timeout)
        mode = await self._mode() if body.get("seq") == 0 else (
            Mode.NTP if self._daemon else Mode.OWN)
        return encode_json({"seq": body.get("seq"), "t2": int(guest_now), "t3": int(guest_now),
                            "mode": mode.value, "pending": False})

    async def _apply(self, payload: Payload, timeout: float | None) -> Received:
        self._busy()
        body = json_body(payload)
        sample = Sample.from_json(body)
        try:
            flag = Flag(body.get("flag"))
        except ValueError:
            raise RemoteServiceError("bad-request", f"unknown flag {body.get('flag')!r}") from None
        mode = await self._mode()
        offset = sample.offset_ns
        action = decide(offset, mode=mode, sync=flag is Flag.SYNC,
                        step_threshold_ns=STEP_THRESHOLD_NS, noise_ns=max(sample.rtt_ns // 2, 0))
        note = ""
        if action is Action.STEP:
            note = await self._step(sample)
            state = "Stepped"
        elif action is Action.SLEW:
            action, state, note = Action.NONE, "Unslewed", NO_SLEW_NOTE
        elif action is Action.DEFER:
            state = "NtpDaemon"
        else:
            state = "Synchronized"
        if state == "Unslewed" and abs(offset) <= SYNCHRONIZED_NS:
            state = "Synchronized"
        answer: dict[str, Any] = {
            "state": state, "action": action.value, "mode": mode.value, "daemon": self._daemon,
            "offset_ns": offset, "rtt_ns": sample.rtt_ns, "note": note,
            "last_step_ns": self._last_step_ns, "last_step_delta_ns": self._last_step_delta_ns,
        }
        return encode_json(answer)

    async def _step(self, sample: Sample) -> str:
        # The guest's clock takes the value when the request arrives: half a round trip on.
        target = time.time_ns() + max(sample.rtt_ns, 0) // 2
        note = ""
        try:
            # Not the sample's timeout: qemu-ga writes the RTC (hwclock, which waits
            # for a second's edge) before it answers, seconds on an emulated CPU.
            await self.link.call("guest-set-time", {"time": target})
        except RemoteServiceError as exc:
            if "hwclock" not in str(exc):
                raise
            note = "the guest's clock was set; its RTC was not (no hwclock in the guest)"
        self._last_step_ns = target
        self._last_step_delta_ns = -sample.offset_ns
        self.link.log.info("qemu-ga: stepped the guest's clock by %+.6f s", -sample.offset_ns / 1e9)
        return note
