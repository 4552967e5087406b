"""The file-copy (Guest Service Interface) daemon: ``hv_fcopy_daemon`` in Python.

Protocol, legacy character device (facts section 6.2): the daemon writes a
4-byte int 1 (FCOPY_CURRENT_VERSION) and the kernel answers with its 4-byte
version.  Then ``Copy-VMFile`` arrives as START_FILE_COPY (1088 bytes, names
in UTF-8), WRITE_TO_FILE x N (6196 bytes, at most 6 KiB each at an explicit
offset), and COMPLETE_FCOPY or CANCEL_FCOPY; each reply is a 4-byte status.

File semantics follow the C daemon, error codes included:

* target = ``<path_name>/<file_name>``; a missing directory of the path is
  created (0755) with CREATE_PATH, else HV_E_FAIL.  *Every* missing
  directory is created: the C daemon skips the last one unless the path ends
  in ``/`` (and then fails) -- that bug is not copied;
* an existing target without OVER_WRITE: HV_ERROR_ALREADY_EXISTS;
* a short write: HV_ERROR_DISK_FULL on ENOSPC, else HV_E_FAIL;
* the file is created mode 0744, as the C daemon does.

Better than the C daemon: the data goes to a temporary file beside the
target, renamed over it on COMPLETE.  So a cancelled, abandoned or crashed
copy leaves nothing behind -- neither a partial file nor a truncated
original.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import struct
from pathlib import Path

from vmis.errors import RemoteProtocolError
from vmis.hyperv.constants import FCOPY_CURRENT_VERSION, FcopyFlag, FcopyOp, HResult
from vmis.hyperv.messages import FCOPY_DO_SIZE, FcopyData, FcopyStart, cstring

__all__ = ["FcopyHandler"]

#: Mode of copied files (the C daemon's 0744).
FILE_MODE = 0o744
#: file offsets are a signed 64-bit off_t
_MAX_OFFSET = 2**63


class _Copy:
    """One copy in progress."""

    def __init__(self, target: Path, temp: Path, fd: int, overwrite: bool) -> None:
        self.target = target
        self.temp = temp
        self.fd = fd
        self.overwrite = overwrite
        self.written = 0


class FcopyHandler:
    """Serves file-copy requests (a :class:`~vmis.hyperv.daemon.Handler`).

    :param logger: where to log.
    """

    name = "fcopy"
    max_message = FCOPY_DO_SIZE

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._copy: _Copy | None = None
        #: the kernel's version from registration
        self.kernel_version: int | None = None

    # Section: registration

    def registration(self) -> bytes:
        """A 4-byte int: FCOPY_CURRENT_VERSION (1)."""
        return struct.pack("<i", FCOPY_CURRENT_VERSION)

    def registration_reply_size(self) -> int:
        """Version 1 is answered with the kernel's 4-byte version."""
        return 4

    def registered(self, reply: bytes | None) -> None:
        """Check and keep the kernel's version.

        :raise RemoteProtocolError: When the reply is not 4 bytes.
        """
        if reply is None or len(reply) != 4:
            raise RemoteProtocolError("FCOPY registration reply must be 4 bytes")
        (self.kernel_version,) = struct.unpack("<I", reply)
        self._log.info("FCOPY: kernel version %d", self.kernel_version)

    def deadline(self) -> float | None:
        """No timers."""
        return None

    def on_deadline(self) -> None:
        """Never called."""

    # Section: requests

    def handle(self, message: bytes) -> bytes:
        """Serve one request; reply with the 4-byte status.

        :raise RemoteProtocolError: When the message is shorter than its header.
        """
        if len(message) < 4:
            raise RemoteProtocolError(f"FCOPY message of {len(message)} bytes")
        (op,) = struct.unpack_from("<I", message)
        if op == FcopyOp.START_FILE_COPY:
            status = self._start(FcopyStart.unpack(message))
        elif op == FcopyOp.WRITE_TO_FILE:
            status = self._write(FcopyData.unpack(message))
        elif op == FcopyOp.COMPLETE_FCOPY:
            status = self._complete()
        elif op == FcopyOp.CANCEL_FCOPY:
            self._discard("cancelled by the host")
            status = HResult.HV_S_OK
        else:
            self._log.error("FCOPY: unknown operation %d", op)
            status = HResult.HV_E_FAIL
        return struct.pack("<I", status)

    def _start(self, start: FcopyStart) -> int:
        if self._copy is not None:
            self._discard("abandoned: a new copy started without COMPLETE")
        path_name = cstring(start.path_name).decode("utf-8", "surrogateescape")
        file_name = cstring(start.file_name).decode("utf-8", "surrogateescape")
        directory = Path("/", path_name)
        target = directory / file_name
        self._log.info("FCOPY: target file name %s", target)
        if not file_name or "/" in file_name:
            self._log.error("FCOPY: invalid file name %r", file_name)
            return HResult.HV_E_FAIL
        if not directory.is_dir():
            if not start.copy_flags & FcopyFlag.CREATE_PATH:
                self._log.error("FCOPY: invalid path %s", directory)
                return HResult.HV_E_FAIL
            try:
                directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            except OSError as err:
                self._log.error("FCOPY: failed to create %s: %s", directory, err.strerror)
                return HResult.HV_E_FAIL
        overwrite = bool(start.copy_flags & FcopyFlag.OVER_WRITE)
        if os.path.lexists(target) and not overwrite:
            self._log.info("FCOPY: %s exists", target)
            return HResult.HV_ERROR_ALREADY_EXISTS
        temp = directory / f".{file_name[:200]}.vmis-fcopy-{secrets.token_hex(4)}"
        try:
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except OSError as err:
            self._log.error("FCOPY: open failed: %s", err.strerror)
            return HResult.HV_E_FAIL
        self._copy = _Copy(target, temp, fd, overwrite)
        return HResult.HV_S_OK

    def _write(self, chunk: FcopyData) -> int:
        copy = self._copy
        if copy is None:
            self._log.error("FCOPY: data without a started copy")
            return HResult.HV_E_FAIL
        if chunk.offset + len(chunk.data) >= _MAX_OFFSET:
            # the wire's u64 offset; a file offset is an off_t (the C daemon's
            # pwrite fails with EINVAL here)
            self._log.error("FCOPY: offset %d is past the largest file", chunk.offset)
            return HResult.HV_E_FAIL
        try:
            written = os.pwrite(copy.fd, chunk.data, chunk.offset)
            if written != len(chunk.data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as err:
            self._log.error("FCOPY: pwrite of %d bytes at %d failed: %s",
                            len(chunk.data), chunk.offset, err.strerror)
            return HResult.HV_ERROR_DISK_FULL if err.errno == errno.ENOSPC else HResult.HV_E_FAIL
        copy.written += written
        return HResult.HV_S_OK

    def _complete(self) -> int:
        copy, self._copy = self._copy, None
        if copy is None:
            return HResult.HV_S_OK  # the C daemon answers a stray COMPLETE with 0 too
        try:
            os.fchmod(copy.fd, FILE_MODE)  # the umask must not change the mode
            os.fsync(copy.fd)
            os.close(copy.fd)
            copy.fd = -1
            if copy.overwrite:
                os.replace(copy.temp, copy.target)
            else:
                # link() fails if the target appeared meanwhile: no silent overwrite
                os.link(copy.temp, copy.target)
                os.unlink(copy.temp)
        except FileExistsError:
            self._remove(copy)
            self._log.info("FCOPY: %s exists", copy.target)
            return HResult.HV_ERROR_ALREADY_EXISTS
        except OSError as err:
            self._remove(copy)
            self._log.error("FCOPY: finishing %s failed: %s", copy.target, err.strerror)
            return HResult.HV_ERROR_DISK_FULL if err.errno == errno.ENOSPC else HResult.HV_E_FAIL
        self._log.info("FCOPY: copied %s (%d bytes)", copy.target, copy.written)
        return HResult.HV_S_OK

    @staticmethod
    def _remove(copy: _Copy) -> None:
        if copy.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(copy.fd)
            copy.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(copy.temp)

    def _discard(self, why: str) -> None:
        copy, self._copy = self._copy, None
        if copy is not None:
            self._remove(copy)
            self._log.info("FCOPY: %s %s; partial data removed", copy.target, why)

    def reset(self) -> None:
        """Channel lost or daemon stopping: drop the partial copy."""
        self._discard("interrupted")
