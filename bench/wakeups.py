"""Wakeups: what 1024 small messages a second cost a receiver, spread out or together.

A sender process writes one 29-byte message (a BEAT's size) a second on
each of N socket pairs; the receiver, on uvloop like the host manager,
only counts them. Run once with the messages spread evenly over each second
(the baseline: VMs whose beats have no common phase) and once with each
second's messages sent together (beats on the wall-clock grid,
docs/protocol.md §7). Prints the receiver's user and system CPU (% of one
core) and the ratio.

    .venv/bin/python bench/wakeups.py [-n 1024] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import time

MESSAGE = b"\x89VMI" + bytes(25)


def send(pairs: list[socket.socket], seconds: float, together: bool) -> None:
    """Child process: one message per socket per second until *seconds* are up."""
    n = len(pairs)
    start = time.monotonic()
    k = 0
    while time.monotonic() - start < seconds:
        due = start + (k // n if together else k / n)
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            pairs[k % n].send(MESSAGE)
        except OSError:
            return
        k += 1


class Counter(asyncio.Protocol):
    received = 0

    def data_received(self, data: bytes) -> None:
        Counter.received += 1


async def receive(ends: list[socket.socket], seconds: float) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    for end in ends:
        await loop.connect_accepted_socket(Counter, end)
    await asyncio.sleep(1.5)  # the first second: connections settle
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    await asyncio.sleep(seconds)
    after, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - t0
    return (100 * (after.ru_utime - before.ru_utime) / elapsed,
            100 * (after.ru_stime - before.ru_stime) / elapsed)


def run(n: int, seconds: float, together: bool) -> tuple[float, float]:
    pairs = [socket.socketpair() for _ in range(n)]
    pid = os.fork()
    if pid == 0:
        for mine, _ in pairs:
            mine.close()
        send([theirs for _, theirs in pairs], seconds + 3, together)
        os._exit(0)
    for _, theirs in pairs:
        theirs.close()
    try:
        import uvloop
        return uvloop.run(receive([mine for mine, _ in pairs], seconds))
    except ImportError:
        return asyncio.run(receive([mine for mine, _ in pairs], seconds))
    finally:
        for mine, _ in pairs:
            mine.close()
        os.waitpid(pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1024, help="senders (socket pairs)")
    parser.add_argument("--seconds", type=float, default=20.0, help="CPU sampling window")
    args = parser.parse_args()
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    spread = run(args.n, args.seconds, together=False)
    together = run(args.n, args.seconds, together=True)
    print(f"{args.n} messages a second, receiver CPU (% of one core), {args.seconds:g} s window")
    print(f"{'':24}{'user':>8}{'system':>8}{'total':>8}")
    for name, (user, system) in (("spread over the second", spread), ("sent together", together)):
        print(f"{name:24}{user:7.2f}%{system:7.2f}%{user + system:7.2f}%")
    ratio = sum(together) / sum(spread) if sum(spread) else float("nan")
    print(f"together / spread: {ratio:.2f}")


if __name__ == "__main__":
    main()
