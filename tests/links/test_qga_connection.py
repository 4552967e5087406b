"""A qemu-ga connection (vmis.links.qemu_ga.connection) against the real qemu-ga.

qemu-ga runs in its bubblewrap sandbox (tests/support/qga_sandbox.py); the
timing cases that qemu-ga cannot be made to produce on demand (an agent that
never answers, one that answers late) use a scripted peer on a socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from vmis.errors import ChannelClosed, ConnectError, RemoteServiceError, RequestTimeout
from vmis.links.qemu_ga.connection import QgaConnection, refusal
from vmis.transport.address import parse_address
from vmis.transport.dial import dial_stream

LOG = logging.getLogger("test")


async def connect(channel: str, timeout: float = 10) -> QgaConnection:
    conn = await dial_stream(parse_address(channel), lambda: QgaConnection("TestVM", LOG))
    await conn.sync(timeout=timeout)
    return conn


async def test_sync_then_commands_against_the_real_qemu_ga(qga_sandbox):
    conn = await connect(qga_sandbox.channel)
    try:
        info = await conn.call("guest-info")
        assert info["version"].startswith("7.")
        enabled = {c["name"]: c["enabled"] for c in info["supported_commands"]}
        assert enabled["guest-ping"] and not enabled["guest-exec"]  # blocked in the sandbox
        assert await conn.call("guest-ping") == {}
        # pipelined: three in flight, answered in order, each to its own caller
        futures = [conn.send("guest-get-time"), conn.send("guest-get-host-name"),
                   conn.send("guest-get-osinfo")]
        now, host, osinfo = await asyncio.gather(*futures)
        assert abs(now - time.time_ns()) < 60e9 and host["host-name"]
        assert osinfo["id"] == "debian"
    finally:
        conn.close()
        await conn.wait_closed()


async def test_qemu_ga_errors_carry_the_code_that_fits(qga_sandbox):
    conn = await connect(qga_sandbox.channel)
    try:
        with pytest.raises(RemoteServiceError) as missing:
            await conn.call("guest-file-open", {"path": str(qga_sandbox.dir / "none"), "mode": "r"})
        assert missing.value.code == "not-found" and "No such file" in str(missing.value)
        with pytest.raises(RemoteServiceError) as blocked:
            await conn.call("guest-exec", {"path": "/bin/true"})
        assert blocked.value.code == "denied" and "disabled" in str(blocked.value)
        with pytest.raises(RemoteServiceError) as unknown:
            await conn.call("guest-no-such-command")
        assert unknown.value.code == "unknown-op"
        with pytest.raises(RemoteServiceError) as readonly:
            await conn.call("guest-file-open", {"path": "/etc/vmis-test", "mode": "w"})
        assert readonly.value.code == "denied"  # the sandbox's / is read-only
    finally:
        conn.close()


def test_refusal_codes():
    assert refusal("guest-file-open", "GenericError",
                   "failed to open file '/x' (mode: 'r'): Permission denied").code == "denied"
    assert refusal("guest-file-write", "GenericError", "No space left on device").code == \
        "too-large"
    assert refusal("guest-x", "CommandNotFound", "The command guest-x has not been found"
                   ).code == "unknown-op"
    assert refusal("guest-fstrim", "GenericError", "something odd").code == "failed"


async def test_a_second_connection_after_a_clean_close_syncs_again(qga_sandbox):
    for _ in range(3):
        conn = await connect(qga_sandbox.channel)
        assert await conn.call("guest-ping") == {}
        conn.close()
        await conn.wait_closed()
    assert qga_sandbox.process.poll() is None  # still listening


class ScriptedPeer:
    """A socket that answers as told: nothing, or the sync only, or late."""

    def __init__(self, path, answer_sync: bool, late: float | None = None) -> None:
        self.path = path
        self.answer_sync = answer_sync
        self.late = late
        self.received = bytearray()

    async def serve(self):
        return await asyncio.start_unix_server(self._client, str(self.path))

    async def _client(self, reader, writer):
        decoder = json.JSONDecoder()
        text = ""
        while data := await reader.read(65536):
            self.received += data
            # the client's requests: compact JSON objects, each sync attempt after a 0xFF
            text += data.replace(b"\xff", b"").decode()
            while text:
                try:
                    body, end = decoder.raw_decode(text)
                except ValueError:
                    break
                text = text[end:]
                if body.get("execute") == "guest-sync-delimited" and self.answer_sync:
                    writer.write(b"\xff" + json.dumps(
                        {"return": body["arguments"]["id"]}).encode() + b"\n")
                elif "id" in body and self.late is not None:
                    await asyncio.sleep(self.late)
                    writer.write(json.dumps({"return": {}, "id": body["id"]}).encode() + b"\n")
        writer.close()


async def test_an_agent_that_never_answers_the_sync_is_a_connect_error(short_tmp):
    peer = ScriptedPeer(short_tmp / "mute.sock", answer_sync=False)
    server = await peer.serve()
    try:
        started = time.monotonic()
        with pytest.raises(ConnectError) as failed:
            await connect(f"unix:{peer.path}", timeout=5)
        assert 4.5 < time.monotonic() - started < 30
        assert "does not answer guest-sync-delimited" in str(failed.value)
        # one attempt every two seconds, each with a fresh id
        attempts = [json.loads(a)["arguments"]["id"]
                    for a in bytes(peer.received).split(b"\xff") if a]
        assert len(attempts) >= 3 and len(set(attempts)) == len(attempts)
    finally:
        server.close()


async def test_a_late_reply_times_out_and_the_connection_stays_usable(short_tmp):
    peer = ScriptedPeer(short_tmp / "slow.sock", answer_sync=True, late=0.5)
    server = await peer.serve()
    try:
        conn = await connect(f"unix:{peer.path}")
        with pytest.raises(RequestTimeout) as slow:
            await conn.call("guest-ping", timeout=0.1)
        assert "did not answer guest-ping within 0.1 s" in str(slow.value)
        # the late reply arrives and is dropped; the next request gets its own
        assert await conn.call("guest-ping", timeout=5) == {}
        conn.close()
        with pytest.raises(ChannelClosed):
            await conn.call("guest-ping")
    finally:
        server.close()


class CountingPeer:
    """Answers each request after a delay, noting how many it had unanswered at once."""

    def __init__(self, path, delay: float) -> None:
        self.path = path
        self.delay = delay
        self.most_waiting = 0
        self.order: list[int] = []

    async def serve(self):
        return await asyncio.start_unix_server(self._client, str(self.path))

    async def _client(self, reader, writer):
        decoder = json.JSONDecoder()
        text = ""
        waiting: list[dict] = []
        while data := await reader.read(65536):
            text += data.replace(b"\xff", b"").decode()
            while text:
                try:
                    body, end = decoder.raw_decode(text)
                except ValueError:
                    break
                text = text[end:]
                waiting.append(body)
            self.most_waiting = max(self.most_waiting, len(waiting))
            while waiting:
                body = waiting.pop(0)
                if body["execute"] == "guest-sync-delimited":
                    writer.write(b"\xff" + json.dumps({"return": body["arguments"]["id"]}
                                                      ).encode() + b"\n")
                    continue
                await asyncio.sleep(self.delay)
                self.order.append(body["id"])
                writer.write(json.dumps({"return": {}, "id": body["id"]}).encode() + b"\n")
        writer.close()


async def test_one_request_is_in_flight_at_a_time_and_the_next_goes_at_once(short_tmp):
    # qemu-ga over virtio-serial loses replies when requests arrive while it
    # writes them (docs/guest-links.md §2): the connection never pipelines.
    peer = CountingPeer(short_tmp / "count.sock", delay=0.05)
    server = await peer.serve()
    try:
        conn = await connect(f"unix:{peer.path}")
        futures = [conn.send("guest-ping") for _ in range(6)]
        started = time.monotonic()
        assert await asyncio.gather(*futures) == [{}] * 6
        assert peer.most_waiting == 1 and peer.order == sorted(peer.order)
        assert time.monotonic() - started < 5
        # a caller that gives up does not stop the queue
        slow = conn.send("guest-ping", timeout=5)
        slow.cancel()
        assert await conn.call("guest-ping", timeout=5) == {}
        conn.close()
    finally:
        server.close()
