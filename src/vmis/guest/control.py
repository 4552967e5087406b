"""The agent's local control socket, used by the guest tools (``vmis-guest``).

A Unix stream socket (mode 0600: root only in a real guest) carrying one
JSON object per line each way: ``{"op": "...", ...}`` in, ``{"ok": true,
"result": ...}`` or ``{"ok": false, "code": "...", "error": "..."}`` out.
Operations are the agent's own (services, start, stop, set-startup, status)
plus those each service offers in ``GuestService.control_ops``
(``kvp.get``, ...). See docs/guest-agent.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import vmis
from vmis.errors import NotFoundError, ServiceError, VmisError
from vmis.guest.client import MAX_LINE
from vmis.services.catalog import StartupType, by_guest_name
from vmis.services.guest_half import ControlOp

if TYPE_CHECKING:
    from vmis.guest.agent import Agent

__all__ = ["ControlServer"]

_log = logging.getLogger("vmis.guest.control")


class ControlServer:
    """Serves the guest tools on a Unix socket."""

    def __init__(self, agent: Agent, path: Path) -> None:
        self.agent = agent
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self.ops: dict[str, ControlOp] = {
            "services": self._services,
            "start": self._start,
            "stop": self._stop,
            "set-startup": self._set_startup,
            "status": self._status,
        }
        for service in agent.manager.services.values():
            self.ops.update(service.control_ops)

    async def start(self) -> None:
        """Bind the socket (replacing a stale one) with mode 0600."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_socket():
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._client, self.path, limit=MAX_LINE)
        finally:
            os.umask(old)

    async def close(self) -> None:
        """Stop serving and remove the socket."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                answer = await self._dispatch(line)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            _log.debug("control client dropped: %s", exc)
        finally:
            writer.close()

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
            op = self.ops.get(str(request.get("op")))
            if op is None:
                raise NotFoundError(f"unknown operation {request.get('op')!r}")
            return {"ok": True, "result": await op(request)}
        except ServiceError as exc:
            return {"ok": False, "code": exc.code, "error": str(exc)}
        except VmisError as exc:
            return {"ok": False, "code": "failed", "error": str(exc)}
        except (ValueError, KeyError, TypeError) as exc:
            return {"ok": False, "code": "bad-request", "error": f"bad request: {exc}"}

    # Section: the agent's own operations

    async def _services(self, request: dict[str, Any]) -> Any:
        return self.agent.manager.listing()

    def _spec(self, request: dict[str, Any]) -> Any:
        spec = by_guest_name(str(request["name"]))
        if not self.agent.manager.has(spec):
            raise ServiceError("unknown-service", f"this agent does not offer {spec.guest_name}")
        return spec

    async def _start(self, request: dict[str, Any]) -> Any:
        return await self.agent.manager.guest_start(self._spec(request))

    async def _stop(self, request: dict[str, Any]) -> Any:
        return await self.agent.manager.guest_stop(self._spec(request))

    async def _set_startup(self, request: dict[str, Any]) -> Any:
        startup = StartupType.parse(str(request["startup"]))
        return await self.agent.manager.guest_set_startup(self._spec(request), startup)

    async def _status(self, request: dict[str, Any]) -> Any:
        channel = self.agent.channel
        return {
            "version": vmis.__version__,
            "connected": bool(channel is not None and channel.running),
            "services": {k: [list(v) for v in vs] for k, vs in self.agent.versions.items()},
        }
