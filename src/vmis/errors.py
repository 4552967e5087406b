"""The exception tree of vmis.

Every error vmis raises on purpose derives from :class:`VmisError`; the
command lines print ``str(error)`` as one line and exit non-zero, so messages
are written for an administrator, not for a developer::

    VmisError
     +-- ConfigError              bad configuration file or option value
     +-- ProtocolError            the wire protocol was violated (docs/protocol.md)
     |    +-- LocalProtocolError  we tried to send something illegal
     |    +-- RemoteProtocolError the peer sent something illegal
     +-- ChannelError             the host-guest channel failed
     |    +-- ConnectError        could not open the channel (keeps ``.exc``)
     |    +-- ChannelClosed       the channel closed while a request was pending
     |    +-- RequestTimeout      no answer within the caller's deadline
     +-- RemoteServiceError       the peer answered a request with an error
     +-- NotFoundError            unknown VM, service, key, file ...
     +-- ServiceUnavailable       the service is disabled, stopped or absent
     +-- StateError               the operation does not fit the current state

This module is part of the protocol layer's foundation and imports nothing
but the standard library.
"""

from __future__ import annotations

__all__ = [
    "ChannelClosed",
    "ChannelError",
    "ConfigError",
    "ConnectError",
    "LocalProtocolError",
    "NotFoundError",
    "ProtocolError",
    "RemoteProtocolError",
    "RemoteServiceError",
    "RequestTimeout",
    "ServiceUnavailable",
    "StateError",
    "VmisError",
]


class VmisError(Exception):
    """Root of every error vmis raises on purpose."""


class ConfigError(VmisError):
    """A configuration file or option value is invalid."""


class ProtocolError(VmisError):
    """The wire protocol of docs/protocol.md was violated."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol forbids (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a message the protocol forbids."""


class ChannelError(VmisError):
    """The host-guest channel failed."""


class ConnectError(ChannelError):
    """The channel could not be opened.

    :ivar exc: the underlying OS-level error, if any.
    """

    def __init__(self, message: str, exc: BaseException | None = None) -> None:
        super().__init__(message)
        #: the root cause, kept for logs at DEBUG level
        self.exc = exc


class ChannelClosed(ChannelError):
    """The channel closed while a request was waiting for its answer."""


class RequestTimeout(ChannelError):
    """A request got no answer within the caller's deadline."""


class RemoteServiceError(VmisError):
    """The peer answered a request with an error reply.

    :ivar code: the error code of docs/protocol.md section 5.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        #: machine-readable error code, e.g. ``"disabled"``
        self.code = code


class NotFoundError(VmisError):
    """An unknown VM, service, key, file or similar was named."""


class ServiceUnavailable(VmisError):
    """The service is disabled on the host, stopped or disabled in the guest, or absent."""


class StateError(VmisError):
    """The operation does not fit the current state of its object."""
