"""A scripted qemu-ga on a Unix socket, for what the real one cannot be made to do here.

The sandboxed qemu-ga (support/qga_sandbox.py) blocks every RPC that
changes the machine, and a real one cannot be told to hang a freeze for a
minute. This peer speaks qemu-ga's protocol as qemu-ga 7.2 does (the
0xFF-prefixed guest-sync-delimited reply, one JSON line per reply with the
request's id, no reply to a successful guest-shutdown, commands answered one
at a time in order) and answers each command with a test's handler.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["QgaError", "QgaPeer", "guest_info"]

Handler = Callable[[dict[str, Any]], Any | Awaitable[Any]]

#: every command qemu-ga 7.2 has
COMMANDS = (
    "guest-sync-delimited", "guest-sync", "guest-ping", "guest-get-time", "guest-set-time",
    "guest-info", "guest-shutdown", "guest-file-open", "guest-file-close", "guest-file-read",
    "guest-file-write", "guest-file-seek", "guest-file-flush", "guest-fsfreeze-status",
    "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw",
    "guest-fstrim", "guest-network-get-interfaces", "guest-get-fsinfo", "guest-exec",
    "guest-exec-status", "guest-get-host-name", "guest-get-users", "guest-get-timezone",
    "guest-get-osinfo",
)


class QgaError(Exception):
    """Raised by a handler: qemu-ga's error reply."""

    def __init__(self, desc: str, error_class: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class


def guest_info(blocked: tuple[str, ...] = (), missing: tuple[str, ...] = (),
               version: str = "7.2.22") -> dict[str, Any]:
    return {"version": version, "supported_commands": [
        {"name": c, "enabled": c not in blocked,
         "success-response": c not in ("guest-shutdown",)}
        for c in COMMANDS if c not in missing]}


class QgaPeer:
    """Answers qemu-ga commands with :attr:`handlers` (command -> handler)."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        #: (command, arguments) in the order received
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._client, str(self.path))

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()

    def drop_clients(self) -> None:
        """Close every connection (as QEMU does when the VM powers off)."""
        for writer in self._writers:
            writer.close()

    def commands(self, name: str) -> list[dict[str, Any]]:
        return [args for command, args in self.received if command == name]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        decoder = json.JSONDecoder()
        text = ""
        try:
            while data := await reader.read(1 << 20):
                text += data.replace(b"\xff", b"").decode()
                while text.strip():
                    try:
                        body, end = decoder.raw_decode(text.lstrip())
                    except ValueError:
                        break
                    text = text.lstrip()[end:]
                    await self._answer(body, writer)  # one at a time, in order
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _answer(self, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        command, args = body["execute"], body.get("arguments") or {}
        self.received.append((command, args))
        if command == "guest-sync-delimited":
            writer.write(b"\xff" + json.dumps({"return": args["id"]}).encode() + b"\n")
            return
        reply: dict[str, Any]
        try:
            handler = self.handlers.get(command)
            if handler is None:
                raise QgaError(f"The command {command} has not been found", "CommandNotFound")
            value = handler(args)
            if asyncio.iscoroutine(value):
                value = await value
            if command == "guest-shutdown":
                return  # success-response: false
            reply = {"return": value if value is not None else {}}
        except QgaError as exc:
            reply = {"error": {"class": exc.error_class, "desc": exc.desc}}
        if "id" in body:
            reply["id"] = body["id"]
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
