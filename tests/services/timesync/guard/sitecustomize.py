"""Test guard loaded into the lab's host-side processes: refuse and record every real clock setter.

Put this directory on PYTHONPATH and name a log file in $VMIS_TEST_CLOCK_GUARD;
every Python process started from then on writes ``loaded PID ARGV`` to it and,
if anything tries to set the machine's clock, ``refused PID NAME`` (and the
call fails with PermissionError). The tests assert the agents were guarded and
that nothing was refused.
"""

import ctypes
import os
import sys
import time

_LOG = os.environ.get("VMIS_TEST_CLOCK_GUARD")
#: libc entry points that change the clock
_LIBC_SETTERS = {"adjtime", "adjtimex", "ntp_adjtime", "clock_adjtime", "settimeofday",
                 "clock_settime", "stime"}


def _write(line: str) -> None:
    with open(_LOG, "a") as log:  # noqa: PTH123 - the guard keeps to builtins
        log.write(line + "\n")


def _refuse(name):
    def refuse(*args, **kwargs):
        _write(f"refused {os.getpid()} {name}")
        raise PermissionError(f"test guard: {name} would change the machine's clock")

    return refuse


if _LOG:
    _write(f"loaded {os.getpid()} {' '.join(sys.orig_argv)}".replace("\n", " "))
    time.clock_settime = _refuse("clock_settime")
    time.clock_settime_ns = _refuse("clock_settime_ns")
    _getitem = ctypes.CDLL.__getitem__

    def _guarded_getitem(self, name):
        if isinstance(name, str) and name in _LIBC_SETTERS:
            return _refuse(f"libc.{name}")
        return _getitem(self, name)

    ctypes.CDLL.__getitem__ = _guarded_getitem
