"""The guest agent's persistent state: start types and the host's last wishes.

Kept in ``<state_dir>/services.json`` and replaced atomically (temporary
file, fsync, rename), so a crash leaves the old or the new state, never a
torn one. While the guest's filesystems are frozen nothing is written; the
last change is written after the thaw (:meth:`ServiceState.flush`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vmis.services.catalog import CATALOG, StartupType

__all__ = ["ServiceState", "write_atomic"]

_log = logging.getLogger("vmis.guest.state")


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace *path* with *data* durably: temp file, fsync, rename, fsync directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class ServiceState:
    """Start type and last host wish per guest service name.

    :param path: the JSON file.
    :param defaults: start types from the configuration file.
    """

    def __init__(self, path: Path, defaults: dict[str, StartupType]) -> None:
        self.path = path
        self.startup: dict[str, StartupType] = dict(defaults)
        #: guest service name -> the host's last SET_SERVICE (None: never told)
        self.host_enabled: dict[str, bool | None] = {s.guest_name: None for s in CATALOG}
        #: True while writes must wait (filesystems frozen)
        self.hold = False
        self._dirty = False
        self._scheduled = False
        self._writer: ThreadPoolExecutor | None = None
        self._load()

    def _load(self) -> None:
        try:
            data: dict[str, Any] = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            _log.error("ignoring unreadable state file %s: %s", self.path, exc)
            return
        for name, entry in data.get("services", {}).items():
            if name not in self.host_enabled or not isinstance(entry, dict):
                continue
            with contextlib.suppress(ValueError):
                self.startup[name] = StartupType(entry.get("startup"))
            enabled = entry.get("host_enabled")
            self.host_enabled[name] = enabled if isinstance(enabled, bool) else None

    def set_hold(self, frozen: bool) -> None:
        """Hold writes while the filesystems are frozen; write what waited after the thaw."""
        if frozen and self._writer is not None:
            # A write already handed to the worker must land before the freeze.
            self._writer.shutdown(wait=True)
            self._writer = None
        self.hold = frozen
        if not frozen:
            self.flush()

    def set_startup(self, name: str, startup: StartupType) -> None:
        """Record a Set-Service start type."""
        self.startup[name] = startup
        self.save()

    def set_host_enabled(self, name: str, enabled: bool) -> None:
        """Record the host's wish for a service."""
        if self.host_enabled.get(name) is not enabled:
            self.host_enabled[name] = enabled
            self.save()

    def save(self) -> None:
        """Write the state soon, or after the thaw while :attr:`hold` is set.

        Inside the agent's event loop the write (an fsync) happens on a
        worker thread, one at a time and in order, so answering the host
        never waits for the disk; a lost write is harmless, the host sends
        its wishes again at the next session.
        """
        self._dirty = True
        if self.hold:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._write_in_background, loop)

    def _write_in_background(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        if self.hold or not self._dirty:
            return
        data = self._snapshot()
        self._dirty = False
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vmis-state")
        loop.run_in_executor(self._writer, self._write, data)

    def _snapshot(self) -> bytes:
        services = {
            name: {"startup": self.startup[name].value, "host_enabled": self.host_enabled[name]}
            for name in self.host_enabled
        }
        return json.dumps({"services": services}, indent=1).encode()

    def _write(self, data: bytes) -> bool:
        try:
            write_atomic(self.path, data)
        except OSError as exc:
            _log.error("cannot write state file %s: %s", self.path, exc)
            return False
        return True

    def flush(self) -> None:
        """Write pending changes now (after a thaw, at agent stop)."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._dirty and not self.hold and self._write(self._snapshot()):
            self._dirty = False
