"""Invoke-Command's stream to the host manager: a WebSocket, the local stdin and output.

Imported by ``vmis Invoke-Command`` only when it runs (asyncio, threads and
websockets are not for the other commands' start). The messages are those of
docs/services/vmsession.md §8; the command line around it is
:mod:`vmis.cli.host_commands.vmsession`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from vmis.api.client import ApiClient, api_path
from vmis.api.errors import error_from_json
from vmis.errors import ChannelError, ManagerApiError
from vmis.services.vmsession import CHUNK, KEEPALIVE_MISSES

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

__all__ = ["Invocation"]

_SIGNAL_NAMES: dict[int, str] = {signal.SIGINT: "INT", signal.SIGTERM: "TERM", signal.SIGHUP: "HUP"}


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


class _StdinReader(threading.Thread):
    """Reads stdin in a thread, never more than the credit the manager granted.

    A daemon thread: a read blocked on a terminal must not keep the process
    alive once the remote command has ended.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes],
                 fd: int = 0) -> None:
        super().__init__(name="vmis-stdin", daemon=True)
        self._loop = loop
        self._queue = queue
        self._fd = fd
        self._credit = 0
        self._cond = threading.Condition()

    def add_credit(self, n: int) -> None:
        with self._cond:
            self._credit += n
            self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                while self._credit <= 0:
                    self._cond.wait()
                wanted = min(self._credit, CHUNK)
            try:
                data = os.read(self._fd, wanted)
            except OSError:
                data = b""
            with self._cond:
                self._credit -= len(data)
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, data)
            except RuntimeError:
                return  # the loop is closed: the command has ended
            if not data:
                return


class Invocation:
    """One Invoke-Command: the WebSocket to the manager and the local streams.

    :param collect: keep the output here (1: stdout, 2: stderr) instead of
        writing it to this process's stdout and stderr (``--json``).
    """

    def __init__(self, api: ApiClient, vm: str, start: dict[str, Any],
                 collect: dict[int, bytearray] | None = None) -> None:
        self.api = api
        self.vm = vm
        self.start = start
        self.collect = collect
        self.keepalive: float = start["keepalive"]
        self.ws: ClientConnection | None = None
        self.interrupts = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writer = concurrent.futures.ThreadPoolExecutor(1, "vmis-output")
        self._stdin: _StdinReader | None = None
        self._broken_pipe = False

    async def run(self) -> dict[str, Any]:
        """Run the command to its end; return the manager's exit message, with
        ``"broken_pipe": True`` when our stdout's reader went away first."""
        from websockets.exceptions import ConnectionClosed

        ws = await self.api.websocket(api_path("vms", self.vm, "exec"), compression=None,
                                      ping_interval=self.keepalive,
                                      ping_timeout=self.keepalive * KEEPALIVE_MISSES,
                                      max_size=4 * CHUNK, open_timeout=30)
        self.ws = ws
        try:
            await ws.send(json.dumps(self.start))
            started = await self._receive_json(timeout=90)
            if started.get("type") != "started":
                raise ManagerApiError(f"unexpected answer from the host manager: {started}")
            self._install_signals()
            if self.start["stdin"]:
                self._start_stdin(int(started.get("input_window", 0)))
            return await self._pump()
        except ConnectionClosed as exc:
            raise ChannelError(f"the host manager closed the stream before the command ended "
                               f"({exc})") from None
        finally:
            self._remove_signals()
            for task in self._tasks:
                task.cancel()
            await ws.close()
            self._writer.shutdown(wait=False, cancel_futures=True)

    async def _receive_json(self, timeout: float) -> dict[str, Any]:
        assert self.ws is not None
        async with asyncio.timeout(timeout):
            message = await self.ws.recv()
        body = json.loads(message)
        if not isinstance(body, dict):
            raise ManagerApiError(f"unexpected message from the host manager: {message!r}")
        if body.get("type") == "error":
            raise error_from_json(body, type_key="error_type")
        return body

    async def _pump(self) -> dict[str, Any]:
        # The socket is read all the time, even while stdout is blocked, so
        # keepalives and pings keep flowing; output waits in self._output,
        # bounded by the guest's window, because the guest sends more only
        # after _write_output has acknowledged it (docs/services/vmsession.md §8).
        assert self.ws is not None
        output: asyncio.Queue[memoryview | None] = asyncio.Queue()
        writer = asyncio.ensure_future(self._write_output(output))
        self._tasks.add(writer)
        deadline = self.keepalive * KEEPALIVE_MISSES + 1
        while True:
            try:
                async with asyncio.timeout(deadline):
                    message = await self.ws.recv()
            except TimeoutError:
                raise ChannelError(f"lost contact with the host manager: nothing heard for "
                                   f"{deadline:g} s") from None
            if isinstance(message, bytes):
                output.put_nowait(memoryview(message))
                continue
            body = json.loads(message)
            kind = body.get("type")
            if kind == "window" and self._stdin is not None:
                self._stdin.add_credit(int(body.get("bytes", 0)))
            elif kind == "exit":
                output.put_nowait(None)
                await writer
                return {**body, "broken_pipe": self._broken_pipe}
            elif kind == "error":
                raise error_from_json(body, type_key="error_type")

    async def _write_output(self, output: asyncio.Queue[memoryview | None]) -> None:
        assert self.ws is not None
        loop = asyncio.get_running_loop()
        while (view := await output.get()) is not None:
            if self.collect is not None:
                self.collect[2 if view[0] == 2 else 1] += view[1:]
            elif not self._broken_pipe:
                fd = 2 if view[0] == 2 else 1
                try:
                    await loop.run_in_executor(self._writer, _write_all, fd, view[1:])
                except BrokenPipeError:
                    # Our reader is gone (| head): end the command, as a pipe
                    # would, and drop what it still sends.
                    self._broken_pipe = True
                    await self._send({"type": "signal", "signal": "KILL", "cancel": True})
            await self._send({"type": "ack", "bytes": len(view) - 1})

    async def _send(self, body: dict[str, Any]) -> None:
        # After the exit message the manager closes the stream; late acks are moot.
        from websockets.exceptions import ConnectionClosed

        assert self.ws is not None
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(json.dumps(body))

    # Section: stdin

    def _start_stdin(self, credit: int) -> None:
        assert self.ws is not None
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        try:
            os.fstat(0)
        except OSError:
            self._spawn(self.ws.send(json.dumps({"type": "eof"})))
            return
        self._stdin = _StdinReader(asyncio.get_running_loop(), queue)
        self._stdin.add_credit(credit)
        self._stdin.start()
        self._spawn(self._send_stdin(queue))

    async def _send_stdin(self, queue: asyncio.Queue[bytes]) -> None:
        assert self.ws is not None
        while data := await queue.get():
            await self.ws.send(data)
        await self.ws.send(json.dumps({"type": "eof"}))

    # Section: Ctrl-C

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in _SIGNAL_NAMES:
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _remove_signals(self) -> None:
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            for signum in _SIGNAL_NAMES:
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        assert self.ws is not None
        name = _SIGNAL_NAMES[signum]
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts == 2:
                name = "KILL"
            elif self.interrupts > 2:
                # Give up waiting: the manager kills the command when we go.
                for task in self._tasks:
                    task.cancel()
                raise KeyboardInterrupt
        self._spawn(self.ws.send(json.dumps({"type": "signal", "signal": name,
                                             "cancel": True})))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # a send on a closing socket: the pump reports it
