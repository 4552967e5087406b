"""Real-effect adapters of the guest agent: the clock, the power switch, the freezer.

Services never change the machine directly; they call these. A real guest
gets the real ones (root needed); a lab VM gets fakes that act on the lab VM
only, so the machine running the lab is never touched:

- :class:`VirtualClock` is the lab VM's own wall clock: the host's clock plus
  an offset kept in ``<root>/var/lib/vmis/clock.json``; stepping and slewing
  change the offset, never the machine's clock;
- :class:`LabPower` ends the lab agent's process, the way a guest powering
  off ends its VM, leaving a note in ``<root>/var/lib/vmis/power.json``;
  ``reboot`` stops the agent in order and starts it again in the same
  process (exec), as a rebooting VM comes back;
- :class:`LabFreezer` is a :class:`~vmis.services.vss.freeze.FakeFreezer`
  that gives the lab VM a mount table and shows what it holds frozen in
  ``<root>/run/vmis/freezer.json``, for tools in other processes.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from vmis.errors import ConfigError, ExternalProgramError
from vmis.services.shutdown import LIST_INHIBITORS, parse_inhibitors
from vmis.services.timesync import SLEW_RATE
from vmis.services.vss.freeze import FakeFreezer, IoctlFreezer

__all__ = [
    "LAB_INHIBIT_DIR",
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

    def blockers(self) -> list[str]:
        """What blocks an orderly shutdown now, one line each (empty: nothing)."""


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
    """The real power switch: runs the configured command (systemd by default).

    :param poweroff: the power-off command line.
    :param reboot: the restart command line.
    :param list_inhibitors: the command whose output :func:`parse_inhibitors` reads.
    """

    def __init__(self, poweroff: tuple[str, ...] = ("systemctl", "poweroff"),
                 reboot: tuple[str, ...] = ("systemctl", "reboot"),
                 list_inhibitors: tuple[str, ...] = LIST_INHIBITORS) -> None:
        self._poweroff = poweroff
        self._reboot = reboot
        self._list_inhibitors = list_inhibitors

    def blockers(self) -> list[str]:
        """logind's block inhibitors on shutdown; none when logind is not there.

        systemctl treats a missing logind the same way ("If logind is not
        around, then there are no inhibitors").
        """
        try:
            proc = subprocess.run(self._list_inhibitors, capture_output=True, text=True,
                                  timeout=10, stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            _log.info("cannot ask logind for inhibitors (%s); assuming none", exc)
            return []
        if proc.returncode != 0:
            _log.info("cannot ask logind for inhibitors (%s); assuming none",
                      proc.stderr.strip() or f"exit {proc.returncode}")
            return []
        try:
            return parse_inhibitors(proc.stdout)
        except ValueError as exc:
            raise ExternalProgramError(f"unexpected answer from logind's ListInhibitors: {exc}") \
                from exc

    def _run(self, argv: tuple[str, ...], reason: str) -> None:
        _log.warning("running %s: %s", " ".join(argv), reason)
        try:
            subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise ExternalProgramError(f"cannot run {' '.join(argv)}: {exc}") from exc

    def poweroff(self, reason: str) -> None:
        self._run(self._poweroff, reason)

    def reboot(self, reason: str) -> None:
        self._run(self._reboot, reason)


# Section: lab adapters


class VirtualClock:
    """A lab VM's wall clock: the host's clock plus a persisted offset.

    A slew moves the offset at :data:`SLEW_RATE`, as adjtime would move a
    real clock, so a lab guest converges the way a real one does. The file
    keeps the offset and any slew in progress (its start on CLOCK_MONOTONIC,
    which every process on the machine shares), so another process (a test,
    ``vmis lab``) reads the lab VM's time exactly; a change written to the
    file by someone else is taken up at once, as a clock jump.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._slew = 0
        self._slew_start = time.monotonic_ns()
        self._stamp: tuple[int, int, int] | None = None
        self._load(strict=True)

    def _load(self, strict: bool) -> None:
        try:
            st = self.path.stat()
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            if not strict:
                return  # caught mid-write by its writer: read it again next time
            raise ConfigError(f"unreadable lab clock file {self.path}: {exc}") from exc
        self._offset = int(data.get("offset_ns", 0))
        self._slew = int(data.get("slew_ns", 0))
        self._slew_start = int(data.get("slew_start_ns", time.monotonic_ns()))
        self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload_if_changed(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        if (st.st_ino, st.st_mtime_ns, st.st_size) != self._stamp:
            self._load(strict=False)

    def _settle(self) -> None:
        # Move the part of the slew that has elapsed into the offset.
        self._reload_if_changed()
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
        tmp.write_text(json.dumps({"offset_ns": self._offset, "slew_ns": self._slew,
                                   "slew_start_ns": self._slew_start}))
        os.replace(tmp, self.path)
        st = self.path.stat()
        self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)


#: lab stand-in for logind's block inhibitors: one file per inhibitor, named by
#: who holds it, holding why (a lab VM has no logind)
LAB_INHIBIT_DIR = "run/vmis/lab-inhibit"


class LabPower:
    """Ends the lab agent's process as a power-off ends a VM.

    The note ``<root>/var/lib/vmis/power.json`` records what happened.
    ``poweroff`` stops the agent in order (SIGTERM to itself) and its process
    ends; ``reboot`` does the same and then executes the agent's own command
    line again in the same process, so the lab VM comes back with a new agent
    (and the pid the lab knows).

    :param root: the lab VM's root directory.
    :param delay: seconds before the agent stops, so the answer reaches the host.
    """

    def __init__(self, root: Path, delay: float = 0.2) -> None:
        self.root = root
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
        # Exec once the interpreter has shut the agent down in order (atexit
        # runs after asyncio.run and the CLI have returned): the same process,
        # a fresh agent, as a VM's reboot keeps the VM but not its memory.
        atexit.register(_reexec)
        self._end("reboot", reason)

    def blockers(self) -> list[str]:
        """Files in ``<root>/run/vmis/lab-inhibit``: ``NAME`` holds it, the text says why."""
        directory = self.root / LAB_INHIBIT_DIR
        try:
            entries = sorted(p for p in directory.iterdir() if p.is_file())
        except FileNotFoundError:
            return []
        return [f"{p.name}: {p.read_text().strip() or 'no reason given'}" for p in entries]


def _reexec() -> None:
    _log.warning("lab VM restarting: exec %s", " ".join(sys.orig_argv))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


#: the mount table of a lab VM without one: what a small VM's /proc/mounts lists
LAB_MOUNTS = (
    "/dev/vda1 / ext4 rw,relatime 0 0\n"
    "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
    "tmpfs /run tmpfs rw,nosuid,nodev,mode=755 0 0\n"
    "/dev/vda2 /var ext4 rw,relatime 0 0\n"
    "/dev/vda15 /boot/efi vfat rw,relatime 0 0\n"
)


#: where a lab VM's freezer keeps the kernel files it stands in for (its mount table):
#: the VM's own /proc is the real kernel's, which the lab never freezes
LAB_KERNEL_DIR = "run/vmis/lab-kernel"


class LabFreezer(FakeFreezer):
    """The lab VM's freezer: remembers, and shows what it remembers.

    A lab VM has no kernel of its own, so this fake gives it a mount table
    (``<kernel_root>/proc/mounts``, written once if absent: ``/``, ``/var`` and
    mounts the VSS rules skip) and, after every call, records the mount
    points it holds frozen and its last calls in ``<root>/run/vmis/freezer.json``:
    the kernel's freeze state, which a test or ``vmis lab`` in another process
    can read. ``/run`` is a tmpfs in a real guest, never frozen, so this is no
    write to a frozen disk.

    :param root: the lab VM's root directory.
    :param kernel_root: where ``proc/mounts`` is kept (default *root*).
    """

    #: calls kept in the state file
    KEEP_CALLS = 100

    def __init__(self, root: Path, kernel_root: Path | None = None) -> None:
        super().__init__()
        self.state_file = root / "run/vmis/freezer.json"
        # A kernel keeps filesystems frozen after the process that froze them
        # dies: a new agent's freezer starts from what the last one recorded.
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            self.frozen = set(json.loads(self.state_file.read_text())["frozen"])
        mounts = (kernel_root or root) / "proc/mounts"
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


def make_adapters(kind: str, root: Path, config: Any = None) -> dict[str, Any]:
    """Build the adapters for ``adapters = real`` or ``fake`` (lab).

    :param config: the agent's configuration (vmis.guest.config.AgentConfig), for
        the ``[shutdown]`` power commands; None uses the defaults.
    :raise ConfigError: For another kind.
    """
    if kind == "real":
        power = SystemPower()
        if config is not None:
            power = SystemPower(tuple(shlex.split(config.poweroff_command)),
                                tuple(shlex.split(config.reboot_command)))
        return {"clock": SystemClock(), "power": power, "freezer": IoctlFreezer()}
    if kind == "fake":
        kernel_root = root / LAB_KERNEL_DIR
        return {
            "clock": VirtualClock(root / "var/lib/vmis/clock.json"),
            "power": LabPower(root),
            "freezer": LabFreezer(root, kernel_root),
            # VSS reads the mount table here, not in the real /proc of the VM's sandbox
            "freeze_root": kernel_root,
        }
    raise ConfigError(f"unknown adapters kind {kind!r}: use real or fake")
