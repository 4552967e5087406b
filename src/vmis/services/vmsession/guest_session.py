"""One command the guest runs for the host (VM Session, docs/services/vmsession.md §5).

A :class:`GuestSession` owns a process in its own process group and session
(``setsid``), pumps its stdout and stderr into OUTPUT notifications as fast
as the host's :class:`Window` allows, feeds its stdin from INPUT
notifications, and signals the whole group on a cancel or a timeout. The
service that starts and ends sessions is :mod:`vmis.services.vmsession.guest`.

Standard library only: this runs in guests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import TYPE_CHECKING, Any

from vmis.protocol import ServiceId, encode_json_raw
from vmis.services.vmsession import CHUNK, Stream, VmSessionOp

if TYPE_CHECKING:
    from vmis.services.vmsession.guest import VmSessionService

__all__ = ["GuestSession", "Window"]


class Window:
    """Flow-control credit (§3): bytes a sender may still send unacknowledged."""

    def __init__(self, size: int) -> None:
        #: bytes that may be sent now
        self.available = size
        self._more = asyncio.Event()

    async def take(self, wanted: int) -> int:
        """Wait for credit and take up to *wanted* bytes of it; return how many."""
        while self.available <= 0:
            self._more.clear()
            await self._more.wait()
        n = min(wanted, self.available)
        self.available -= n
        return n

    def give(self, n: int) -> None:
        """The receiver consumed *n* bytes."""
        self.available += n
        self._more.set()


class GuestSession:
    """One running command (§5): its process, pumps, window and timers."""

    def __init__(self, service: VmSessionService, sid: int, proc: asyncio.subprocess.Process,
                 argv: list[str], *, window: int, input_window: int) -> None:
        self.service = service
        self.sid = sid
        self.proc = proc
        self.argv = argv
        #: credit for OUTPUT, given back by the host's WINDOW notifications
        self.window = Window(window)
        #: the most INPUT bytes the host may have queued here
        self.input_window = input_window
        self._input: asyncio.Queue[memoryview | None] = asyncio.Queue()
        self._input_queued = 0
        self._stdin_broken = False
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        #: loop time the host was last heard of for this session (§4)
        self.last_heard = self.started
        #: why the session ended: exited, timeout, cancelled, host-lost, stopped, failed
        self.reason = "exited"
        #: no EXIT is sent: the host session it belongs to is gone
        self.silent = False
        self.counts = {"stdout": 0, "stderr": 0, "stdin": 0}
        self._timers: list[asyncio.TimerHandle] = []
        self._escalating = False
        #: set once SIGKILL went to the group: stop waiting for the end of its output
        self._killed = asyncio.Event()
        #: the task running :meth:`run`
        self.task: asyncio.Task[Any] | None = None

    # Section: the process group

    def kill(self, signum: int) -> bool:
        """Signal the whole process group; False when it has no process left."""
        if signum == signal.SIGKILL:
            self._killed.set()
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def cancel(self, signum: int, reason: str) -> None:
        """End the session: *signum* now, SIGKILL after ``kill_grace`` (§5.3)."""
        if self.reason == "exited":
            self.reason = reason
        self.kill(signum)
        if signum != signal.SIGKILL and not self._escalating:
            self._escalating = True
            grace = self.service.config.kill_grace
            self._timers.append(asyncio.get_running_loop().call_later(
                grace, self.kill, signal.SIGKILL))

    def arm_timeout(self, seconds: float) -> None:
        """Cancel the session with SIGTERM after *seconds* (§5.3)."""
        self._timers.append(asyncio.get_running_loop().call_later(
            seconds, self.cancel, signal.SIGTERM, "timeout"))

    # Section: streams

    async def _pump(self, reader: asyncio.StreamReader, stream: Stream) -> None:
        # Read first, then wait for credit: a pump never holds credit while it
        # waits for data, so stdout cannot starve stderr of the shared window.
        name = stream.name.lower()
        while data := await reader.read(CHUNK):
            view = memoryview(data)
            while view:
                n = await self.window.take(len(view))
                head, raw = encode_json_raw({"session": self.sid, "stream": int(stream)}, view[:n])
                # The guest's notifier takes bytes: one copy of at most CHUNK bytes.
                self.service.ctx.notify(ServiceId.VMSESSION, VmSessionOp.OUTPUT, head + raw)
                self.counts[name] += n
                view = view[n:]

    def feed(self, data: memoryview, eof: bool) -> None:
        """Queue INPUT bytes for stdin (§3); *eof* closes it after them."""
        if self.proc.stdin is None:
            self.service.credit_input(self.sid, len(data))
            return
        if self._input_queued + len(data) > self.input_window:
            self.service.log.error("session %d: the host overran its input window; "
                                   "cancelling the session", self.sid)
            self.cancel(signal.SIGKILL, "failed")
            return
        if data:
            self._input_queued += len(data)
            self._input.put_nowait(data)
        if eof:
            self._input.put_nowait(None)

    async def _feed_stdin(self, stdin: asyncio.StreamWriter) -> None:
        while (data := await self._input.get()) is not None:
            if not self._stdin_broken:
                try:
                    stdin.write(data)
                    await stdin.drain()
                    self.counts["stdin"] += len(data)
                except (BrokenPipeError, ConnectionResetError):
                    # The command closed its stdin or exited: later bytes are dropped.
                    self._stdin_broken = True
            self._input_queued -= len(data)
            self.service.credit_input(self.sid, len(data))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.close()

    # Section: lifetime

    async def run(self) -> None:
        """Wait for the command to exit and its output to be sent, then send EXIT."""
        proc = self.proc
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [asyncio.ensure_future(self._pump(proc.stdout, Stream.STDOUT)),
                 asyncio.ensure_future(self._pump(proc.stderr, Stream.STDERR))]
        feeder = (asyncio.ensure_future(self._feed_stdin(proc.stdin))
                  if proc.stdin is not None else None)
        killed = asyncio.ensure_future(self._killed.wait())
        try:
            await proc.wait()
            # The session ends at the end of both outputs: a child that kept
            # them open keeps it going (as with ssh), until a cancel or a
            # timeout kills the group; what is left unread is then dropped.
            while not all(p.done() for p in pumps) and not killed.done():
                await asyncio.wait({*pumps, killed}, return_when=asyncio.FIRST_COMPLETED)
            for pump in pumps:
                if pump.done() and not pump.cancelled() and pump.exception() is not None:
                    raise pump.exception()  # type: ignore[misc]
        except asyncio.CancelledError:
            # the service stopped, or the host session is gone (on_session)
            if self.reason == "exited":
                self.reason = "stopped"
            self.kill(signal.SIGKILL)
            raise
        except (OSError, ValueError) as exc:
            self.service.log.error("session %d: %s", self.sid, exc)
            self.reason = "failed"
            self.kill(signal.SIGKILL)
        finally:
            for task in (*pumps, feeder, killed):
                if task is not None:
                    task.cancel()
            for timer in self._timers:
                timer.cancel()
            self.service.ended(self)

    def exit_payload(self) -> dict[str, Any]:
        """EXIT's json (§2)."""
        rc = self.proc.returncode
        return {
            "session": self.sid,
            "code": rc if rc is not None and rc >= 0 else None,
            "signal": -rc if rc is not None and rc < 0 else None,
            "reason": self.reason,
            "duration_ms": int((asyncio.get_running_loop().time() - self.started) * 1000),
            "bytes": dict(self.counts),
        }
