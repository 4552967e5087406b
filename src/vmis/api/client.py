"""Client of the host manager's API, over its Unix socket or TCP (used by the CLI).

A plain call (a JSON request, a JSON answer) is one HTTP/1.1 exchange on a
new connection, written with the standard library's socket alone: the
command lines' common path (``vmis Get-VMIntegrationService``) must start
fast (bench/cli_start.py), and importing httpx took longer than all the rest
of that command. A stream of JSON lines (the progress of long work:
Copy-VMFile, Update-VMIntegrationServices) is read the same way, line by
line as the manager sends it: importing httpx and making its transport cost
a copy's command line more than a small copy itself (bench/copy_latency.py).

A remote manager (:class:`~vmis.api.remote.Remote`: ``-Server`` or
``$VMIS_URL``) is reached the same way over TCP, TLS and its token added.
The event stream (Server-Sent Events, :meth:`ApiClient.sse`) uses httpx.
"""

from __future__ import annotations

import json as jsonlib
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from vmis.errors import ChannelClosed, ConfigError, ConnectError, ManagerApiError, RequestTimeout

if TYPE_CHECKING:
    from io import BufferedReader
    from pathlib import Path

    from vmis.api.remote import Remote
    from vmis.api.sse import SseEvent

__all__ = ["SYSTEM_SOCKET", "ApiClient", "api_path", "default_lab_dir", "default_socket",
           "query_string"]

#: where a system-wide host manager listens
SYSTEM_SOCKET = "/run/vmis/host.sock"
#: the longest answer a plain call reads (a Get-VM of thousands of VMs is far less)
MAX_ANSWER = 256 * 1024 * 1024
#: the longest head of an answer, and the longest line of a stream
MAX_HEAD = 64 * 1024
MAX_LINE = 64 * 1024 * 1024


def default_lab_dir() -> Path:
    """The lab directory: ``$VMIS_LAB_DIR``, else the user's own,
    ``$XDG_STATE_HOME/vmis/lab`` (``~/.local/state/vmis/lab`` by default).

    The current directory plays no part, so every command finds the one lab
    wherever it runs. A relative ``$XDG_STATE_HOME`` is ignored, as the XDG
    Base Directory specification requires.
    """
    from pathlib import Path  # the lab's commands: the common path does without it

    return Path(_lab_dir())


def _lab_dir() -> str:
    if explicit := os.environ.get("VMIS_LAB_DIR"):
        return os.path.abspath(os.path.expanduser(explicit))
    state = os.environ.get("XDG_STATE_HOME", "")
    base = state if os.path.isabs(state) else os.path.join(os.path.expanduser("~"), ".local",
                                                           "state")
    return os.path.join(base, "vmis", "lab")


def default_socket() -> str:
    """The manager socket the CLI talks to.

    ``$VMIS_SOCKET`` if set; else the lab's manager when the lab directory
    (:func:`default_lab_dir`) has one; else the system-wide
    ``/run/vmis/host.sock``.
    """
    if env := os.environ.get("VMIS_SOCKET"):
        return env
    lab = os.path.join(_lab_dir(), "host.sock")
    if os.path.exists(lab):
        return lab
    return SYSTEM_SOCKET


def api_path(*segments: str) -> str:
    """``/a/b/c`` from its segments, each percent-encoded: a VM name may hold ``#``,
    ``?``, ``%`` or spaces, and a name from before vmis checked names even ``/``."""
    if all(_PLAIN.issuperset(segment) for segment in segments):
        return "".join("/" + segment for segment in segments)
    from urllib.parse import quote  # 2 ms: only for names that need it

    return "".join("/" + quote(segment, safe="") for segment in segments)


def query_string(query: dict[str, Any]) -> str:
    """``urlencode(query, doseq=True)``: a list's items each with the key; urllib only for
    what needs encoding."""
    pairs = [(key, str(item)) for key, value in query.items()
             for item in (value if isinstance(value, (list, tuple)) else [value])]
    if all(isinstance(value, (str, int, list, tuple)) for value in query.values()) and all(
            _PLAIN.issuperset(key) and _PLAIN.issuperset(item) for key, item in pairs):
        return "&".join(f"{key}={item}" for key, item in pairs)
    from urllib.parse import urlencode

    return urlencode(query, doseq=True)


#: what a path segment holds as it is (RFC 3986's unreserved characters)
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class _Answer:
    """One HTTP answer, read whole."""

    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


def _dechunk(data: bytes) -> bytes:
    """The body of a ``Transfer-Encoding: chunked`` answer (RFC 9112 §7.1)."""
    body = bytearray()
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            raise ValueError("a chunk is cut short")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(body)
        if len(data) < size + 2:
            raise ValueError("a chunk is cut short")
        body += data[:size]
        data = data[size + 2:]


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    """The status, reason and headers (names in lower case) of an answer's head."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, *reason = status_line.split(" ", 2)
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1 answer: {status_line!r}")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status), reason[0] if reason else "", headers


def _parse(data: bytes) -> _Answer:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("no end of the headers")
    status, reason, headers = _parse_head(head)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if len(body) < length:
            raise ValueError("the answer is cut short")
        body = body[:length]
    return _Answer(status, reason, headers, body)


def _read_head(reader: BufferedReader) -> bytes:
    """An answer's head from a stream, up to its empty line (not included)."""
    head = bytearray()
    while True:
        line = reader.readline(MAX_HEAD)
        if not line:
            raise ConnectionResetError("closed without an answer")
        if not line.endswith(b"\n"):
            raise ValueError("no end of the headers")
        if line in (b"\r\n", b"\n"):
            return bytes(head.rstrip(b"\r\n"))
        head += line
        if len(head) > MAX_HEAD:
            raise ValueError(f"headers over {MAX_HEAD} bytes")


def _chunks(reader: BufferedReader) -> Iterator[bytes]:
    """A ``Transfer-Encoding: chunked`` body, chunk by chunk as it arrives."""
    while True:
        size_line = reader.readline(1024)
        if not size_line:
            raise _cut_short()
        if not size_line.endswith(b"\n"):
            raise ValueError("a chunk size line is too long")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return
        data = reader.read(size + 2)
        if len(data) < size + 2:
            raise _cut_short()
        yield data[:size]


def _body_pieces(reader: BufferedReader, headers: dict[str, str]) -> Iterator[bytes]:
    """An answer's body as it arrives: chunked, of a stated length, or up to the close."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        yield from _chunks(reader)
        return
    left = int(headers["content-length"]) if "content-length" in headers else -1
    while left != 0:
        piece = reader.read1(65536 if left < 0 else min(left, 65536))
        if not piece:
            if left > 0:
                raise _cut_short()
            return
        left -= len(piece) if left > 0 else 0
        yield piece


def _cut_short() -> OSError:
    """The connection ended inside an answer (the manager went away)."""
    return ConnectionAbortedError("the connection closed inside the answer")


def _lines(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a body that arrives in pieces cut anywhere."""
    rest = b""
    for piece in pieces:
        rest += piece
        *whole, rest = rest.split(b"\n")
        yield from whole
        if len(rest) > MAX_LINE:
            raise ValueError(f"a line over {MAX_LINE} bytes")
    if rest:
        yield rest


class ApiClient:
    """Synchronous API calls; errors come back as the vmis errors the server raised.

    :param socket: the manager's Unix socket.
    :param timeout: seconds per call (long operations pass their own).
    :param remote: a manager over TCP instead (its URL, token, trust).
    """

    def __init__(self, socket: str | Path | None = None, timeout: float = 60.0,
                 remote: Remote | None = None) -> None:
        self.socket = os.fspath(socket or default_socket())
        self.timeout = timeout
        self.remote = remote
        self._httpx: Any = None

    @classmethod
    def for_target(cls, server: str | None = None) -> ApiClient:
        """The client of ``-Server`` (else ``$VMIS_URL``), else of the local socket."""
        if not (server or os.environ.get("VMIS_URL")):
            return cls()
        from vmis.api.remote import Remote  # TLS and URLs: not the local socket's concern

        return cls(remote=Remote.from_environment(server))

    @property
    def where(self) -> str:
        """The manager, for messages: its URL or its socket."""
        return self.remote.url if self.remote is not None else self.socket

    def close(self) -> None:
        if self._httpx is not None:
            self._httpx.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, exc: BaseException) -> ConnectError:
        if self.remote is not None:
            return ConnectError(f"no host manager answers at {self.remote.url}: {exc}", exc)
        if isinstance(exc, PermissionError):
            return ConnectError(f"permission denied on the host manager's socket {self.socket} "
                                "(mode 0600: run as the user who started it, or as root)", exc)
        return ConnectError(
            f"the vmis host manager is not running (no answer on {self.socket}); "
            "start it with 'vmis host serve' or 'vmis lab up'", exc
        )

    def call(self, method: str, path: str, *, json: Any = None,
             params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """One request; returns the decoded JSON answer.

        :param path: under ``/v1``, its segments encoded (:func:`api_path`).
        :param params: the query; a list value repeats its key.
        :raise ConnectError: When the manager is not running.
        :raise RequestTimeout: When it does not answer within the timeout.
        :raise ConfigError: When it finds the request's fields invalid.
        :raise VmisError: The error the manager reported, as the class it raised.
        """
        request = self._request(method, path, json=json, params=params)
        return self._decode(self._exchange(request, self.timeout if timeout is None else timeout))

    def _request(self, method: str, path: str, *, json: Any = None,
                 params: dict[str, Any] | None = None) -> bytes:
        """The bytes of one HTTP/1.1 request (the connection closed after its answer)."""
        target = f"/v1{path}"
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if query:
            target += ("&" if "?" in target else "?") + query_string(query)
        body = None if json is None else jsonlib.dumps(json).encode()
        host = self.remote.host_header if self.remote is not None else "vmis"
        head = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close",
                "Accept: application/json"]
        if self.remote is not None:
            head += [f"{name}: {value}" for name, value in self.remote.headers().items()]
        if body is not None:
            head.append("Content-Type: application/json")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body or b'')}")
        return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + (body or b"")

    def _connect(self, timeout: float) -> socket.socket:
        if self.remote is not None:
            return self.remote.connect(timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.socket)
        except OSError as exc:
            sock.close()
            raise self._unreachable(exc) from exc
        return sock

    def _exchange(self, request: bytes, timeout: float) -> _Answer:
        sock = self._connect(timeout)
        try:
            sock.sendall(request)
            data = bytearray()
            while chunk := sock.recv(1024 * 1024):
                data += chunk
                if len(data) > MAX_ANSWER:
                    raise ManagerApiError(f"the host manager's answer is over {MAX_ANSWER} bytes")
        except TimeoutError as exc:
            raise RequestTimeout(f"the host manager did not answer within {timeout:g} s") \
                from exc
        except OSError as exc:  # reset, broken pipe: it went away while answering
            raise self._unreachable(exc) from exc
        finally:
            sock.close()
        if not data:
            raise self._unreachable(ConnectionResetError("closed without an answer"))
        try:
            return _parse(bytes(data))
        except ValueError as exc:
            raise ManagerApiError(f"the host manager's answer is not HTTP/1.1: {exc}") from None

    @staticmethod
    def _decode(answer: _Answer) -> Any:
        try:
            body = jsonlib.loads(answer.body)
        except ValueError:
            body = {"error": answer.body.decode(errors="replace") or answer.reason}
        if not 200 <= answer.status < 300:
            _raise(answer.status, body)
        return body

    def stream(self, method: str, path: str, *, json: Any = None,
               timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """A request whose answer is JSON lines (progress of long work), each decoded as it
        arrives.

        :param timeout: seconds without a byte from the manager (None: no limit).
        :raise ConnectError: When the manager is not running.
        :raise ChannelClosed: When the connection fails once the answer has begun.
        :raise VmisError: The error the manager reported, before or during the stream.
        """
        request = self._request(method, path, json=json)
        sock = self._connect(self.timeout)
        begun = False
        try:
            sock.settimeout(timeout)
            sock.sendall(request)
            reader = sock.makefile("rb")
            status, reason, headers = _parse_head(_read_head(reader))
            begun = True
            if not 200 <= status < 300:
                body = b"".join(_body_pieces(reader, headers))
                self._decode(_Answer(status, reason, headers, body))
            for line in _lines(_body_pieces(reader, headers)):
                if line.strip():
                    item = jsonlib.loads(line)
                    if isinstance(item, dict) and item.get("type") == "error":
                        from vmis.api.errors import error_from_json  # inspect: errors only

                        raise error_from_json(item, type_key="class")
                    yield item
        except TimeoutError as exc:
            raise RequestTimeout(f"the host manager sent nothing for {timeout:g} s") from exc
        except OSError as exc:
            if not begun:  # reset, broken pipe: it went away before answering
                raise self._unreachable(exc) from exc
            raise ChannelClosed(f"the host manager's answer broke off ({exc})") from exc
        except ValueError as exc:
            raise ManagerApiError(f"the host manager's answer is not HTTP/1.1 JSON lines: "
                                  f"{exc}") from None
        finally:
            sock.close()

    def _streams(self) -> Any:
        """The httpx client of the event stream, made (and httpx imported) at the first."""
        import httpx

        if self._httpx is None and self.remote is not None:
            self._httpx = httpx.Client(
                base_url=self.remote.url, headers=self.remote.headers(), timeout=self.timeout,
                verify=self.remote.library_context(self.timeout) or False)
        elif self._httpx is None:
            self._httpx = httpx.Client(transport=httpx.HTTPTransport(uds=self.socket),
                                       base_url="http://vmis", timeout=self.timeout)
        return self._httpx

    async def websocket(self, path: str, **options: Any) -> Any:
        """A WebSocket to *path* under ``/v1`` (Invoke-Command), through websockets:
        its ``ClientConnection``. *options* go to websockets' ``connect``.

        :raise AccessError: When the manager refuses the caller (401, 403).
        :raise ConnectError: When it cannot be reached or does not stream.
        """
        from websockets.asyncio.client import connect, unix_connect
        from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

        try:
            if self.remote is None:
                return await unix_connect(self.socket, f"ws://vmis/v1{path}", **options)
            scheme = "wss" if self.remote.scheme == "https" else "ws"
            return await connect(
                f"{scheme}://{self.remote.host_header}/v1{path}",
                additional_headers=self.remote.headers(),
                ssl=self.remote.library_context(options.get("open_timeout") or self.timeout),
                **options)
        except InvalidStatus as exc:
            answer = exc.response
            try:
                body = jsonlib.loads(answer.body or b"")
            except ValueError:
                body = {"error": f"the WebSocket was refused: {answer.status_code}"}
            _raise(answer.status_code, body)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise ConnectError(
                f"the vmis host manager is not running or does not stream (no WebSocket at "
                f"{self.where}: {exc}); start it with 'vmis host serve' or 'vmis lab up'",
                exc) from exc


    def sse(self, path: str, params: dict[str, Any] | None = None, read_timeout: float = 45.0,
            opened: Callable[[], None] | None = None) -> Iterator[SseEvent]:
        """The events of a Server-Sent Events answer (the event stream), through httpx;
        ends when the manager ends the stream.

        :param read_timeout: seconds without a byte (the stream sends a keepalive
            every 15 s) after which the connection counts as dropped.
        :param opened: called once the manager has accepted the stream.
        :raise ConnectError: When the manager is not running.
        :raise ChannelClosed: When the connection drops once the stream has begun.
        """
        import httpx

        from vmis.api.sse import SseDecoder

        query = {k: v for k, v in (params or {}).items() if v is not None}
        timeout = httpx.Timeout(self.timeout, read=read_timeout)
        decoder = SseDecoder()
        try:
            with self._streams().stream("GET", f"/v1{path}", params=query, timeout=timeout,
                                        headers={"Accept": "text/event-stream"}) as response:
                _raise_unless_success(response)
                if opened is not None:
                    opened()
                for line in response.iter_lines():
                    event = decoder.feed(line)
                    if event is not None:
                        yield event
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise self._unreachable(exc) from exc
        except httpx.TransportError as exc:
            raise ChannelClosed(f"the event stream dropped ({type(exc).__name__}"
                                f"{': ' + str(exc) if str(exc) else ''})") from exc


def _raise_unless_success(response: Any) -> None:
    """Raise what a stream's error answer (an httpx response, not read yet) says."""
    if response.is_success:
        return
    response.read()
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text or response.reason_phrase}
    _raise(response.status_code, body)


def _raise(status: int, body: Any) -> NoReturn:
    """Raise what an error answer says: the manager's own error as its class, FastAPI's
    checks of a request's fields as a ConfigError, anything else as a ManagerApiError."""
    from vmis.api.errors import error_from_json

    if isinstance(body, dict) and "error" not in body and "detail" in body:
        details = body["detail"]
        if status == 422 and isinstance(details, list):
            text = "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}"
                for d in details if isinstance(d, dict)
            )
            raise ConfigError(f"invalid request: {text}")
        raise ManagerApiError(f"the host manager answered {status}: {details}")
    raise error_from_json(body if isinstance(body, dict) else {"error": str(body)})
