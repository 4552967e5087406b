"""VM Session over qemu-ga: guest-exec, then guest-exec-status until the command exits.

The host half (vmis.services.vmsession.host.RemoteCommand) sees the session of
docs/services/vmsession.md: START answered, OUTPUT within its window, one
EXIT. What qemu-ga can do underneath, and how the link makes up for it:

- **Output after exit.** qemu-ga hands a command's stdout and stderr over
  only once it has exited, base64 in one answer, and keeps at most 16 MiB
  of each; more is cut off (``out-truncated``). The link delivers the output
  then, in 60 KiB OUTPUT notifications within the host's window, and says
  on stderr, after the output, when qemu-ga cut a stream short.
- **Stdin at the start only.** guest-exec takes stdin as ``input-data`` when
  it starts the command. With ``stdin`` the link answers START at once with
  a 16 MiB input window, collects INPUT until its end, and starts the
  command then; a terminal's user is told after a second on stderr (press
  Ctrl-D, or give -NoStdin).
- **Keepalives** go to the host while the command runs and qemu-ga answers
  the polls, so a quiet command keeps its session (§4).
- **Signals and timeouts**: qemu-ga cannot signal what it started; the link
  runs ``kill -s SIG PID`` through guest-exec (the process only: qemu-ga
  gives it no process group of its own), SIGKILL after a grace for a cancel
  or a timeout.
- **Working directory and environment**: guest-exec has no ``cwd`` and its
  ``env`` replaces the whole environment, so the command runs through
  ``env --chdir=DIR NAME=VALUE ... --``, which adds them.

A session of this link ends with the link: the command keeps running in the
guest (qemu-ga does not kill it), and the host fails its session as for any
lost channel.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vmis.errors import ChannelError, ProtocolError, RemoteServiceError, RequestTimeout
from vmis.links.qemu_ga import guest_exec
from vmis.links.qemu_ga.translator import LinkContext, Translator, json_body, split_payload
from vmis.protocol import Payload, Received, encode_json, encode_json_raw
from vmis.services.catalog import by_key
from vmis.services.vmsession import CHUNK, SIGNALS, Stream, VmSessionOp

__all__ = ["KEEPALIVE_MS", "STDIN_LIMIT", "VmSessionTranslator"]

SPEC = by_key("vmsession")
#: the keepalive interval announced to the host, milliseconds
KEEPALIVE_MS = 5000
#: stdin bytes a command may be given (qemu-ga's limit on what it captures, the same)
STDIN_LIMIT = guest_exec.OUTPUT_CAP
#: seconds between a cancel's signal and SIGKILL
KILL_GRACE = 5.0
#: seconds without stdin before a terminal's user is told what qemu-ga needs
STDIN_HINT_AFTER = 1.0
#: longest wait between two polls of a running command
MAX_POLL = 0.5


@dataclass
class _Command:
    """One host session: a command waiting for its stdin, running, or done."""

    sid: int
    argv: list[str]
    cwd: str | None
    env: dict[str, str]
    window: int
    timeout: float | None
    stdin: bytearray | None
    started: float = field(default_factory=time.monotonic)
    pid: int | None = None
    launched: asyncio.Event = field(default_factory=asyncio.Event)
    #: set whenever the host gives output credit back
    more: asyncio.Event = field(default_factory=asyncio.Event)
    unacked: int = 0
    #: why the host ended it early: "cancelled" or "timeout"
    ended_by: str | None = None
    sent: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0, "stdin": 0})
    task: asyncio.Task[Any] | None = None


class VmSessionTranslator(Translator):
    """START and SIGNAL on qemu-ga; OUTPUT, KEEPALIVE and EXIT made for the host."""

    spec = SPEC

    def __init__(self, link: LinkContext) -> None:
        super().__init__(link)
        self.ops = {VmSessionOp.START: self._start, VmSessionOp.SIGNAL: self._signal}
        self.commands: dict[int, _Command] = {}

    # Section: START

    async def _start(self, payload: Payload, timeout: float | None) -> Received:
        body = json_body(payload)
        command = _parse_start(body)
        if command.sid in self.commands:
            raise RemoteServiceError("exists", f"session {command.sid} is in use")
        if command.stdin is None:
            await self._launch(command)
        self.commands[command.sid] = command
        command.task = self.link.spawn(self._run(command), f"qemu-ga session {command.sid}")
        return encode_json({
            "pid": command.pid, "user": None, "cwd": command.cwd, "program": command.argv[0],
            "keepalive_ms": KEEPALIVE_MS, "agent": self.link.agent.label,
            "input_window": STDIN_LIMIT if command.stdin is not None else 0,
        })

    async def _launch(self, command: _Command) -> None:
        words = command.argv
        if command.cwd is not None or command.env:
            words = ["env", *([f"--chdir={command.cwd}"] if command.cwd is not None else []),
                     *(f"{k}={v}" for k, v in command.env.items()), "--", *words]
        stdin = bytes(command.stdin) if command.stdin else None
        command.pid = await guest_exec.start(self.link, words, stdin=stdin)
        command.started = time.monotonic()
        command.launched.set()
        self.link.log.info("session %d: qemu-ga started %s (pid %d)", command.sid,
                           " ".join(command.argv), command.pid)

    # Section: the host's notifications

    def notify(self, op: int, payload: Payload) -> None:
        try:
            if op == VmSessionOp.INPUT:
                body, raw = split_payload(payload)
                command = self.commands.get(body.get("session"))  # type: ignore[arg-type]
                if command is not None:
                    self._input(command, bytes(raw), bool(body.get("eof")))
            elif op == VmSessionOp.WINDOW:
                body = json_body(payload)
                command = self.commands.get(body.get("session"))  # type: ignore[arg-type]
                if command is not None and isinstance(body.get("bytes"), int):
                    command.unacked -= int(body["bytes"])
                    command.more.set()
        except (ProtocolError, ValueError, KeyError, TypeError) as exc:
            self.link.log.warning("bad VM Session notification: %s", exc)

    def _input(self, command: _Command, data: bytes, eof: bool) -> None:
        if command.stdin is None or command.launched.is_set():
            return
        command.stdin += data
        command.sent["stdin"] += len(data)
        if len(command.stdin) > STDIN_LIMIT:
            command.ended_by = "failed"
            command.launched.set()  # the runner ends the session
        elif eof:
            self.link.spawn(self._launch_or_fail(command), f"session {command.sid} start")

    async def _launch_or_fail(self, command: _Command) -> None:
        try:
            await self._launch(command)
        except (RemoteServiceError, ChannelError, ProtocolError) as exc:
            command.ended_by = "failed"
            self.link.log.warning("session %d: %s", command.sid, exc)
            self._output(command, Stream.STDERR, f"vmis: {exc}\n".encode())
            command.launched.set()

    # Section: SIGNAL

    async def _signal(self, payload: Payload, timeout: float | None) -> Received:
        body = json_body(payload)
        command = self.commands.get(body.get("session"))  # type: ignore[arg-type]
        if command is None:
            raise RemoteServiceError("not-found", f"no session {body.get('session')}")
        name = str(body.get("signal", "TERM"))
        if name not in SIGNALS:
            raise RemoteServiceError("bad-request", f"unknown signal {name!r}")
        if body.get("cancel"):
            command.ended_by = "cancelled"
        if command.pid is None:
            command.launched.set()  # never started: it ends as cancelled
        else:
            await self._kill(command, name)
            if body.get("cancel"):
                self.link.spawn(self._kill_later(command), f"session {command.sid} kill")
        return encode_json({"session": command.sid})

    async def _kill(self, command: _Command, name: str) -> None:
        done = await guest_exec.run(self.link, ["kill", "-s", name, str(command.pid)])
        if not done.ok:
            self.link.log.info("session %d: kill -s %s: %s", command.sid, name, done.why())

    async def _kill_later(self, command: _Command) -> None:
        await asyncio.sleep(KILL_GRACE)
        if command.sid in self.commands:
            await self._kill(command, "KILL")

    # Section: running

    async def _run(self, command: _Command) -> None:
        try:
            await self._wait_for_stdin(command)
            done = await self._wait_for_exit(command) if command.pid is not None else None
            await self._deliver(command, done)
        except (ChannelError, ProtocolError) as exc:
            self.link.log.debug("session %d ends with the link: %s", command.sid, exc)
        finally:
            self.commands.pop(command.sid, None)

    async def _wait_for_stdin(self, command: _Command) -> None:
        try:
            async with asyncio.timeout(STDIN_HINT_AFTER):
                await command.launched.wait()
            return
        except TimeoutError:
            self._output(command, Stream.STDERR, (
                b"vmis: qemu-ga starts a command only with all of its stdin: end it "
                b"(Ctrl-D), or give -NoStdin\n"))
        while not command.launched.is_set():
            self._keepalive(command)
            try:
                async with asyncio.timeout(KEEPALIVE_MS / 2000):
                    await command.launched.wait()
            except TimeoutError:
                continue

    async def _wait_for_exit(self, command: _Command) -> guest_exec.Completed | None:
        assert command.pid is not None
        wait = 0.01
        beat = time.monotonic()
        killed_at: float | None = None
        while True:
            try:
                done = await guest_exec.poll(self.link, command.pid)
            except RequestTimeout:
                done = None  # no keepalive this time: the host counts the silence
            else:
                if time.monotonic() - beat >= KEEPALIVE_MS / 2000:
                    self._keepalive(command)
                    beat = time.monotonic()
            if done is not None:
                return done
            elapsed = time.monotonic() - command.started
            if command.timeout is not None and elapsed > command.timeout and killed_at is None:
                command.ended_by = "timeout"
                killed_at = time.monotonic()
                await self._kill(command, "TERM")
            elif killed_at is not None and time.monotonic() - killed_at > KILL_GRACE:
                await self._kill(command, "KILL")
                killed_at = float("inf")
            await asyncio.sleep(wait)
            wait = min(wait * 2, MAX_POLL)

    async def _deliver(self, command: _Command, done: guest_exec.Completed | None) -> None:
        if done is not None:
            await self._stream(command, Stream.STDOUT, done.stdout)
            await self._stream(command, Stream.STDERR, done.stderr)
            for cut, name in ((done.out_truncated, "stdout"), (done.err_truncated, "stderr")):
                if cut:
                    await self._stream(command, Stream.STDERR, (
                        f"vmis: qemu-ga kept only the first 16 MiB of the command's {name} "
                        "(guest-exec's limit); the rest is lost\n").encode())
        elif command.ended_by == "failed" and command.stdin is not None \
                and len(command.stdin) > STDIN_LIMIT:
            await self._stream(command, Stream.STDERR, (
                f"vmis: qemu-ga takes at most {STDIN_LIMIT // (1024 * 1024)} MiB of stdin, "
                "given when the command starts\n").encode())
        reason = command.ended_by or "exited"
        self.link.to_host(SPEC.id, VmSessionOp.EXIT, encode_json({
            "session": command.sid,
            "code": done.exitcode if done is not None else None,
            "signal": done.signal if done is not None else None,
            "reason": reason, "bytes": command.sent,
            "duration_ms": int((time.monotonic() - command.started) * 1000),
        }))

    async def _stream(self, command: _Command, stream: Stream, data: bytes) -> None:
        view = memoryview(data)
        while view:
            part = view[:CHUNK]
            while command.unacked + len(part) > command.window:
                command.more.clear()
                await command.more.wait()
            command.unacked += len(part)
            self._output(command, stream, part)
            view = view[len(part):]

    def _output(self, command: _Command, stream: Stream, data: bytes | memoryview) -> None:
        command.sent["stdout" if stream is Stream.STDOUT else "stderr"] += len(data)
        self.link.to_host(SPEC.id, VmSessionOp.OUTPUT, b"".join(
            encode_json_raw({"session": command.sid, "stream": int(stream)}, data)))

    def _keepalive(self, command: _Command) -> None:
        self.link.to_host(SPEC.id, VmSessionOp.KEEPALIVE,
                          encode_json({"sessions": [command.sid]}))


def _parse_start(body: Mapping[str, Any]) -> _Command:
    argv = body.get("argv")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise RemoteServiceError("bad-request", "argv must be a non-empty list of strings")
    sid = body.get("session")
    if not isinstance(sid, int) or isinstance(sid, bool):
        raise RemoteServiceError("bad-request", "session must be a number")
    env = body.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            and "=" not in k for k, v in env.items()):
        raise RemoteServiceError("bad-request", "env must map names to strings")
    cwd = body.get("cwd")
    if cwd is not None and not (isinstance(cwd, str) and cwd.startswith("/")):
        raise RemoteServiceError("bad-request", "cwd must be an absolute guest path")
    timeout_ms = body.get("timeout_ms")
    window = body.get("window")
    return _Command(
        sid, list(argv), cwd, dict(env),
        window if isinstance(window, int) and window >= CHUNK else 256 * 1024,
        timeout_ms / 1000 if isinstance(timeout_ms, int) and timeout_ms > 0 else None,
        bytearray() if body.get("stdin") else None)

