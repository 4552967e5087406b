"""Client of the agent's control socket (vmis.guest.control), for the guest tools."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from vmis.errors import ConnectError, RemoteServiceError

__all__ = ["MAX_LINE", "ControlClient"]

#: longest line either side sends (a KVP value is at most 2 KiB); defined here,
#: not with the server (vmis.guest.control), so a guest tool starts without asyncio
MAX_LINE = 1024 * 1024


class ControlClient:
    """Sends one request per call over a short-lived connection.

    :param path: the control socket.
    :param timeout: seconds to wait for the agent.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout

    def call(self, op: str, **args: Any) -> Any:
        """Run one operation and return its result.

        :raise ConnectError: When the agent is not running.
        :raise RemoteServiceError: When the agent answers with an error.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise ConnectError(
                    f"the vmis guest agent is not running (no control socket at {self.path})", exc
                ) from exc
            except PermissionError as exc:
                raise ConnectError(
                    f"permission denied on {self.path}: run as root", exc
                ) from exc
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectError("the guest agent closed the control connection")
                data += chunk
                if len(data) > MAX_LINE:
                    raise ConnectError("the guest agent sent an oversized answer")
        except TimeoutError as exc:
            raise ConnectError(f"the guest agent did not answer within {self.timeout:g} s",
                               exc) from exc
        finally:
            sock.close()
        answer = json.loads(data)
        if not answer.get("ok"):
            raise RemoteServiceError(str(answer.get("code", "failed")), str(answer.get("error")))
        return answer.get("result")
