"""Bulk payloads through two real channels: several buffers per frame, large and small mixed."""

import asyncio
import hashlib
import os
import socket

from vmis.protocol import Role, encode_json
from vmis.transport.channel import Channel


class Echo:
    """Guest side: answers HELLO, echoes every other request's payload."""

    def on_synced(self, channel, event):
        pass

    def on_request(self, channel, request):
        if request.service == 0:
            channel.respond(request, encode_json({"framework": [1, 0], "services": {},
                                                  "max_payload": 16 * 1024 * 1024}))
        else:
            channel.respond(request, request.payload)

    def on_notification(self, channel, note):
        pass

    def on_session_lost(self, channel, reason):
        pass


async def connected_pair(fd_stream_guest: bool = False):
    """Host and guest channels on a socket pair, session running.

    :param fd_stream_guest: the guest end on the virtio-serial transport
        (vmis.transport.fdstream) instead of asyncio's socket transport.
    """
    from vmis.transport.fdstream import open_fd_stream

    loop = asyncio.get_running_loop()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    host = Channel(Role.HOST, Echo())
    guest = Channel(Role.GUEST, Echo())
    await loop.create_unix_connection(lambda: host, sock=a)
    if fd_stream_guest:
        open_fd_stream(loop, b.detach(), guest)
    else:
        await loop.create_unix_connection(lambda: guest, sock=b)
    await host.sync()
    await host.hello({"framework": [[1, 0]], "services": {}})
    return host, guest


async def test_payloads_of_several_buffers_arrive_whole_in_any_mix():
    host, guest = await connected_pair()
    try:
        big = os.urandom(5 * 1024 * 1024 + 7)
        sizes = [0, 1, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 300_000]
        payloads: list = [(b"head", memoryview(big)), b"x" * 10]
        payloads += [(encode_json({"n": n}), os.urandom(n)) for n in sizes]
        answers = await asyncio.gather(*(host.request(6, 4, p, timeout=30) for p in payloads))
        for payload, answer in zip(payloads, answers, strict=True):
            expected = b"".join(payload) if isinstance(payload, tuple) else payload
            assert hashlib.sha256(answer).digest() == hashlib.sha256(expected).digest()
            assert len(answer) == len(expected)
    finally:
        host.close()
        guest.close()
        await host.wait_closed()


async def test_large_payloads_through_the_fd_stream_transport_land_in_their_own_buffers():
    # The virtio-serial transport reads into the decoder's buffer too (readv).
    host, guest = await connected_pair(fd_stream_guest=True)
    try:
        payloads = [os.urandom(n) for n in (3 * 1024 * 1024 + 1, 10, 200_000)]
        answers = await asyncio.gather(*(host.request(6, 4, p, timeout=30) for p in payloads))
        assert answers == payloads
        assert isinstance(answers[0], bytearray) and isinstance(answers[1], bytes)
    finally:
        host.close()
        guest.close()
        await host.wait_closed()


async def test_the_channels_of_a_thread_share_one_receive_buffer_between_large_payloads():
    # a host holds a channel per VM: 64 KiB each would be 64 MiB at 1024 VMs
    import threading
    import tracemalloc

    pairs = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(40):
            pairs.append(await connected_pair())
        # many small requests over every pair at once, interleaved by the loop
        answers = await asyncio.gather(*(host.request(6, 4, f"{i}:{n}".encode(), timeout=30)
                                         for i, (host, _) in enumerate(pairs)
                                         for n in range(20)))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        for host, guest in pairs:
            host.close()
            guest.close()
            await host.wait_closed()
    assert answers == [f"{i}:{n}".encode() for i in range(40) for n in range(20)]
    assert grown < 2 * 1024 * 1024, grown  # 80 channels' own buffers would be 5 MiB
    buffers = {id(channel.get_buffer(-1).obj) for pair in pairs for channel in pair}
    assert len(buffers) == 1
    other: list[int] = []
    thread = threading.Thread(target=lambda: other.append(
        id(pairs[0][0].get_buffer(-1).obj)))
    thread.start()
    thread.join()
    assert other[0] not in buffers  # another thread, its own
