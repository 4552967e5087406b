"""The loop every Hyper-V daemon shares.

A daemon is a :class:`Handler` (sans-IO: it turns one kernel message into one
reply) run by :class:`DaemonRunner`, which owns the I/O:

1. open the device (or the emulator's socket), write the registration
   message, wait for the kernel's registration reply when there is one;
2. wait for a kernel message, hand it to the handler, write the reply;
3. on a channel failure after a successful registration, reopen and register
   again, as the C daemons do after a hibernation; a failure *during*
   registration ends the daemon (no reopen loop);
4. stop within a fraction of a second when :class:`StopSignal` is set (by
   SIGTERM or SIGINT), letting the handler clean up (VSS thaws).

Also here: the pid file, and the log handler that can hold records back
while filesystems are frozen.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Protocol

from vmis.errors import ChannelError, ConfigError, ProtocolError, StateError
from vmis.hyperv.device import Device, open_device

__all__ = [
    "DaemonRunner",
    "Handler",
    "HoldableHandler",
    "PidFile",
    "StopSignal",
    "setup_logging",
]


class Handler(Protocol):
    """One integration service's daemon logic, free of I/O."""

    #: short name for logs ("kvp", "vss", "fcopy")
    name: str
    #: the largest message the kernel sends this daemon
    max_message: int

    def registration(self) -> bytes:
        """The message that registers the daemon with the kernel."""

    def registration_reply_size(self) -> int | None:
        """Size of the kernel's registration reply, or ``None`` if none comes."""

    def registered(self, reply: bytes | None) -> None:
        """Take note of the kernel's registration reply.

        :raise ProtocolError: When the reply is not what the kernel sends.
        """

    def handle(self, message: bytes) -> bytes | None:
        """Serve one kernel message; return the reply to write (``None``: none).

        :raise ProtocolError: When the message is malformed (the channel is reopened).
        """

    def deadline(self) -> float | None:
        """A ``time.monotonic()`` instant at which :meth:`on_deadline` must run."""

    def on_deadline(self) -> None:
        """The deadline passed (VSS: thaw without the host's THAW)."""

    def reset(self) -> None:
        """The channel was lost or is being closed; drop per-transaction state."""


class StopSignal:
    """A stop request that can wake a ``poll``: a flag plus a self-pipe.

    Safe to :meth:`set` from a signal handler or another thread.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._set = False

    def set(self) -> None:
        """Request the stop."""
        self._set = True
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._w, b"x")

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._set

    def wait_readable(self, fd: int, timeout: float | None) -> bool:
        """Wait until ``fd`` is readable, the timeout passes or a stop is requested.

        :return: whether ``fd`` is readable (``False`` on timeout or stop).
        """
        if self._set:
            return False
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        poller.register(self._r, select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        events = dict(poller.poll(ms))
        if self._set:
            return False
        return fd in events

    def install(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Make ``signals`` set this stop (main thread only)."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.set()

        for sig in signals:
            signal.signal(sig, on_signal)

    def close(self) -> None:
        """Release the pipe."""
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


class DaemonRunner:
    """Runs a :class:`Handler` against the device at ``device_path``.

    :param handler: the service logic.
    :param device_path: character device or emulator socket.
    :param stop: ends :meth:`run`.
    :param logger: where to log.
    :param opener: opens the device (replaceable in tests).
    """

    def __init__(
        self,
        handler: Handler,
        device_path: str,
        stop: StopSignal,
        logger: logging.Logger,
        opener: Callable[[str], Device] = open_device,
    ) -> None:
        self._handler = handler
        self._path = device_path
        self._stop = stop
        self._log = logger
        self._open = opener

    def run(self) -> int:
        """Serve until stopped.

        :return: the exit status: 0 when stopped, 1 when the device could not
            be opened or registration failed.
        """
        try:
            while not self._stop.is_set():
                device = self._open(self._path)
                registered = False
                try:
                    if not self._register(device):
                        return 0
                    registered = True
                    self._serve(device)
                    return 0
                except (OSError, ChannelError, ProtocolError) as err:
                    self._handler.reset()
                    if not registered:
                        self._log.error("registration with the kernel failed: %s", err)
                        return 1
                    self._log.warning("%s: channel failed (%s); reopening", self._path, err)
                finally:
                    device.close()
            return 0
        except ChannelError as err:  # the reopen itself failed
            self._log.error("%s", err)
            return 1
        finally:
            self._handler.reset()

    def _register(self, device: Device) -> bool:
        device.write(self._handler.registration())
        size = self._handler.registration_reply_size()
        reply = None
        if size is not None:
            if not self._stop.wait_readable(device.fileno(), None):
                return False
            reply = device.read(max(size, self._handler.max_message))
        self._handler.registered(reply)
        self._log.info("registered with the kernel via %s", self._path)
        return True

    def _serve(self, device: Device) -> None:
        while True:
            deadline = self._handler.deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable = self._stop.wait_readable(device.fileno(), timeout)
            if self._stop.is_set():
                return
            if deadline is not None and time.monotonic() >= deadline:
                self._handler.on_deadline()
            if readable:
                message = device.read(self._handler.max_message)
                self._log.debug("<-- %d bytes", len(message))
                reply = self._handler.handle(message)
                if reply is not None:
                    device.write(reply)
                    self._log.debug("--> %d bytes", len(reply))


# Section: pid file


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PidFile:
    """A pid file holding this process's id while the daemon runs.

    A stale file (its process gone) is replaced; a live one is refused.

    :param path: the pid file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        #: the pid file
        self.path = Path(path)

    def acquire(self) -> None:
        """Write our pid (atomically: temp file and rename).

        :raise StateError: When another live process holds it.
        :raise ConfigError: When it cannot be written.
        """
        try:
            old = int(self.path.read_text().strip() or "0")
        except (FileNotFoundError, ValueError):
            old = 0
        except OSError as err:
            raise ConfigError(f"cannot read pid file {self.path}: {err.strerror}") from err
        if old and old != os.getpid() and _process_alive(old):
            raise StateError(f"already running as pid {old} (pid file {self.path})")
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(f"{os.getpid()}\n")
            os.replace(tmp, self.path)
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise ConfigError(f"cannot write pid file {self.path}: {err.strerror}") from err

    def release(self) -> None:
        """Remove the file if it still names this process."""
        try:
            if int(self.path.read_text().strip()) == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """:meth:`acquire` on entry, :meth:`release` on exit."""
        self.acquire()
        try:
            yield
        finally:
            self.release()


# Section: logging


class HoldableHandler(logging.Handler):
    """Passes records to ``target``, or holds them while :meth:`hold` is in force.

    The VSS daemon holds its log while filesystems are frozen: writing to a
    journal or file on a frozen filesystem would block the daemon, and with it
    the THAW that would unblock it.

    :param target: the real handler.
    :param limit: records kept while holding; older ones beyond it are dropped
        and counted.
    """

    def __init__(self, target: logging.Handler, limit: int = 1000) -> None:
        super().__init__()
        self._target = target
        self._limit = limit
        self._held: list[logging.LogRecord] | None = None
        self._dropped = 0

    def hold(self) -> None:
        """Start holding records back."""
        with self.lock or contextlib.nullcontext():
            if self._held is None:
                self._held = []

    # Not "release": logging.Handler.release() is its I/O lock's, called
    # after every emit.
    def resume(self) -> None:
        """Stop holding and emit everything held, oldest first."""
        with self.lock or contextlib.nullcontext():
            held, self._held = self._held or [], None
            dropped, self._dropped = self._dropped, 0
        if dropped:
            held.insert(
                0,
                logging.makeLogRecord(
                    {"msg": f"{dropped} log records dropped while frozen",
                     "levelno": logging.WARNING, "levelname": "WARNING",
                     "name": held[0].name if held else "vmis.hyperv"}
                ),
            )
        for record in held:
            self._target.handle(record)

    @property
    def holding(self) -> bool:
        """Whether records are being held."""
        return self._held is not None

    def emit(self, record: logging.LogRecord) -> None:
        """Hold ``record`` or pass it on."""
        if self._held is not None:
            if len(self._held) >= self._limit:
                self._held.pop(0)
                self._dropped += 1
            self._held.append(record)
            return
        self._target.handle(record)


def setup_logging(name: str, level: int = logging.INFO) -> tuple[logging.Logger, HoldableHandler]:
    """A logger writing one line per record to stderr (the journal under systemd).

    :param name: the daemon's logger name, e.g. ``vmis.hyperv.kvp``.
    :param level: the threshold.
    :return: the logger and its holdable handler.
    """
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    holder = HoldableHandler(stream)
    logger = logging.getLogger(name)
    logger.handlers[:] = [holder]
    logger.setLevel(level)
    logger.propagate = False
    return logger, holder


def describe_os_error(err: OSError) -> str:
    """One line for an OS error: ``strerror`` and file name when known."""
    text = err.strerror or errno.errorcode.get(err.errno or 0, str(err))
    return f"{err.filename}: {text}" if err.filename else text
