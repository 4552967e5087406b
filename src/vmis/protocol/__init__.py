"""The sans-IO vmis wire protocol (docs/protocol.md).

This package contains no networking code at all: it turns bytes into events
and events into bytes. The transports in :mod:`vmis.transport` move the bytes.

Typical host-side use::

    conn = Connection(Role.HOST)
    conn.start_sync()
    write(conn.data_to_send())
    conn.receive_data(read())
    for event in conn.events():
        ...
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmis.protocol.frames import (
        DEFAULT_MAX_PAYLOAD,
        HEADER_SIZE,
        MAGIC,
        Frame,
        FrameDecoder,
        Kind,
        Payload,
        Received,
        encode_frame,
    )
    from vmis.protocol.services import (
        CONTROL,
        FRAMEWORK_VERSIONS,
        ControlOp,
        Negotiated,
        ServiceId,
        Version,
        negotiate,
    )
    from vmis.protocol.session import (
        NEED_DATA,
        Connection,
        ErrorReceived,
        Event,
        NeedData,
        NotificationReceived,
        RequestReceived,
        ResponseReceived,
        Role,
        State,
        StrayResponse,
        Synced,
        decode_json,
        decode_json_raw,
        encode_json,
        encode_json_raw,
    )

__all__ = [
    "CONTROL",
    "DEFAULT_MAX_PAYLOAD",
    "FRAMEWORK_VERSIONS",
    "HEADER_SIZE",
    "MAGIC",
    "NEED_DATA",
    "Connection",
    "ControlOp",
    "ErrorReceived",
    "Event",
    "Frame",
    "FrameDecoder",
    "Kind",
    "NeedData",
    "Negotiated",
    "NotificationReceived",
    "Payload",
    "Received",
    "RequestReceived",
    "ResponseReceived",
    "Role",
    "ServiceId",
    "State",
    "StrayResponse",
    "Synced",
    "Version",
    "decode_json",
    "decode_json_raw",
    "encode_frame",
    "encode_json",
    "encode_json_raw",
    "negotiate",
]


#: the modules behind the names above, lightest first. A module is imported
#: when one of its names is first used, so ``import vmis.protocol.services``
#: (the service catalogue's, and so the guest tools') does not load the framing
#: and session code: they and their dataclasses cost a guest tool 10-20 ms of
#: its start (bench/cli_start.py).
_MODULES = ("services", "frames", "session")


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module in _MODULES:
        home = importlib.import_module(f"{__name__}.{module}")
        if name in home.__all__:
            value = getattr(home, name)
            globals()[name] = value
            return value
    raise AttributeError(f"{__name__}.{name} is in no module of {_MODULES}")
