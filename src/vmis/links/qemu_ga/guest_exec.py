"""Programs run in the guest through qemu-ga: guest-exec, then guest-exec-status until it exits.

qemu-ga starts the program and keeps its output (base64, at most 16 MiB
per stream) until a guest-exec-status finds it exited; then it forgets the
process. So a run is a start and a poll, every few milliseconds at first
and at most every :data:`MAX_POLL` seconds. VM Session runs the host's
commands this way, and the other translations run coreutils programs with
their arguments as a list (no shell quoting anywhere) where qemu-ga has no
command of its own: directories, renames, hashes.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmis.errors import RemoteServiceError, RequestTimeout

if TYPE_CHECKING:
    from vmis.links.qemu_ga.translator import LinkContext

__all__ = ["MAX_POLL", "OUTPUT_CAP", "Completed", "check_output", "poll", "run", "start"]

#: longest wait between two guest-exec-status polls, seconds
MAX_POLL = 0.2
#: qemu-ga keeps at most this much of each output stream (GUEST_EXEC_MAX_OUTPUT)
OUTPUT_CAP = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Completed:
    """A program that ran in the guest."""

    exitcode: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    #: qemu-ga kept only the first 16 MiB of the stream
    out_truncated: bool = False
    err_truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exitcode == 0 and self.signal is None

    def why(self) -> str:
        """The failure in one line: its last line of stderr, or how it ended."""
        last = self.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        if last:
            return last[0][:300]
        return (f"killed by signal {self.signal}" if self.signal is not None
                else f"exit status {self.exitcode}")


async def start(link: LinkContext, argv: Sequence[str], *, stdin: bytes | None = None,
                env: Mapping[str, str] | None = None, capture: bool = True) -> int:
    """Start *argv* in the guest; its pid there.

    :param env: added to the agent's environment (through ``env``, since
        guest-exec's own ``env`` replaces the whole environment).
    """
    words = list(argv)
    if env:
        words = ["env", *(f"{k}={v}" for k, v in env.items()), "--", *words]
    arguments: dict[str, object] = {"path": words[0], "arg": words[1:],
                                    "capture-output": capture}
    if stdin:
        arguments["input-data"] = base64.b64encode(stdin).decode()
    answer = await link.call("guest-exec", arguments)
    return int(answer["pid"])


async def poll(link: LinkContext, pid: int) -> Completed | None:
    """One look at a started program: its result once it exited, else None."""
    status = await link.call("guest-exec-status", {"pid": pid})
    if not status.get("exited"):
        return None

    def stream(key: str) -> bytes:
        data = status.get(key)
        return base64.b64decode(data) if isinstance(data, str) else b""

    return Completed(status.get("exitcode"), status.get("signal"), stream("out-data"),
                     stream("err-data"), bool(status.get("out-truncated")),
                     bool(status.get("err-truncated")))


async def run(link: LinkContext, argv: Sequence[str], *, stdin: bytes | None = None,
              timeout: float = 120.0) -> Completed:
    """Run *argv* in the guest to its end.

    :raise RequestTimeout: When it has not exited within *timeout* seconds (it
        keeps running: qemu-ga cannot kill what it started).
    :raise RemoteServiceError: When qemu-ga refuses to start it (``not-found``
        for a program that does not exist).
    """
    pid = await start(link, argv, stdin=stdin)
    deadline = time.monotonic() + timeout
    wait = 0.005
    while True:
        done = await poll(link, pid)
        if done is not None:
            return done
        if time.monotonic() > deadline:
            raise RequestTimeout(f"{link.name}: {argv[0]} (pid {pid}) still runs in the guest "
                                 f"after {timeout:g} s")
        await asyncio.sleep(wait)
        wait = min(wait * 2, MAX_POLL)


async def check_output(link: LinkContext, argv: Sequence[str], *,
                       stdin: bytes | None = None, timeout: float = 120.0) -> bytes:
    """Run *argv* in the guest; its stdout.

    :raise RemoteServiceError: ``failed`` (or the code its message shows) when
        it does not exit with status 0; the message is its last line of stderr.
    """
    done = await run(link, argv, stdin=stdin, timeout=timeout)
    if not done.ok:
        why = done.why()
        code = "not-found" if "No such file" in why else \
            "denied" if "ermission denied" in why or "Read-only" in why else \
            "exists" if "File exists" in why else "failed"
        raise RemoteServiceError(code, f"{link.agent.label}: {argv[0]} in the guest: {why}")
    return done.stdout
