"""The exception tree of vmis.

Every error vmis raises on purpose is one of these classes, raised for what
happened, never the root itself; the command lines print ``str(error)`` as
one line and exit non-zero, so messages are written for an administrator,
not for a developer. The API gives each class a status and rebuilds it on
the other side (vmis/api/errors.py); tests/test_errors.py keeps this drawing
and the classes the same::

    VmisError
     +-- UsageError               the command line is wrong (exit status 2)
     +-- ConfigError              a configuration file, option value or request field is invalid
     +-- AccessError              the caller may not make this request of the host manager's API
     |    +-- AuthenticationError no valid API token was presented (HTTP 401)
     |    +-- AccessDenied        the caller's role does not allow the request (HTTP 403)
     +-- NotFoundError            an unknown VM, service, key, file, device ... was named
     |    +-- UnknownOSError      an OS name the update advisor does not know (``.suggestions``)
     |    +-- QemuNotInstalled    QEMU or another program the QEMU layer needs is missing
     +-- StateError               the operation does not fit the current state
     |    +-- MachineNotRunning   the operation needs a running QEMU process and there is none
     +-- ServiceUnavailable       the service is disabled, stopped or absent
     +-- RequestRefused           a service refused a request with a code (``.code``, protocol §5.1)
     |    +-- ServiceError        this side's service refuses; the agent answers with that code
     |    +-- RemoteServiceError  the peer refused our request: its error reply, as received
     |    +-- TargetBusy          a copy's destination is busy (another copy, a freeze): exit 75
     +-- ProtocolError            the wire protocol was violated (docs/protocol.md)
     |    +-- LocalProtocolError  we tried to send something illegal
     |    +-- RemoteProtocolError the peer sent something illegal
     +-- ChannelError             a channel failed: host-guest, or a command line's to the manager
     |    +-- ConnectError        could not open the channel (``.exc``, kept on this machine)
     |    +-- ChannelClosed       the channel closed while a request was pending
     |    +-- RequestTimeout      no answer within the caller's deadline
     |    +-- MonitorError        QEMU's QMP monitor failed or rejected a command (``.error_class``)
     |    +-- LibvirtError        libvirtd unreachable, or it failed an operation (``.error_code``)
     +-- ManagerApiError          the host manager answered what its API does not define
     +-- LocalFileError           a file or directory on this machine cannot be read or written
     +-- ExternalProgramError     a program vmis runs (virsh, qemu-img, libguestfs, ip ...) failed
     +-- BundleError              a file given as a guest agent bundle is not one
     +-- PackageDataError         data shipped with vmis is malformed (a packaging or editing error)
     |    +-- UpdatePathDataError the update advisor's update_paths.toml is malformed
     +-- KvpFormatError           a KVP key or value cannot be stored in a pool record
     |    +-- KvpSizeError        ... as it is longer than its field (``.field``, ``.size`` ...)
     +-- FreezeError              a guest filesystem could not be frozen; all were thawed again
     +-- ThawError                guest filesystems could not be thawed (``.failures``)
     +-- SnapshotError            the snapshot step of a checkpoint failed (``.output``)
     +-- ImageBuildError          a step of the guest image build failed (``.step``, ``.log``)
     +-- MachineStartError        QEMU refused to start, or the guest in it cannot boot
     +-- InternalError            vmis failed in a way it does not expect (a bug)

A class's attributes beyond its message are declared as annotations: the API
sends them along and sets them on the rebuilt error. This module is part of
the protocol layer's foundation and ships to guests: the standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "AccessDenied",
    "AccessError",
    "AuthenticationError",
    "BundleError",
    "ChannelClosed",
    "ChannelError",
    "ConfigError",
    "ConnectError",
    "ExternalProgramError",
    "FreezeError",
    "ImageBuildError",
    "InternalError",
    "KvpFormatError",
    "KvpSizeError",
    "LibvirtError",
    "LocalFileError",
    "LocalProtocolError",
    "MachineNotRunning",
    "MachineStartError",
    "ManagerApiError",
    "MonitorError",
    "NotFoundError",
    "PackageDataError",
    "ProtocolError",
    "QemuNotInstalled",
    "RemoteProtocolError",
    "RemoteServiceError",
    "RequestRefused",
    "RequestTimeout",
    "ServiceError",
    "ServiceUnavailable",
    "SnapshotError",
    "StateError",
    "TargetBusy",
    "ThawError",
    "UnknownOSError",
    "UpdatePathDataError",
    "UsageError",
    "VmisError",
]


class VmisError(Exception):
    """Root of every error vmis raises on purpose; raise the class that says what happened."""

    #: the exit status of a command line that ends with this error
    exit_status = 1


# Section: the request was wrong


class UsageError(VmisError):
    """The command line is wrong; the message says how."""

    exit_status = 2


class ConfigError(VmisError):
    """A configuration file, option value or request field is invalid."""


class AccessError(VmisError):
    """The caller may not make this request of the host manager's API."""


class AuthenticationError(AccessError):
    """No valid API token came with a request that needs one (docs/api.md §2)."""


class AccessDenied(AccessError):
    """The caller's role does not allow the request (docs/api.md §2)."""


class NotFoundError(VmisError):
    """An unknown VM, service, key, file, device or similar was named."""


class UnknownOSError(NotFoundError):
    """A host or guest OS name matches nothing the advisor knows."""

    #: the closest known names, best first
    suggestions: tuple[str, ...]

    def __init__(self, message: str, suggestions: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.suggestions = tuple(suggestions)


class QemuNotInstalled(NotFoundError):
    """A program the QEMU layer needs is not installed."""


class StateError(VmisError):
    """The operation does not fit the current state of its object."""


class MachineNotRunning(StateError):
    """The operation needs a running QEMU process and there is none."""


class ServiceUnavailable(VmisError):
    """The service is disabled on the host, stopped or disabled in the guest, or absent."""


# Section: a service refused


class RequestRefused(VmisError):
    """A service refused a request with an error code of docs/protocol.md §5.1."""

    #: machine-readable error code, e.g. ``"denied"``
    code: str

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ServiceError(RequestRefused):
    """This side's service refuses a request (a guest half's handler, a copy's own checks).

    The agent answers a handler's ServiceError with its code and anything
    else as ``failed`` (vmis/guest/agent.py).
    """


class RemoteServiceError(RequestRefused):
    """The peer answered our request with an error reply.

    Not a :class:`ServiceError`: a refusal we received is not this side's
    own, so an agent relaying one answers ``failed`` rather than the peer's
    code, and a copy keeps its partial file after the guest's refusal.
    """


class TargetBusy(RequestRefused):
    """A copy's destination is being written by another copy right now, or cannot be
    written for a while (the guest's filesystems are frozen for a backup).

    Its code is ``busy`` (docs/protocol.md §5.1). A command line that ends with
    it exits with status 75 (``EX_TEMPFAIL`` of sysexits.h: try again later).
    """

    exit_status = 75

    def __init__(self, message: str) -> None:
        super().__init__("busy", message)


# Section: the wire and the channels


class ProtocolError(VmisError):
    """The wire protocol of docs/protocol.md was violated."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol forbids (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a message the protocol forbids."""


class ChannelError(VmisError):
    """A channel failed: the host-guest channel, or a command line's to the host manager."""


class ConnectError(ChannelError):
    """The channel could not be opened."""

    #: the underlying OS-level error, if any, kept for logs at DEBUG level (not sent on)
    exc: BaseException | None

    def __init__(self, message: str, exc: BaseException | None = None) -> None:
        super().__init__(message)
        self.exc = exc


class ChannelClosed(ChannelError):
    """The channel closed while a request was waiting for its answer."""


class RequestTimeout(ChannelError):
    """A request got no answer within the caller's deadline."""


class MonitorError(ChannelError):
    """The QMP monitor could not be reached, or QEMU answered a command with an error."""

    #: the ``class`` member of QMP's error reply (e.g. ``"GenericError"``), when QEMU answered
    error_class: str | None

    def __init__(self, message: str, error_class: str | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class


class LibvirtError(ChannelError):
    """libvirtd could not be reached, or it failed an operation for a reason other than a
    missing domain (NotFoundError) or the domain's state (StateError)."""

    #: libvirt's error code name (e.g. ``"VIR_ERR_SYSTEM_ERROR"``), when libvirt gave one
    error_code: str | None

    def __init__(self, message: str, error_code: str | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code


class ManagerApiError(VmisError):
    """The host manager answered something its API does not define (or no error class)."""


# Section: this machine, the programs it runs, the data vmis ships


class LocalFileError(VmisError):
    """A file or directory on this machine cannot be read or written; the message says why."""


class ExternalProgramError(VmisError):
    """A program vmis runs (virsh, qemu-img, libguestfs, busctl, ip ...) failed, timed out,
    answered what vmis cannot read, or cannot run on this machine."""


class BundleError(VmisError):
    """A file given as a guest agent bundle is not one."""


class PackageDataError(VmisError):
    """Data shipped with vmis is malformed: a packaging or editing error, not the user's."""


class UpdatePathDataError(PackageDataError):
    """The update-path data file (update_paths.toml) is malformed."""


class InternalError(VmisError):
    """vmis failed in a way it does not expect (a bug); the message names the Python error."""


# Section: what a service or the QEMU backend could not do


class KvpFormatError(VmisError):
    """A key or value cannot be stored in a pool record."""


class KvpSizeError(KvpFormatError, ValueError):
    """A key or value is longer than its record field."""

    #: ``"key"`` or ``"value"``
    field: str
    #: the encoded size, terminating NUL included
    size: int
    #: the field size (512 or 2048)
    limit: int

    def __init__(self, field: str, size: int, limit: int) -> None:
        super().__init__(
            f"KVP {field} is {size} bytes with its terminating NUL; the limit is {limit}"
        )
        self.field = field
        self.size = size
        self.limit = limit


class FreezeError(VmisError):
    """A filesystem could not be frozen; everything frozen before it was thawed."""

    #: the filesystem that failed
    mountpoint: str
    #: the OS error number, when there is one
    errno: int | None

    def __init__(self, mountpoint: str, err: OSError) -> None:
        super().__init__(
            f"freezing {mountpoint} failed: {err.strerror or err}; all filesystems were "
            "thawed again (report it with /etc/fstab and /proc/mounts)"
        )
        self.mountpoint = mountpoint
        self.errno = err.errno


class ThawError(VmisError):
    """One or more filesystems could not be thawed."""

    #: ``(mountpoint, errno)`` for each failure
    failures: list[tuple[str, int | None]]

    def __init__(self, failures: list[tuple[str, int | None]]) -> None:
        names = ", ".join(
            f"{m} ({os.strerror(e) if e is not None else 'error'})" for m, e in failures
        )
        super().__init__(f"thawing failed for {names}")
        self.failures = failures


class SnapshotError(VmisError):
    """The snapshot step of a checkpoint failed; the message says why."""

    #: what the step printed, if anything
    output: str

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class ImageBuildError(VmisError):
    """A step of the guest image build failed.

    The message names the step and the log file that holds the full output,
    so the one line printed by the CLI is enough to start debugging.
    """

    #: short name of the failing step, e.g. ``"debootstrap"``
    step: str
    #: the build log, if one was being written
    log: Path | None

    def __init__(self, step: str, reason: str, log: Path | None = None) -> None:
        where = f"; full log: {log}" if log is not None else ""
        super().__init__(f"guest image build failed at step {step!r}: {reason}{where}")
        self.step = step
        self.log = log


class MachineStartError(VmisError):
    """QEMU refused to start, or exited before its monitor socket appeared, or the guest
    in it cannot boot."""
