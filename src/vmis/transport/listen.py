"""Guest side: wait for the host on a Unix socket, AF_VSOCK, or a virtio-serial port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import tty
from collections.abc import Callable
from pathlib import Path

from vmis.errors import ConfigError, ConnectError
from vmis.transport.address import (
    Address,
    HybridVsockAddress,
    SerialAddress,
    UnixAddress,
    VsockAddress,
)
from vmis.transport.channel import Channel
from vmis.transport.fdstream import open_fd_stream

__all__ = ["find_serial_port", "serve"]

_log = logging.getLogger("vmis.transport")

#: how long to wait before reopening a virtio-serial port whose host is gone
REOPEN_DELAY = 0.5


def find_serial_port(name_or_path: str, root: Path = Path("/")) -> Path:
    """Resolve a virtio-serial port given as a path or as a port name.

    udev creates ``/dev/virtio-ports/<name>``; without udev (an initramfs) the
    name is only in ``/sys/class/virtio-ports/vport*/name``.

    :raise ConnectError: When no port has that name.
    """
    if name_or_path.startswith("/"):
        return Path(name_or_path)
    link = root / "dev/virtio-ports" / name_or_path
    if link.exists():
        return link
    sys_dir = root / "sys/class/virtio-ports"
    if sys_dir.is_dir():
        for port in sorted(sys_dir.iterdir()):
            with contextlib.suppress(OSError):
                if (port / "name").read_text().strip() == name_or_path:
                    return root / "dev" / port.name
    raise ConnectError(f"no virtio-serial port named {name_or_path!r} (is the device configured?)")


async def serve(address: Address, channel_factory: Callable[[], Channel]) -> None:
    """Accept host sessions on *address* until cancelled.

    Socket listeners give each host connection its own channel. A serial port
    has one channel at a time, reopened whenever the host side goes away.

    :raise ConfigError: For an address the guest cannot listen on.
    :raise ConnectError: When the socket cannot be bound.
    """
    loop = asyncio.get_running_loop()
    if isinstance(address, SerialAddress):
        await _serve_serial(address, channel_factory)
        return
    if isinstance(address, HybridVsockAddress):
        raise ConfigError("hvsock: is the host's end; the guest listens on vsock:PORT")
    try:
        if isinstance(address, UnixAddress):
            path = Path(address.path)
            if path.is_socket():
                path.unlink()
            server = await loop.create_unix_server(channel_factory, address.path)
            os.chmod(address.path, 0o600)
        else:
            assert isinstance(address, VsockAddress)
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            cid = socket.VMADDR_CID_ANY if address.cid < 0 else address.cid
            sock.bind((cid, address.port))
            server = await loop.create_server(channel_factory, sock=sock)
    except OSError as exc:
        raise ConnectError(f"cannot listen on {address}: {exc.strerror or exc}", exc) from exc
    async with server:
        await server.serve_forever()


async def _serve_serial(address: SerialAddress, channel_factory: Callable[[], Channel]) -> None:
    loop = asyncio.get_running_loop()
    warned = False
    while True:
        try:
            path = find_serial_port(address.device)
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, ConnectError) as exc:
            if not warned:
                _log.warning("waiting for %s: %s", address, exc)
                warned = True
            await asyncio.sleep(REOPEN_DELAY * 4)
            continue
        warned = False
        if stat.S_ISCHR(os.fstat(fd).st_mode) and os.isatty(fd):
            # A pty (tests, or an emulated port) would otherwise echo and
            # translate bytes; a real virtio port is not a tty.
            tty.setraw(fd)
        try:
            await _sessions_on_port(loop, fd, channel_factory)
        finally:
            os.close(fd)


async def _sessions_on_port(loop: asyncio.AbstractEventLoop, fd: int,
                            channel_factory: Callable[[], Channel]) -> None:
    # The port stays open across host sessions, so the hypervisor sees the
    # guest side open (QEMU's frontend-open) the whole time. A read of 0
    # means no host is connected: wait a little and read again with a fresh
    # channel. Any other error (the port was unplugged) reopens it.
    while True:
        channel = channel_factory()
        transport = open_fd_stream(loop, fd, channel, close_fd=False)
        try:
            await channel.wait_closed()
        except asyncio.CancelledError:
            transport.abort()  # unhook the descriptor before the caller closes it
            raise
        if transport.error is not None:
            _log.warning("virtio-serial port failed: %s; reopening", transport.error)
            return
        await asyncio.sleep(REOPEN_DELAY)
