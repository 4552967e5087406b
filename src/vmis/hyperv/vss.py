"""The VSS (Backup) daemon: ``hv_vss_daemon`` in Python.

Protocol (facts section 5): the daemon registers by writing a 12-byte
``hv_vss_msg`` with operation REGISTER1 and the kernel answers with its
4-byte version.  Then the kernel forwards FREEZE, THAW and HOT_BACKUP (12
bytes, operation only); the reply is the same 12 bytes with ``error``
(HV_S_OK / HV_E_FAIL) over the header.

=========== ====================================================================
FREEZE      freeze every candidate filesystem, ``/`` last
            (:mod:`vmis.services.vss.freeze`); any failure thaws all, HV_E_FAIL
THAW        thaw them all
HOT_BACKUP  "can you do a live backup?": yes (HV_S_OK), as the C daemon says
other       logged, HV_S_OK
=========== ====================================================================

Two things the C daemon does not do:

* nothing is logged while filesystems are frozen: the log handler holds the
  records and emits them after the thaw (a log write to a frozen journal
  would block the daemon, and with it the THAW);
* if the host's THAW does not come within ``thaw_timeout`` seconds, the
  daemon thaws by itself (the host's backup failed or the host went away; a
  guest left frozen hangs every writer).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable

from vmis.errors import FreezeError, RemoteProtocolError, ThawError
from vmis.hyperv.constants import HResult, VssOp
from vmis.hyperv.daemon import HoldableHandler
from vmis.hyperv.messages import VSS_MSG_SIZE, VssMessage
from vmis.services.vss.freeze import FilesystemFreeze

__all__ = ["DEFAULT_THAW_TIMEOUT", "VssHandler"]

#: Seconds a freeze may last without the host's THAW before we thaw ourselves.
DEFAULT_THAW_TIMEOUT = 300.0


class VssHandler:
    """Serves VSS requests from the kernel (a :class:`~vmis.hyperv.daemon.Handler`).

    :param freeze: freezes and thaws the guest's filesystems.
    :param log_holder: the log handler to hold while frozen.
    :param logger: where to log.
    :param thaw_timeout: seconds until the watchdog thaws.
    :param clock: monotonic clock (replaceable in tests).
    """

    name = "vss"
    max_message = VSS_MSG_SIZE

    def __init__(self, freeze: FilesystemFreeze, log_holder: HoldableHandler,
                 logger: logging.Logger, thaw_timeout: float = DEFAULT_THAW_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fs = freeze
        self._holder = log_holder
        self._log = logger
        self._thaw_timeout = thaw_timeout
        self._clock = clock
        self._deadline: float | None = None
        #: the kernel's VSS version from registration
        self.kernel_version: int | None = None

    @property
    def frozen(self) -> bool:
        """Whether we have filesystems frozen."""
        return self._deadline is not None

    # Section: registration

    def registration(self) -> bytes:
        """A 12-byte message with operation REGISTER1."""
        return VssMessage(VssOp.REGISTER1).pack()

    def registration_reply_size(self) -> int:
        """The kernel answers REGISTER1 with a 4-byte version."""
        return 4

    def registered(self, reply: bytes | None) -> None:
        """Check and keep the kernel's version.

        :raise RemoteProtocolError: When the reply is not 4 bytes.
        """
        if reply is None or len(reply) != 4:
            raise RemoteProtocolError(
                f"VSS registration reply must be 4 bytes, got {0 if reply is None else len(reply)}"
            )
        (self.kernel_version,) = struct.unpack("<I", reply)
        self._log.info("VSS: kernel version %d", self.kernel_version)

    # Section: requests

    def handle(self, message: bytes) -> bytes:
        """Serve one request.

        :raise RemoteProtocolError: When the message is not 12 bytes.
        """
        request = VssMessage.unpack(message)
        op = request.operation
        if op == VssOp.FREEZE:
            error = self._freeze()
        elif op == VssOp.THAW:
            error = self._thaw("THAW from the host")
        elif op == VssOp.HOT_BACKUP:
            self._log.info("VSS: hot backup check: supported")
            error = HResult.HV_S_OK
        else:
            self._log.warning("VSS: unknown operation %d", op)
            error = HResult.HV_S_OK
        return struct.pack("<I", error) + message[4:]

    def _freeze(self) -> int:
        self._holder.hold()
        try:
            frozen = self._fs.freeze()
        except FreezeError as err:
            self._deadline = None
            self._holder.resume()
            self._log.error("VSS: %s", err)
            return HResult.HV_E_FAIL
        except OSError as err:
            self._deadline = None
            self._holder.resume()
            self._log.error("VSS: cannot read the mount table: %s", err)
            return HResult.HV_E_FAIL
        self._deadline = self._clock() + self._thaw_timeout
        # held until the thaw, like every other record while frozen
        self._log.info("VSS: froze %s", ", ".join(frozen) or "nothing")
        return HResult.HV_S_OK

    def _thaw(self, why: str) -> int:
        self._deadline = None
        try:
            thawed = self._fs.thaw()
        except ThawError as err:
            self._holder.resume()
            self._log.error("VSS: %s", err)
            return HResult.HV_E_FAIL
        self._holder.resume()
        self._log.info("VSS: thawed %s (%s)", ", ".join(thawed) or "nothing", why)
        return HResult.HV_S_OK

    # Section: timers and resets

    def deadline(self) -> float | None:
        """When the watchdog thaws, while frozen."""
        return self._deadline

    def on_deadline(self) -> None:
        """No THAW in time: thaw by ourselves."""
        if self._deadline is not None:
            self._thaw(f"no THAW from the host within {self._thaw_timeout:g} s: watchdog")

    def reset(self) -> None:
        """Channel lost or daemon stopping: never leave the guest frozen."""
        if self._deadline is not None or self._holder.holding:
            self._thaw("the channel to the kernel closed")
