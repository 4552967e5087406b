"""One libvirt connection of the host manager: opened when first needed, opened again
after libvirtd restarts, and called on a worker thread so the event loop never blocks.

libvirt-python's calls block (each one is an RPC to libvirtd), and a libvirt
connection may be used from several threads at once, so every call runs
through :meth:`LibvirtConnection.call` on asyncio's thread pool. libvirt's
errors become vmis's (:func:`translate`): a missing domain is a
``NotFoundError``, an operation the domain's state does not allow a
``StateError``, anything else a ``LibvirtError`` with libvirt's message.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from vmis.errors import ConfigError, LibvirtError, NotFoundError, StateError, VmisError

__all__ = ["LibvirtConnection", "load_libvirt", "translate"]

T = TypeVar("T")

#: libvirt error codes (virErrorNumber) that say what vmis says with its own classes
_NOT_FOUND = {"VIR_ERR_NO_DOMAIN", "VIR_ERR_NO_DOMAIN_SNAPSHOT"}
_WRONG_STATE = {"VIR_ERR_OPERATION_INVALID"}


def load_libvirt() -> ModuleType:
    """libvirt-python, with its default error handler (which prints every error to
    stderr, including the ones vmis handles) silenced.

    :raise ConfigError: When libvirt-python is not installed.
    """
    try:
        import libvirt
    except ImportError:
        raise ConfigError(
            "the libvirt backend needs libvirt-python: pip install 'vmis[libvirt]' "
            "(it builds against Debian's libvirt-dev and pkg-config)"
        ) from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    module: ModuleType = libvirt
    return module


def _code_name(libvirt: ModuleType, code: int) -> str | None:
    return next((name for name in dir(libvirt)
                 if name.startswith("VIR_ERR_") and getattr(libvirt, name) == code), None)


def translate(exc: Exception, what: str) -> VmisError:
    """A libvirt error as the vmis error that says the same, prefixed with *what*."""
    libvirt = load_libvirt()
    if not isinstance(exc, libvirt.libvirtError):
        return LibvirtError(f"{what}: {exc}")
    name = _code_name(libvirt, exc.get_error_code())
    message = f"{what}: {exc.get_error_message() or exc}"
    if name in _NOT_FOUND:
        return NotFoundError(message)
    if name in _WRONG_STATE:
        return StateError(message)
    return LibvirtError(message, name)


class LibvirtConnection:
    """The connection to one libvirtd, by URI (``qemu:///system``, ``qemu+unix:///system?socket=...``).

    The connection is opened at the first call, and opened again when a call
    finds it dead (libvirtd restarted): that call is then tried once more.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: Any = None
        # Calls run on several threads; only one of them (re)opens the connection.
        self._lock = threading.Lock()

    def _open(self) -> Any:
        libvirt = load_libvirt()
        with self._lock:
            if self._conn is not None and self._conn.isAlive():
                return self._conn
            self._drop()
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise translate(exc, f"cannot connect to libvirt at {self.uri}") from None
            return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except load_libvirt().libvirtError:
                pass  # already dead: nothing left to close

    def call_sync(self, work: Callable[[Any], T], what: str) -> T:
        """Run *work(connection)* on this thread (see :meth:`call`)."""
        libvirt = load_libvirt()
        conn = self._open()
        try:
            return work(conn)
        except libvirt.libvirtError as exc:
            if conn.isAlive():
                raise translate(exc, what) from None
        # The connection died under the call (libvirtd restarted): once more, afresh.
        try:
            return work(self._open())
        except libvirt.libvirtError as exc:
            raise translate(exc, what) from None

    async def call(self, work: Callable[[Any], T], what: str) -> T:
        """Run *work(connection)* on a worker thread.

        :param what: the operation, for errors (``"web1: start"``).
        :raise NotFoundError: When libvirt has no such domain.
        :raise StateError: When the domain's state does not allow the operation.
        :raise LibvirtError: When libvirtd cannot be reached, or fails otherwise.
        """
        return await asyncio.to_thread(self.call_sync, work, what)

    def close(self) -> None:
        """Close the connection (it is opened again by the next call)."""
        with self._lock:
            self._drop()
