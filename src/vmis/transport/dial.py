"""Host side: open a channel to a guest. The host always dials (docs/protocol.md §1)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import TypeVar

from vmis.errors import ConnectError
from vmis.transport.address import (
    Address,
    HybridVsockAddress,
    SerialAddress,
    UnixAddress,
    VsockAddress,
)
from vmis.transport.channel import Channel

__all__ = ["dial", "dial_stream"]

_HANDSHAKE_LIMIT = 256

#: the protocol a dialled connection gets: a vmis Channel, or another agent's
#: byte stream (vmis.links.qemu_ga)
P = TypeVar("P", bound=asyncio.BaseProtocol)


@contextlib.contextmanager
def map_os_errors(address: Address) -> Iterator[None]:
    """Turn OS-level connect failures into :class:`ConnectError`, most specific message first."""
    try:
        yield
    except FileNotFoundError as exc:
        raise ConnectError(f"{address}: no such socket", exc) from exc
    except ConnectionRefusedError as exc:
        raise ConnectError(f"{address}: connection refused (is the VM running?)", exc) from exc
    except PermissionError as exc:
        raise ConnectError(f"{address}: permission denied", exc) from exc
    except TimeoutError as exc:
        raise ConnectError(f"{address}: timed out", exc) from exc
    except OSError as exc:
        raise ConnectError(f"{address}: {exc.strerror or exc}", exc) from exc


async def dial(
    address: Address, channel_factory: Callable[[], Channel], timeout: float = 5.0
) -> Channel:
    """Connect to a guest and return the connected (not yet synced) channel.

    :raise ConnectError: When the address cannot be reached.
    """
    return await dial_stream(address, channel_factory, timeout)


async def dial_stream(address: Address, protocol_factory: Callable[[], P],
                      timeout: float = 5.0) -> P:
    """Connect to a guest with any asyncio protocol; return it, connected.

    :raise ConnectError: When the address cannot be reached.
    """
    loop = asyncio.get_running_loop()
    with map_os_errors(address):
        async with asyncio.timeout(timeout):
            if isinstance(address, UnixAddress):
                _, protocol = await loop.create_unix_connection(protocol_factory, address.path)
                return protocol
            if isinstance(address, VsockAddress):
                sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, (address.cid, address.port))
                except BaseException:
                    sock.close()
                    raise
                _, protocol = await loop.create_connection(protocol_factory, sock=sock)
                return protocol
            if isinstance(address, HybridVsockAddress):
                return await _dial_hybrid(address, protocol_factory)
    assert isinstance(address, SerialAddress)
    raise ConnectError(f"{address}: a serial address is the guest's end; the host dials unix:")


async def _dial_hybrid(address: HybridVsockAddress, protocol_factory: Callable[[], P]) -> P:
    # Firecracker's vsock device: connect to the host-side Unix socket, send
    # "CONNECT <port>\n", and the device answers "OK <host port>\n" once the
    # guest has accepted; from then on the socket is the guest connection.
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, address.path)
        await loop.sock_sendall(sock, f"CONNECT {address.port}\n".encode())
        buf = b""
        while b"\n" not in buf:
            chunk = await loop.sock_recv(sock, _HANDSHAKE_LIMIT)
            if not chunk:
                raise ConnectionRefusedError(f"no guest listens on vsock port {address.port}")
            buf += chunk
            if len(buf) > _HANDSHAKE_LIMIT:
                raise ConnectError(f"{address}: handshake reply too long")
        line, _, rest = buf.partition(b"\n")
        if not line.startswith(b"OK"):
            raise ConnectError(f"{address}: handshake refused: {line[:80]!r}")
        _, protocol = await loop.create_connection(protocol_factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    if rest:
        # Bytes the guest sent right after the handshake belong to the session.
        protocol.data_received(rest)  # type: ignore[attr-defined]
    return protocol
