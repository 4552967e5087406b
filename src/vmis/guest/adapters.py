"""Real-effect adapters of the guest agent: the clock, the power switch, the freezer.

Services never change the machine directly; they call these. A real guest
gets the real ones (root needed); a lab VM gets fakes that act on the lab VM
only, so the machine running the lab is never touched:

- :class:`VirtualClock` is the lab VM's own wall clock: the host's clock plus
  an offset kept in ``<root>/var/lib/vmis/clock.json``; stepping and slewing
  change the offset, never the machine's clock;
- :class:`LabPower` ends the lab agent's process, the way a guest powering
  off ends its VM, leaving a note the lab reads (``reboot`` restarts it);
- :class:`LabFreezer` is a :class:`~vmis.services.vss.freeze.FakeFreezer`
  that gives the lab VM a mount table and shows what it holds frozen in
  ``<root>/run/vmis/freezer.json``, for tools in other processes.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

from vmis.errors import ConfigError, VmisError
from vmis.services.vss.freeze import FakeFreezer, IoctlFreezer

__all__ = [
    "Clock",
    "LabFreezer",
    "LabPower",
    "Power",
    "SystemClock",
    "SystemPower",
    "VirtualClock",
    "make_adapters",
]

_log = logging.getLogger("vmis.guest.adapters")

#: the slew rate adjtime(3) uses on Linux: 500 microseconds per second
SLEW_RATE = 0.0005


class Clock(Protocol):
    """The guest's wall clock (CLOCK_REALTIME)."""

    def now_ns(self) -> int:
        """Wall-clock time, nanoseconds since the Unix epoch."""

    def step(self, delta_ns: int) -> None:
        """Jump the clock by *delta_ns* at once."""

    def slew(self, delta_ns: int) -> None:
        """Correct the clock by *delta_ns* gradually (replaces any slew in progress)."""

    def slew_remaining_ns(self) -> int:
        """What is left of the current slew."""


class Power(Protocol):
    """Turns the guest off or restarts it."""

    def poweroff(self, reason: str) -> None:
        """Begin an orderly power-off."""

    def reboot(self, reason: str) -> None:
        """Begin an orderly restart."""


# Section: real adapters


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class SystemClock:
    """The real clock: clock_settime to step, adjtime(3) to slew. Needs CAP_SYS_TIME."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    def now_ns(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_REALTIME)

    def step(self, delta_ns: int) -> None:
        time.clock_settime_ns(time.CLOCK_REALTIME, time.clock_gettime_ns(time.CLOCK_REALTIME)
                              + delta_ns)

    def _adjtime(self, delta_ns: int | None) -> int:
        old = _Timeval()
        new = None
        if delta_ns is not None:
            sec, usec = divmod(delta_ns // 1000, 1_000_000)
            new = ctypes.byref(_Timeval(sec, usec))
        if self._libc.adjtime(new, ctypes.byref(old)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), "adjtime")
        return (int(old.tv_sec) * 1_000_000 + int(old.tv_usec)) * 1000

    def slew(self, delta_ns: int) -> None:
        self._adjtime(delta_ns)

    def slew_remaining_ns(self) -> int:
        return self._adjtime(None)


class SystemPower:
    """The real power switch: runs the configured command (systemd by default)."""

    def __init__(self, poweroff: tuple[str, ...] = ("systemctl", "poweroff"),
                 reboot: tuple[str, ...] = ("systemctl", "reboot")) -> None:
        self._poweroff = poweroff
        self._reboot = reboot

    def _run(self, argv: tuple[str, ...], reason: str) -> None:
        _log.warning("running %s: %s", " ".join(argv), reason)
        try:
            subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise VmisError(f"cannot run {' '.join(argv)}: {exc}") from exc

    def poweroff(self, reason: str) -> None:
        self._run(self._poweroff, reason)

    def reboot(self, reason: str) -> None:
        self._run(self._reboot, reason)


# Section: lab adapters


class VirtualClock:
    """A lab VM's wall clock: the host's clock plus a persisted offset.

    A slew moves the offset at :data:`SLEW_RATE`, as adjtime would move a
    real clock, so a lab guest converges the way a real one does.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._slew = 0
        self._slew_start = time.monotonic_ns()
        try:
            data = json.loads(path.read_text())
            self._offset = int(data.get("offset_ns", 0))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            raise ConfigError(f"unreadable lab clock file {path}: {exc}") from exc

    def _settle(self) -> None:
        # Move the part of the slew that has elapsed into the offset.
        now = time.monotonic_ns()
        done = min(abs(self._slew), int((now - self._slew_start) * SLEW_RATE))
        applied = done if self._slew >= 0 else -done
        self._offset += applied
        self._slew -= applied
        self._slew_start = now

    def offset_ns(self) -> int:
        """The current difference from the host's clock."""
        self._settle()
        return self._offset

    def now_ns(self) -> int:
        return time.time_ns() + self.offset_ns()

    def step(self, delta_ns: int) -> None:
        self._settle()
        self._offset += delta_ns
        self._save()

    def slew(self, delta_ns: int) -> None:
        self._settle()
        self._slew = delta_ns
        self._save()

    def slew_remaining_ns(self) -> int:
        self._settle()
        return self._slew

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"offset_ns": self._offset}))
        os.replace(tmp, self.path)


class LabPower:
    """Ends the lab agent's process as a power-off ends a VM.

    The note ``<root>/var/lib/vmis/power.json`` tells the lab what happened,
    so ``reboot`` can start the agent again and ``poweroff`` leaves it off.
    """

    def __init__(self, root: Path, delay: float = 0.2) -> None:
        self.note = root / "var/lib/vmis/power.json"
        self.delay = delay

    def _end(self, action: str, reason: str) -> None:
        self.note.parent.mkdir(parents=True, exist_ok=True)
        self.note.write_text(json.dumps({"action": action, "reason": reason,
                                         "time": time.time()}))
        _log.warning("lab VM %s: %s", action, reason)
        # Leave time for the answer to reach the host, as a real guest does.
        asyncio.get_running_loop().call_later(self.delay, os.kill, os.getpid(), signal.SIGTERM)

    def poweroff(self, reason: str) -> None:
        self._end("poweroff", reason)

    def reboot(self, reason: str) -> None:
        self._end("reboot", reason)


#: the mount table of a lab VM without one: what a small VM's /proc/mounts lists
LAB_MOUNTS = (
    "/dev/vda1 / ext4 rw,relatime 0 0\n"
    "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
    "tmpfs /run tmpfs rw,nosuid,nodev,mode=755 0 0\n"
    "/dev/vda2 /var ext4 rw,relatime 0 0\n"
    "/dev/vda15 /boot/efi vfat rw,relatime 0 0\n"
)


class LabFreezer(FakeFreezer):
    """The lab VM's freezer: remembers, and shows what it remembers.

    A lab VM has no kernel, so this fake gives it a mount table
    (``<root>/proc/mounts``, written once if absent: ``/``, ``/var`` and
    mounts the VSS rules skip) and, after every call, records the mount
    points it holds frozen and its last calls in ``<root>/run/vmis/freezer.json``:
    the kernel's freeze state, which a test or ``vmis lab`` in another process
    can read. ``/run`` is a tmpfs in a real guest, never frozen, so this is no
    write to a frozen disk.
    """

    #: calls kept in the state file
    KEEP_CALLS = 100

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.state_file = root / "run/vmis/freezer.json"
        mounts = root / "proc/mounts"
        if not mounts.exists():
            mounts.parent.mkdir(parents=True, exist_ok=True)
            mounts.write_text(LAB_MOUNTS)

    def freeze(self, mountpoint: str) -> None:
        try:
            super().freeze(mountpoint)
        finally:
            self._record()

    def thaw(self, mountpoint: str) -> None:
        try:
            super().thaw(mountpoint)
        finally:
            self._record()

    def _record(self) -> None:
        state = {"frozen": sorted(self.frozen), "calls": self.calls[-self.KEEP_CALLS:]}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(f".{self.state_file.name}.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_file)


def make_adapters(kind: str, root: Path) -> dict[str, Any]:
    """Build the adapters for ``adapters = real`` or ``fake`` (lab).

    :raise ConfigError: For another kind.
    """
    if kind == "real":
        return {"clock": SystemClock(), "power": SystemPower(), "freezer": IoctlFreezer()}
    if kind == "fake":
        return {
            "clock": VirtualClock(root / "var/lib/vmis/clock.json"),
            "power": LabPower(root),
            "freezer": LabFreezer(root),
        }
    raise ConfigError(f"unknown adapters kind {kind!r}: use real or fake")
