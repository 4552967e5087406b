"""Every transport carries a real session: Unix socket, hybrid vsock, virtio-serial (pty).

The host side is a real :class:`VmSession`-free :class:`Channel` driven by
hand; the guest side is a real agent, so the handshake, HELLO and a PING
cross each transport for real.
"""

import asyncio
import contextlib
import os
import pty
import socket

import pytest

from support.pair import _start_agent, quick_config
from vmis.errors import ConfigError, ConnectError
from vmis.protocol import ControlOp, Role
from vmis.protocol.services import CONTROL
from vmis.transport.address import (
    HybridVsockAddress,
    SerialAddress,
    UnixAddress,
    VsockAddress,
    parse_address,
)
from vmis.transport.channel import Channel
from vmis.transport.dial import dial
from vmis.transport.listen import find_serial_port


class NullHandler:
    def __init__(self):
        self.notes = []

    def on_synced(self, channel, event):
        pass

    def on_request(self, channel, request):
        channel.fail(request, "unknown-op", "test host")

    def on_notification(self, channel, note):
        self.notes.append(note)

    def on_session_lost(self, channel, reason):
        pass


async def handshake(address):
    handler = NullHandler()
    channel = await dial(address, lambda: Channel(Role.HOST, handler, name="t"))
    await channel.sync()
    answer = await channel.hello({"framework": [[1, 0]], "services": {"heartbeat": [[1, 0]]}})
    assert answer["services"]["heartbeat"]["version"] == [1, 0]
    assert await channel.request(CONTROL, ControlOp.PING, b"") == b""
    return channel, handler


@pytest.mark.parametrize("text, parsed", [
    ("unix:/run/x.sock", UnixAddress("/run/x.sock")),
    ("vsock:3:7460", VsockAddress(3, 7460)),
    ("vsock:7460", VsockAddress(-1, 7460)),
    ("hvsock:/run/fc/v.sock:52", HybridVsockAddress("/run/fc/v.sock", 52)),
    ("serial:org.vmis.agent.0", SerialAddress("org.vmis.agent.0")),
    ("UNIX:/a", UnixAddress("/a")),
])
def test_addresses(text, parsed):
    assert parse_address(text) == parsed


@pytest.mark.parametrize("text", ["", "unix", "tcp:1.2.3.4:5", "vsock:x:1", "hvsock:/p",
                                  "vsock:1:99999999999"])
def test_bad_addresses(text):
    with pytest.raises(ConfigError):
        parse_address(text)


async def test_unix_socket_session(short_tmp):
    agent, task = await _start_agent(short_tmp, config=quick_config())
    try:
        channel, handler = await handshake(UnixAddress(str(short_tmp / "run/vmis/channel.sock")))
        # the agent beats at once on a new session
        async with asyncio.timeout(10):
            while not handler.notes:
                await asyncio.sleep(0.02)
        channel.close()
    finally:
        agent.shutdown()
        await task


async def test_dial_errors_are_clear(short_tmp):
    with pytest.raises(ConnectError, match="no such socket"):
        await dial(UnixAddress(str(short_tmp / "none.sock")), lambda: None)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(short_tmp / "dead.sock"))
    sock.close()
    with pytest.raises(ConnectError, match="refused"):
        await dial(UnixAddress(str(short_tmp / "dead.sock")), lambda: None)


async def _firecracker_mux(path, guest_path, port, reply=b"OK 1073741824\n"):
    """A Firecracker-style vsock device: CONNECT <port> then splice to the guest."""
    async def client(reader, writer):
        line = await reader.readline()
        if line != f"CONNECT {port}\n".encode():
            writer.write(b"ERR unknown port\n")
            writer.close()
            return
        g_reader, g_writer = await asyncio.open_unix_connection(guest_path)
        writer.write(reply)

        async def pump(src, dst):
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, g_writer), pump(g_reader, writer))

    return await asyncio.start_unix_server(client, path)


async def test_hybrid_vsock_session(short_tmp):
    agent, task = await _start_agent(short_tmp / "g", config=quick_config())
    mux = await _firecracker_mux(str(short_tmp / "v.sock"),
                                 str(short_tmp / "g/run/vmis/channel.sock"), 52)
    try:
        channel, _ = await handshake(HybridVsockAddress(str(short_tmp / "v.sock"), 52))
        channel.close()
        with pytest.raises(ConnectError, match="refused"):
            await dial(HybridVsockAddress(str(short_tmp / "v.sock"), 53), lambda: None)
    finally:
        mux.close()
        agent.shutdown()
        await task


async def _chardev_bridge(path, master_fd):
    """What QEMU's `-chardev socket,server=on` does for a virtio-serial port:
    one host connection at a time, spliced to the guest's port (here a pty)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(master_fd, False)

    async def client(reader, writer):
        def readable():
            try:
                data = os.read(master_fd, 65536)
            except (BlockingIOError, OSError):
                return
            writer.write(data)

        loop.add_reader(master_fd, readable)
        try:
            while data := await reader.read(65536):
                os.write(master_fd, data)
        finally:
            loop.remove_reader(master_fd)
            writer.close()

    return await asyncio.start_unix_server(client, path)


async def test_virtio_serial_session_over_a_pty(short_tmp):
    master, slave = pty.openpty()
    slave_path = os.ttyname(slave)
    bridge = await _chardev_bridge(str(short_tmp / "chardev.sock"), master)
    agent, task = await _start_agent(short_tmp / "g",
                                     config=quick_config(channel=f"serial:{slave_path}"))
    try:
        channel, _ = await handshake(UnixAddress(str(short_tmp / "chardev.sock")))
        channel.close()
        await asyncio.sleep(0.1)
        # the port keeps no connection semantics: a second host session on the
        # same stream resyncs past whatever the first left behind
        channel, _ = await handshake(UnixAddress(str(short_tmp / "chardev.sock")))
        channel.close()
    finally:
        bridge.close()
        agent.shutdown()
        await task
        os.close(slave)
        with contextlib.suppress(OSError):
            os.close(master)


def test_find_serial_port_by_name(tmp_path):
    ports = tmp_path / "sys/class/virtio-ports/vport1p1"
    ports.mkdir(parents=True)
    (ports / "name").write_text("org.vmis.agent.0\n")
    assert find_serial_port("org.vmis.agent.0", tmp_path) == tmp_path / "dev/vport1p1"
    link = tmp_path / "dev/virtio-ports"
    link.mkdir(parents=True)
    (link / "org.vmis.agent.0").write_text("")
    assert find_serial_port("org.vmis.agent.0", tmp_path) == link / "org.vmis.agent.0"
    assert find_serial_port("/dev/vport9p1", tmp_path).as_posix() == "/dev/vport9p1"
    with pytest.raises(ConnectError, match="no virtio-serial port named"):
        find_serial_port("org.other", tmp_path)


async def test_guest_listens_on_vsock_where_available(short_tmp):
    # No host-to-guest vsock path exists on a test machine without
    # vhost-vsock (docs/real-vms.md, "The test machines"): check the agent really listens by
    # failing to bind its port a second time. The real path is tested in VMs.
    if not hasattr(socket, "AF_VSOCK"):
        pytest.skip("no AF_VSOCK in this Python")
    try:
        probe = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    except OSError as exc:
        pytest.skip(f"AF_VSOCK unavailable here: {exc}")
    port = 40000 + os.getpid() % 20000
    agent, task = await _start_agent(short_tmp, config=quick_config(channel=f"vsock:{port}"))
    try:
        await asyncio.sleep(0.2)
        assert not task.done()
        with probe, pytest.raises(OSError):
            probe.bind((socket.VMADDR_CID_ANY, port))
    finally:
        agent.shutdown()
        await task
