"""One table from vmis errors to HTTP statuses, used by the server and the client."""

from __future__ import annotations

from vmis import errors

__all__ = ["STATUS_BY_ERROR", "error_from_json", "status_for"]

#: most specific first: the first matching class decides the status
STATUS_BY_ERROR: tuple[tuple[type[errors.VmisError], int], ...] = (
    (errors.NotFoundError, 404),
    (errors.StateError, 409),
    (errors.ConfigError, 400),
    (errors.ServiceUnavailable, 503),
    (errors.RequestTimeout, 504),
    (errors.ChannelError, 502),
    (errors.RemoteServiceError, 502),
    (errors.ProtocolError, 502),
    (errors.VmisError, 500),
)

_BY_NAME = {cls.__name__: cls for cls, _ in STATUS_BY_ERROR}
_BY_NAME.update({c.__name__: c for c in (errors.ConnectError, errors.ChannelClosed,
                                         errors.RemoteProtocolError, errors.LocalProtocolError)})


def status_for(exc: errors.VmisError) -> int:
    """The HTTP status of an error."""
    return next(code for cls, code in STATUS_BY_ERROR if isinstance(exc, cls))


def error_from_json(body: dict[str, object]) -> errors.VmisError:
    """Rebuild the error the server raised from its JSON body."""
    message = str(body.get("error", "unknown error"))
    cls = _BY_NAME.get(str(body.get("type")), errors.VmisError)
    if cls is errors.RemoteServiceError:
        return errors.RemoteServiceError(str(body.get("code", "failed")), message)
    if cls is errors.ConnectError:
        return errors.ConnectError(message)
    return cls(message)
