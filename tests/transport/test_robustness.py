"""Garbage, truncated and oversized frames end that session only (issue 2 acceptance).

The guest agent and the host manager both keep running; the next session
works. Property tests drive the sans-IO connection with arbitrary bytes; the
fuzz tests throw mutated streams at a real agent over its socket.
"""

import asyncio
import logging
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.logs import kept_records
from support.pair import _start_agent, eventually, host_guest_pair, quick_config
from vmis.errors import RemoteProtocolError
from vmis.protocol import Connection, Role, State, Synced
from vmis.protocol.frames import Frame, Kind, encode_frame, encode_header
from vmis.transport.address import UnixAddress
from vmis.transport.channel import Channel
from vmis.transport.dial import dial


def sync_bytes(nonce=b"12345678"):
    return b"".join(encode_frame(Frame(Kind.REQUEST, 0, 1, 1, nonce)))


@settings(max_examples=300)
@given(st.binary(max_size=4096))
def test_property_guest_survives_any_bytes_then_syncs(garbage):
    guest = Connection(Role.GUEST)
    if garbage:  # b"" would mean end of stream
        guest.receive_data(garbage)
    for _ in range(len(garbage) + 1):
        try:
            list(guest.events())
            break
        except RemoteProtocolError:
            assert guest.state is State.HUNTING
    # a flush as the host's retry sends, then a SYNC, always gets through
    guest.receive_data(bytes(70000) + sync_bytes())
    events = []
    for _ in range(10):
        try:
            events += list(guest.events())
            break
        except RemoteProtocolError:
            continue
    assert Synced(b"12345678") in events


@settings(max_examples=200)
@given(st.binary(max_size=2048))
def test_property_host_rejects_garbage_with_one_error(garbage):
    host = Connection(Role.HOST)
    host.start_sync()
    host.receive_data(garbage)
    try:
        list(host.events())
    except RemoteProtocolError:
        assert host.state is State.CLOSED


async def raw_session(path, payload, read=True):
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(payload)
    await writer.drain()
    data = b""
    if read:
        try:
            async with asyncio.timeout(0.3):
                while chunk := await reader.read(65536):
                    data += chunk
        except TimeoutError:
            pass
    writer.close()
    return data


class Quiet:
    def on_synced(self, c, e): ...
    def on_request(self, c, r): c.fail(r, "unknown-op", "")
    def on_notification(self, c, n): ...
    def on_session_lost(self, c, r): ...


async def assert_agent_healthy(path):
    channel = await dial(UnixAddress(path), lambda: Channel(Role.HOST, Quiet()))
    await channel.sync()
    answer = await channel.hello({"framework": [[1, 0]], "services": {}})
    assert answer["framework"] == [1, 0]
    channel.close()


@pytest.fixture
def channel_log():
    """The channel's ERROR records, kept by a handler on its own logger (not
    pytest's per-phase capture, which an earlier test of the run can starve)."""
    with kept_records(logging.getLogger("vmis.channel"), logging.ERROR) as kept:
        yield kept


async def test_agent_survives_garbage_truncated_and_oversized_frames(short_tmp, channel_log):
    agent, task = await _start_agent(short_tmp, config=quick_config(max_payload=65536))
    path = str(short_tmp / "run/vmis/channel.sock")
    try:
        # garbage only
        await raw_session(path, random.Random(1).randbytes(5000))
        # a valid sync, then an oversized frame header
        await raw_session(path, sync_bytes() + encode_header(Kind.REQUEST, 2, 1, 5, 10**8))
        # a valid sync, then a truncated frame and EOF
        await raw_session(path, sync_bytes() + encode_header(Kind.REQUEST, 2, 1, 5, 100) + b"x")
        # a valid sync, then a frame with a broken header checksum
        bad = bytearray(encode_header(Kind.REQUEST, 2, 1, 5, 0))
        bad[-1] ^= 0xFF
        await raw_session(path, sync_bytes() + bytes(bad))
        assert not task.done(), "the agent exited"
        # logged when the peer has seen the end of the session, which may come after
        await eventually(lambda: any("protocol error" in r.getMessage() for r in channel_log.records))
        await assert_agent_healthy(path)
    finally:
        agent.shutdown()
        await task


async def test_fuzz_mutated_streams_against_a_real_agent(short_tmp):
    agent, task = await _start_agent(short_tmp, config=quick_config(max_payload=65536))
    path = str(short_tmp / "run/vmis/channel.sock")
    rng = random.Random(2026)
    hello = b"".join(encode_frame(Frame(Kind.REQUEST, 0, 2, 2, b'{"framework":[[1,0]]}')))
    valid = sync_bytes() + hello + b"".join(
        b"".join(encode_frame(Frame(Kind.REQUEST, op % 8, op, op + 3, rng.randbytes(op * 7))))
        for op in range(1, 20)
    )
    try:
        for _ in range(60):
            data = bytearray(valid)
            for _ in range(rng.randint(1, 12)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            cut = rng.randint(len(valid) // 2, len(data))
            await raw_session(path, bytes(data[:cut]), read=False)
        assert not task.done()
        await assert_agent_healthy(path)
    finally:
        agent.shutdown()
        await task


async def fake_guest_server(path, behaviour):
    """A guest that answers SYNC correctly, then does `behaviour(writer)`."""
    async def client(reader, writer):
        guest = Connection(Role.GUEST)
        while data := await reader.read(65536):
            guest.receive_data(data)
            try:
                events = list(guest.events())
            except RemoteProtocolError:
                events = []
            writer.write(b"".join(guest.data_to_send()))
            if any(isinstance(e, Synced) for e in events):
                await behaviour(writer)
                return

    return await asyncio.start_unix_server(client, path)


async def test_host_ends_a_garbage_session_logs_it_and_reconnects(short_tmp, channel_log):
    attempts = 0

    async def garbage(writer):
        nonlocal attempts
        attempts += 1
        writer.write(b"\x89VMI" + random.randbytes(100))
        await writer.drain()
        await asyncio.sleep(5)

    async with host_guest_pair(short_tmp, wait=False) as pair:
        path = short_tmp / "evil.sock"
        server = await fake_guest_server(str(path), garbage)
        pair.manager.add_vm("Evil", f"unix:{path}")
        session = pair.manager.session("Evil")
        await eventually(lambda: attempts >= 2, timeout=15)
        # logged when the peer has seen the end of the session, which may come after
        await eventually(lambda: any("protocol error" in r.getMessage() for r in channel_log.records))
        assert not session.connected and session._task is not None and not session._task.done()
        # the other VM never noticed
        assert await pair.session.wait_connected(10)
        server.close()
