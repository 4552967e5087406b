"""Client of the host manager's API over its Unix socket (used by the CLI)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from vmis.api.errors import error_from_json
from vmis.errors import ConfigError, ConnectError, RequestTimeout

__all__ = ["ApiClient", "default_lab_dir", "default_socket"]

#: where a system-wide host manager listens
SYSTEM_SOCKET = Path("/run/vmis/host.sock")


def default_lab_dir() -> Path:
    """The lab directory: ``$VMIS_LAB_DIR``, else the user's own,
    ``$XDG_STATE_HOME/vmis/lab`` (``~/.local/state/vmis/lab`` by default).

    The current directory plays no part, so every command finds the one lab
    wherever it runs. A relative ``$XDG_STATE_HOME`` is ignored, as the XDG
    Base Directory specification requires.
    """
    if explicit := os.environ.get("VMIS_LAB_DIR"):
        return Path(explicit).expanduser().absolute()
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "vmis" / "lab"


def default_socket() -> Path:
    """The manager socket the CLI talks to.

    ``$VMIS_SOCKET`` if set; else the lab's manager when the lab directory
    (:func:`default_lab_dir`) has one; else the system-wide
    ``/run/vmis/host.sock``.
    """
    if env := os.environ.get("VMIS_SOCKET"):
        return Path(env)
    lab = default_lab_dir() / "host.sock"
    if lab.exists():
        return lab
    return SYSTEM_SOCKET


class ApiClient:
    """Synchronous API calls; errors come back as the vmis errors the server raised.

    :param socket: the manager's Unix socket.
    :param timeout: seconds per call (long operations pass their own).
    """

    def __init__(self, socket: Path | None = None, timeout: float = 60.0) -> None:
        self.socket = socket or default_socket()
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)),
            base_url="http://vmis",
            timeout=timeout,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, exc: Exception) -> ConnectError:
        return ConnectError(
            f"the vmis host manager is not running (no answer on {self.socket}); "
            "start it with 'vmis host serve' or 'vmis lab up'", exc
        )

    def call(self, method: str, path: str, *, json: Any = None,
             params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """One request; returns the decoded JSON answer.

        :raise ConnectError: When the manager is not running.
        :raise RequestTimeout: When it does not answer within the timeout.
        :raise ConfigError: When it finds the request's fields invalid.
        :raise VmisError: The error the manager reported, as the class it raised.
        """
        kwargs: dict[str, Any] = {"json": json, "params": params}
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            response = self._client.request(method, f"/v1{path}", **kwargs)
        except (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError) as exc:
            raise self._unreachable(exc) from exc
        except httpx.TimeoutException as exc:
            raise RequestTimeout(f"the host manager did not answer within the timeout ({exc})") \
                from exc
        return self._decode(response)

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text or response.reason_phrase}
        if response.is_success:
            return body
        if response.status_code == 422 and isinstance(body, dict):
            details = body.get("detail") or []
            text = "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}"
                for d in details if isinstance(d, dict)
            )
            raise ConfigError(f"invalid request: {text}")
        raise error_from_json(body if isinstance(body, dict) else {"error": str(body)})

    def stream(self, method: str, path: str, *, json: Any = None,
               timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """A request whose answer is JSON lines (progress of long work)."""
        import json as jsonlib

        try:
            with self._client.stream(method, f"/v1{path}", json=json,
                                     timeout=timeout) as response:
                if not response.is_success:
                    response.read()
                    self._decode(response)
                for line in response.iter_lines():
                    if line.strip():
                        item = jsonlib.loads(line)
                        if isinstance(item, dict) and item.get("type") == "error":
                            raise error_from_json(item, type_key="class")
                        yield item
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise self._unreachable(exc) from exc
