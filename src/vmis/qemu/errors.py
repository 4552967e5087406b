"""Errors of the QEMU layer, as subclasses of the project's tree in :mod:`vmis.errors`.

They refine the existing classes so a caller that only knows the project-wide
tree still catches them in the right place::

    VmisError
     +-- ImageBuildError          a step of the guest image build failed (names step and log)
     +-- NotFoundError
     |    +-- QemuNotInstalled    qemu-system-x86_64 (or another tool) is missing
     +-- StateError
     |    +-- MachineNotRunning   the QEMU process is gone
     +-- MachineStartError        QEMU refused to start or died while starting
     +-- ChannelError
          +-- MonitorError        the QMP socket failed or QEMU rejected a command
"""

from __future__ import annotations

from pathlib import Path

from vmis.errors import ChannelError, NotFoundError, StateError, VmisError

__all__ = [
    "ImageBuildError",
    "MachineNotRunning",
    "MachineStartError",
    "MonitorError",
    "QemuNotInstalled",
]


class ImageBuildError(VmisError):
    """A step of the guest image build failed.

    The message names the step and the log file that holds the full output,
    so the one line printed by the CLI is enough to start debugging.
    """

    def __init__(self, step: str, reason: str, log: Path | None = None) -> None:
        where = f"; full log: {log}" if log is not None else ""
        super().__init__(f"guest image build failed at step {step!r}: {reason}{where}")
        #: short name of the failing step, e.g. ``"debootstrap"``
        self.step = step
        #: the build log, if one was being written
        self.log = log


class QemuNotInstalled(NotFoundError):
    """A program the QEMU layer needs is not installed."""


class MachineNotRunning(StateError):
    """The operation needs a running QEMU process and there is none."""


class MachineStartError(VmisError):
    """QEMU refused to start, or exited before its monitor socket appeared."""


class MonitorError(ChannelError):
    """The QMP monitor could not be reached, or QEMU answered a command with an error.

    :ivar error_class: QMP's error class (e.g. ``"GenericError"``), when QEMU answered.
    """

    def __init__(self, message: str, error_class: str | None = None) -> None:
        super().__init__(message)
        #: the ``class`` member of QMP's error reply, if any
        self.error_class = error_class
