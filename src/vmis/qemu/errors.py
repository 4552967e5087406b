"""Temporary: the QEMU layer's errors are classes of the one tree in :mod:`vmis.errors`.

vmis/qemu/machine.py, which another engineer is splitting, still imports
these three from here; everything else imports them from vmis.errors.
tests/test_errors.py (REEXPORTS_LEFT) fails when another module imports from
here, and when machine.py no longer does: then delete this module.
"""

from __future__ import annotations

from vmis.errors import MachineNotRunning, MachineStartError, MonitorError

__all__ = [
    "MachineNotRunning",
    "MachineStartError",
    "MonitorError",
]
