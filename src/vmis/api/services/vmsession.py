"""VM Session over the manager's API: ``/v1/vms/{name}/exec``, a WebSocket.

One connection runs one command (docs/services/vmsession.md §8). The client
sends a ``start`` message; the server relays between the socket and a
:class:`~vmis.services.vmsession.host.RemoteCommand`:

- down (server -> client): binary messages ``[stream byte] + bytes`` (1
  stdout, 2 stderr), and text JSON ``started``, ``window``, ``keepalive``,
  ``exit`` and ``error``;
- up (client -> server): binary messages of stdin bytes, never more than
  the credit the server granted (``started.input_window`` plus every
  ``window``), and text JSON ``ack``, ``eof`` and ``signal``.

Flow control is end to end: output is acknowledged to the guest only when
the client says it has written it (``ack``), so a client whose stdout is
blocked slows the command down while both ends keep reading the socket
(pings, keepalives and Ctrl-C still flow). Since stdin is sent only against
credit, the relay reads the client's messages all the time and a ``signal``
is never stuck behind stdin bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from vmis.api.access import account_of
from vmis.api.errors import error_to_json
from vmis.api.guard import note
from vmis.errors import ConfigError, StateError, VmisError
from vmis.host.manager import HostManager
from vmis.services.vmsession.host import Exit, InputCredit, Output, RemoteCommand

__all__ = ["router"]

router = APIRouter(prefix="/v1")

#: seconds a client has to send its start message
_START_TIMEOUT = 30.0
#: output bytes in flight between guest and client (one guest window, §3)
STREAM_WINDOW = 1024 * 1024


class ExecStart(BaseModel):
    """The client's first message."""

    type: str = "start"
    argv: list[str] = Field(min_length=1)
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    stdin: bool = True
    timeout: float | None = Field(default=None, gt=0, le=30 * 86400)
    #: seconds between keepalives to the client while the command is quiet
    keepalive: float = Field(default=15.0, ge=0.05, le=3600)
    requested_by: str = Field(default="", max_length=256)


def _error(exc: VmisError) -> dict[str, Any]:
    return {"type": "error", **error_to_json(exc, type_key="error_type")}


class _ClientGone(Exception):
    """The WebSocket client disconnected."""


class _Relay:
    """Moves one command's bytes and events between a WebSocket and the guest."""

    def __init__(self, websocket: WebSocket, cmd: RemoteCommand, keepalive: float) -> None:
        self.ws = websocket
        self.cmd = cmd
        self.keepalive = keepalive
        #: how the command ended, for the audit log
        self.outcome = "the client went away; the command was killed"

    async def _send_json(self, body: dict[str, Any]) -> None:
        try:
            await self.ws.send_text(json.dumps(body))
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise _ClientGone() from exc

    async def down(self) -> None:
        """Events of the command to the client, until its exit."""
        while True:
            try:
                async with asyncio.timeout(self.keepalive):
                    event = await self.cmd.next_event()
            except TimeoutError:
                await self._send_json({"type": "keepalive"})
                continue
            except VmisError as exc:
                self.outcome = f"failed: {exc}"
                await self._send_json(_error(exc))
                return
            if isinstance(event, Output):
                try:
                    await self.ws.send_bytes(bytes((event.stream,)) + event.data)
                except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                    raise _ClientGone() from exc
            elif isinstance(event, InputCredit):
                await self._send_json({"type": "window", "bytes": event.bytes})
            elif isinstance(event, Exit):
                self.outcome = f"exit status {event.status} ({event.reason})"
                await self._send_json({"type": "exit", **event.to_json()})
                return

    async def up(self) -> None:
        """The client's stdin and signals to the command, until it disconnects."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise _ClientGone()
            data = message.get("bytes")
            if data is not None:
                with contextlib.suppress(StateError):
                    await self.cmd.write(data)
                continue
            try:
                body = json.loads(message.get("text") or "")
            except ValueError:
                continue
            kind = body.get("type") if isinstance(body, dict) else None
            if kind == "ack":
                n = body.get("bytes")
                if isinstance(n, int) and 0 < n <= self.cmd.buffered:
                    self.cmd.ack(n)
            elif kind == "eof":
                self.cmd.close_input()
            elif kind == "signal":
                with contextlib.suppress(VmisError):
                    await self.cmd.signal(str(body.get("signal", "INT")).upper(),
                                          cancel=bool(body.get("cancel", True)))

    async def run(self) -> None:
        down = asyncio.create_task(self.down())
        up = asyncio.create_task(self.up())
        try:
            done, _ = await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
            if down in done and down.exception() is None:
                return
            # The client went away first: nobody can read the output or stop
            # the command any more (docs/services/vmsession.md §5.4).
            self.cmd.vm.log.warning("session %d: the client disconnected; killing the command",
                                    self.cmd.sid)
            self.cmd.abandon()
        finally:
            for task in (down, up):
                task.cancel()
            for task in (down, up):
                with contextlib.suppress(asyncio.CancelledError, _ClientGone,
                                         WebSocketDisconnect, RuntimeError, OSError):
                    await task


def _requested_by(websocket: WebSocket, claimed: str) -> str:
    """Who asked, for both sides' logs: the account the guard found, and the login
    name the client says it runs as, which only the account vouches for."""
    account = account_of(websocket).name
    return f"{account} (login {claimed})" if claimed and claimed != account else account


@router.websocket("/vms/{name}/exec")
async def exec_command(websocket: WebSocket, name: str) -> None:
    """Invoke-Command: run one command in the VM's guest, streamed both ways."""
    manager: HostManager = websocket.app.state.manager
    await websocket.accept()
    try:
        async with asyncio.timeout(_START_TIMEOUT):
            start = ExecStart.model_validate(await websocket.receive_json())
        note(websocket, detail=shlex.join(start.argv))
        cmd = await RemoteCommand.start(
            manager.session(name), start.argv, cwd=start.cwd, env=start.env,
            stdin=start.stdin, timeout=start.timeout,
            requested_by=_requested_by(websocket, start.requested_by), window=STREAM_WINDOW)
    except (WebSocketDisconnect, TimeoutError):
        note(websocket, failure="the client sent no start message")
        return
    except (ValidationError, ValueError) as exc:
        note(websocket, failure="invalid start message")
        await websocket.send_json(_error(ConfigError(f"invalid start message: {exc}")))
        await websocket.close()
        return
    except VmisError as exc:
        note(websocket, failure=exc)
        await websocket.send_json(_error(exc))
        await websocket.close()
        return
    relay = _Relay(websocket, cmd, start.keepalive)
    try:
        await relay._send_json({"type": "started", "session": cmd.sid,
                                "input_window": cmd.input_window, **cmd.info})
        await relay.run()
        await websocket.close()
    except (_ClientGone, WebSocketDisconnect, RuntimeError, OSError):
        cmd.abandon()
    finally:
        note(websocket, detail=relay.outcome)


#: what the OpenAPI document says of the WebSocket (vmis.api.docs)
_EXEC_DOC = """Invoke-Command: a WebSocket (send `Upgrade: websocket`; without it the answer
is 426). The client's first message is a text JSON `ExecStart`; then, down: binary
`[1|2] + bytes` (stdout, stderr) and text JSON `started`, `window`, `keepalive`, `exit`,
`error`; up: binary stdin bytes within the granted window, text JSON `ack`, `eof`,
`signal` (docs/services/vmsession.md §8)."""


@router.get("/vms/{name}/exec", status_code=426, description=_EXEC_DOC, responses={
    101: {"description": "Switching Protocols: the command's WebSocket"},
    426: {"description": "Upgrade Required: this is a WebSocket", "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
})
async def exec_without_upgrade(name: str) -> JSONResponse:
    error = ConfigError(f"/v1/vms/{name}/exec is a WebSocket: connect with 'Upgrade: "
                        "websocket' (vmis Invoke-Command does)")
    return JSONResponse(error_to_json(error), status_code=426,
                        headers={"Upgrade": "websocket", "Connection": "Upgrade"})
