"""The error tree over the API: a status for each class, and the JSON that carries an
error to the command line, where it is rebuilt as the same class, message and attributes.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

from vmis import errors

__all__ = [
    "SERVER_FAULTS",
    "STATUS_BY_ERROR",
    "attributes_of",
    "error_from_json",
    "error_to_json",
    "status_for",
]

#: the classes that answer 500 on purpose: a fault of this machine or of vmis
#: itself, not of the request nor of what the manager drives; the root is never
#: raised (tests/test_errors.py) and stays as the last resort of the table
SERVER_FAULTS: tuple[type[errors.VmisError], ...] = (
    errors.InternalError,
    errors.PackageDataError,
    errors.UpdatePathDataError,
    errors.LocalFileError,
    errors.FreezeError,
    errors.ThawError,
    errors.VmisError,
)

#: most specific first: the first matching class decides the status
STATUS_BY_ERROR: tuple[tuple[type[errors.VmisError], int], ...] = (
    (errors.UsageError, 400),
    (errors.ConfigError, 400),
    (errors.BundleError, 400),
    (errors.AuthenticationError, 401),
    (errors.AccessDenied, 403),
    (errors.AccessError, 403),
    (errors.KvpSizeError, 413),
    (errors.KvpFormatError, 400),
    (errors.NotFoundError, 404),
    (errors.StateError, 409),
    (errors.ServiceUnavailable, 503),
    # this side's half refused (a copy's destination exists ...); the guest's refusal
    # reaches the API through the manager, as from a gateway
    (errors.ServiceError, 409),
    # the destination is busy (another copy writes it, the guest is frozen): retry
    (errors.TargetBusy, 409),
    (errors.RemoteServiceError, 502),
    (errors.RequestRefused, 502),
    (errors.RequestTimeout, 504),
    (errors.ChannelError, 502),
    (errors.ProtocolError, 502),
    (errors.ManagerApiError, 502),
    # what the manager drives failed: a program, QEMU, a snapshot step, an image build
    (errors.ExternalProgramError, 502),
    (errors.MachineStartError, 502),
    (errors.SnapshotError, 502),
    (errors.ImageBuildError, 502),
    *((cls, 500) for cls in SERVER_FAULTS),
)

#: every class of the tree by name, to rebuild what the manager raised
_BY_NAME: dict[str, type[errors.VmisError]] = {
    name: cls for name in errors.__all__
    if isinstance(cls := getattr(errors, name), type) and issubclass(cls, errors.VmisError)
}

#: an error reply without a code is a plain failure (docs/protocol.md §5.1)
_DEFAULTS: Mapping[str, object] = {"code": "failed"}


def status_for(exc: errors.VmisError) -> int:
    """The HTTP status of an error."""
    return next(code for cls, code in STATUS_BY_ERROR if isinstance(exc, cls))


def attributes_of(cls: type[errors.VmisError]) -> list[str]:
    """The attributes an error of *cls* carries beyond its message (errors.py's annotations)."""
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        if issubclass(klass, errors.VmisError):
            names += [name for name in inspect.get_annotations(klass) if name not in names]
    return names


#: what an attribute holds that stays on this machine (an OS error object)
_UNSENT = object()


def _plain(value: object) -> object:
    """*value* as JSON, or :data:`_UNSENT`."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple):
        items = [_plain(item) for item in value]
        return _UNSENT if _UNSENT in items else items
    return _UNSENT


def error_to_json(exc: errors.VmisError, type_key: str = "type") -> dict[str, Any]:
    """The JSON of an error: its message, its class under *type_key*, its attributes.

    *type_key* is ``"type"`` in an error answer; the JSON lines and the
    WebSocket of a stream, whose ``type`` says what a line is, name the
    class under ``"class"`` (Copy-VMFile, the update) or ``"error_type"``
    (Invoke-Command).
    """
    body: dict[str, Any] = {"error": str(exc), type_key: type(exc).__name__}
    for name in attributes_of(type(exc)):
        value = _plain(getattr(exc, name, None))
        if value is not None and value is not _UNSENT:
            body[name] = value
    return body


def error_from_json(body: Mapping[str, object], type_key: str = "type") -> errors.VmisError:
    """Rebuild the error the manager raised from its JSON (:func:`error_to_json`).

    An answer that names no class of the tree is the manager's fault: a
    :class:`~vmis.errors.ManagerApiError` with the answer's text.
    """
    cls = _BY_NAME.get(str(body.get(type_key)), errors.ManagerApiError)
    # Not cls(message): FreezeError, KvpSizeError ... build their message from
    # other arguments; the manager already built it.
    exc = cls.__new__(cls)
    Exception.__init__(exc, str(body.get("error", "unknown error")))
    for name in attributes_of(cls):
        setattr(exc, name, body.get(name, _DEFAULTS.get(name)))
    return exc
