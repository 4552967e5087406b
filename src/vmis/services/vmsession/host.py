"""Host half of VM Session: one :class:`RemoteCommand` per command run in a guest.

A caller (the API's WebSocket relay, or a test) starts a command with
:meth:`RemoteCommand.start` and then reads its events with
:meth:`RemoteCommand.next_event`: :class:`Output` (bytes of stdout or
stderr), :class:`InputCredit` (the guest consumed stdin bytes) and finally
one :class:`Exit`. Output is held here only up to the window the host
granted; the guest sends more only after :meth:`RemoteCommand.ack`, so a
slow reader slows the command down instead of filling memory
(docs/services/vmsession.md §3).

The guest's notifications reach the command through the VM's part of this
service (:class:`VmSessions`, the VM's open commands).
"""

from __future__ import annotations

import asyncio
import shlex
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmis.errors import (
    ChannelClosed,
    ChannelError,
    ProtocolError,
    RemoteServiceError,
    ServiceUnavailable,
    StateError,
    VmisError,
)
from vmis.protocol import decode_json, decode_json_raw, encode_json, encode_json_raw
from vmis.services.catalog import by_key
from vmis.services.host_half import HostService, VmContext, VmPart
from vmis.services.link import GuestLink, NotificationHandler
from vmis.services.vmsession import (
    CHUNK,
    DEFAULT_WINDOW,
    Stream,
    VmSessionOp,
    exit_status,
    idle_deadline,
)

__all__ = ["SERVICE", "Exit", "InputCredit", "Output", "RemoteCommand", "VmSessionHost",
           "VmSessions"]

SPEC = by_key("vmsession")

#: how a guest administrator lets the host in (docs/services/vmsession.md §6)
ENABLE_HINT = ("a guest administrator enables it with 'vmis-guest Set-Service -Name "
               "vmicvmsession -StartupType Automatic' and 'vmis-guest Start-Service -Name "
               "vmicvmsession'")


# Section: events


@dataclass(frozen=True, slots=True)
class Output:
    """Bytes the command wrote; call :meth:`RemoteCommand.ack` once they are delivered."""

    stream: Stream
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class InputCredit:
    """The guest consumed this many stdin bytes: that many more may be written."""

    bytes: int


@dataclass(frozen=True, slots=True)
class Exit:
    """The command ended (EXIT, docs/services/vmsession.md §2); nothing follows."""

    #: exit code, when it exited
    code: int | None
    #: the signal that ended it, when one did
    signal: int | None
    #: exited, timeout, cancelled, host-lost, stopped or failed
    reason: str
    duration_ms: int

    @property
    def status(self) -> int:
        """The shell's exit status: the code, or 128+n after signal n."""
        return exit_status(self.code, self.signal)

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "signal": self.signal, "reason": self.reason,
                "duration_ms": self.duration_ms, "status": self.status}


Event = Output | InputCredit | Exit


class _Failed:
    """Queued when the command's fate can no longer be learned."""

    def __init__(self, error: VmisError) -> None:
        self.error = error


def _whole(value: object, default: int) -> int:
    """A whole number of the guest's START answer, or *default* for anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


# Section: per-VM registry


class VmSessions(VmPart):
    """One VM's open commands, by session number (numbers are never reused)."""

    def __init__(self, vm: VmContext) -> None:
        super().__init__(vm)
        self.next_id = 1
        self.open: dict[int, RemoteCommand] = {}

    def take_id(self) -> int:
        sid = self.next_id
        self.next_id = sid % 0xFFFFFFFF + 1
        return sid

    def handlers(self) -> Mapping[int, NotificationHandler]:
        return {
            VmSessionOp.OUTPUT: self._guarded(self._on_output),
            VmSessionOp.WINDOW: self._guarded(self._on_window),
            VmSessionOp.EXIT: self._guarded(self._on_exit),
            VmSessionOp.KEEPALIVE: self._guarded(self._on_keepalive),
        }

    def _guarded(self, handler: Callable[[bytes], None]) -> NotificationHandler:
        # Handlers run in the link's bottom half: a bad payload is logged, never raised.
        def run(payload: bytes) -> None:
            try:
                handler(payload)
            except (ProtocolError, ValueError, KeyError, TypeError) as exc:
                self.vm.log.warning("bad VM Session notification: %s", exc)

        return run

    def _command(self, body: Mapping[str, Any]) -> RemoteCommand | None:
        cmd = self.open.get(body.get("session"))  # type: ignore[arg-type]
        if cmd is None:
            self.vm.log.debug("VM Session notification for unknown session %r",
                              body.get("session"))
        return cmd

    def _on_output(self, payload: bytes) -> None:
        body, raw = decode_json_raw(payload)
        cmd = self._command(body)
        if cmd is not None:
            cmd._on_output(Stream(body["stream"]), raw)

    def _on_window(self, payload: bytes) -> None:
        body = decode_json(payload)
        cmd = self._command(body)
        n = body.get("bytes")
        if cmd is not None and isinstance(n, int) and n > 0:
            cmd._on_window(n)

    def _on_exit(self, payload: bytes) -> None:
        body = decode_json(payload)
        cmd = self._command(body)
        if cmd is not None:
            cmd._on_exit(body)

    def _on_keepalive(self, payload: bytes) -> None:
        body = decode_json(payload)
        for sid in body.get("sessions") or []:
            cmd = self.open.get(sid)
            if cmd is not None:
                cmd._heard()


class VmSessionHost(HostService[VmSessions]):
    """VM Session on the host: commands run in guests (Invoke-Command)."""

    spec = SPEC
    needs = frozenset({VmSessionOp.START, VmSessionOp.SIGNAL})

    def new_part(self, vm: VmContext) -> VmSessions:
        return VmSessions(vm)


# Section: the command


class RemoteCommand:
    """One command running in a guest, seen from the host.

    Create it with :meth:`start`. Not thread-safe; one reader of events.
    """

    def __init__(self, vm: VmContext, link: GuestLink, sid: int, window: int) -> None:
        self.vm = vm
        self.link = link
        #: the session number on the wire
        self.sid = sid
        self.window = window
        self.log = vm.log
        #: facts from the guest's START answer: pid, user, cwd, program, ...
        self.info: dict[str, Any] = {}
        self.argv: list[str] = []
        self.exit: Exit | None = None
        self._events: asyncio.Queue[Event | _Failed] = asyncio.Queue()
        #: output bytes received and not yet acknowledged by the reader
        self.buffered = 0
        self._unacked_credit = 0
        self._input_credit = 0
        self._input_more = asyncio.Event()
        self._input_closed = False
        self._discard = False
        self._done = False
        loop = asyncio.get_running_loop()
        self._last_heard = loop.time()
        self._keepalive = 15.0
        self._watchdog: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        vm: VmContext,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bool = False,
        timeout: float | None = None,
        requested_by: str = "",
        window: int = DEFAULT_WINDOW,
    ) -> RemoteCommand:
        """Start *argv* in the guest of *vm*.

        :param cwd: working directory (a guest path); None: the guest's default.
        :param env: variables added to the command's environment.
        :param stdin: True to feed stdin with :meth:`write`; else it reads /dev/null.
        :param timeout: seconds after which the guest kills the process group.
        :param requested_by: who asked, for both sides' logs.
        :param window: output bytes the guest may send ahead of :meth:`ack`.
        :raise ServiceUnavailable: When the VM Session service cannot take
            requests (disabled or stopped in the guest, no contact, ...).
        :raise RemoteServiceError: When the guest refuses (``denied``: not on
            its allow-list; ``not-found``: no such program; ``busy``; ...).
        """
        try:
            vm.require(SPEC)
        except ServiceUnavailable as exc:
            state = vm.guest.get(SPEC.key)
            # the hint is the vmis agent's; another agent's limit says what to do
            if state is not None and state.state != "running" and not state.limit:
                raise ServiceUnavailable(f"{exc}; {ENABLE_HINT}") from None
            raise
        assert vm.link is not None
        registry = vm.part(VmSessionHost)
        cmd = cls(vm, vm.link, registry.take_id(), window)
        cmd.argv = list(argv)
        body: dict[str, Any] = {
            "session": cmd.sid, "argv": cmd.argv, "stdin": stdin, "window": window,
            "host": {"name": socket.gethostname(), "vm_name": vm.vm.name, "vm_id": vm.vm.id},
            "requested_by": requested_by,
        }
        if cwd is not None:
            body["cwd"] = cwd
        if env:
            body["env"] = dict(env)
        if timeout is not None:
            body["timeout_ms"] = max(1, int(timeout * 1000))
        # Registered before START goes out: the guest's first OUTPUT may be
        # handled before the answer's waiter runs.
        registry.open[cmd.sid] = cmd
        try:
            answer = decode_json(await vm.request(SPEC, VmSessionOp.START, encode_json(body)))
        except ServiceUnavailable as exc:
            registry.open.pop(cmd.sid, None)
            raise ServiceUnavailable(f"{exc}; {ENABLE_HINT}") from None
        except RemoteServiceError as exc:
            registry.open.pop(cmd.sid, None)
            vm.log.warning("session %d refused: %s: %s", cmd.sid, shlex.join(cmd.argv), exc)
            raise RemoteServiceError(exc.code, f"{vm.vm.name}: {exc}") from None
        except BaseException:
            registry.open.pop(cmd.sid, None)
            raise
        cmd.info = answer
        cmd._keepalive = min(max(_whole(answer.get("keepalive_ms"), 15000), 50), 3_600_000) / 1000
        cmd._input_credit = max(_whole(answer.get("input_window"), 0), 0) if stdin else 0
        cmd._input_closed = not stdin
        cmd._watchdog = asyncio.create_task(cmd._watch(), name=f"vmsession:{cmd.sid}")
        vm.log.info("session %d requested by %s: started %s as %s in %s (pid %s)", cmd.sid,
                    requested_by or "?", shlex.join(cmd.argv), answer.get("user", "?"),
                    answer.get("cwd", "?"), answer.get("pid", "?"))
        return cmd

    # Section: reading

    @property
    def pid(self) -> int | None:
        """The command's process id in the guest."""
        pid = self.info.get("pid")
        return pid if isinstance(pid, int) else None

    @property
    def input_window(self) -> int:
        """Stdin bytes that may be written now without waiting."""
        return self._input_credit

    async def next_event(self) -> Event:
        """The next event; :class:`Exit` is the last.

        :raise ChannelError: When the channel closed or the guest fell silent
            (the command was killed with its session, or its fate is unknown).
        """
        item = await self._events.get()
        if isinstance(item, _Failed):
            self._events.put_nowait(item)  # every later call fails the same way
            raise item.error
        if isinstance(item, Exit):
            self._events.put_nowait(item)
        return item

    def ack(self, n: int) -> None:
        """The reader delivered *n* output bytes; the guest may send as many more."""
        self.buffered -= n
        self._unacked_credit += n
        # Batched: one WINDOW per quarter window, never fewer (see §3).
        if self._unacked_credit >= max(self.window // 4, 1) or self.buffered <= 0:
            self._notify(VmSessionOp.WINDOW, encode_json({"session": self.sid,
                                                          "bytes": self._unacked_credit}))
            self._unacked_credit = 0

    # Section: writing and signals

    async def write(self, data: bytes | memoryview) -> None:
        """Send bytes to the command's stdin, waiting for the guest's credit.

        :raise StateError: When stdin was not asked for, or was closed.
        """
        if self._input_closed:
            raise StateError(f"session {self.sid}: stdin is closed")
        view = memoryview(data)
        while view:
            while self._input_credit <= 0 and not self._done:
                self._input_more.clear()
                await self._input_more.wait()
            if self._done:
                return  # the command ended; what it did not read is dropped
            n = min(len(view), self._input_credit, CHUNK)
            self._input_credit -= n
            self._notify(VmSessionOp.INPUT,
                         encode_json_raw({"session": self.sid, "eof": False}, view[:n]))
            view = view[n:]

    def close_input(self) -> None:
        """End the command's stdin (it reads end of file)."""
        if not self._input_closed:
            self._input_closed = True
            self._notify(VmSessionOp.INPUT, encode_json_raw({"session": self.sid, "eof": True}))

    async def signal(self, name: str, *, cancel: bool = True) -> None:
        """Signal the command's process group (INT, TERM, KILL, HUP, QUIT).

        :param cancel: the session ends: SIGKILL follows after the guest's
            ``kill_grace`` if the group is still there (docs/services/vmsession.md §5.3).
        :raise RemoteServiceError: When the guest refuses; a session that
            ended meanwhile is not an error.
        """
        if self._done:
            return
        self.log.info("session %d: %s SIG%s", self.sid, "cancel with" if cancel else "send",
                      name)
        try:
            await self.link.request(SPEC.id, VmSessionOp.SIGNAL, encode_json(
                {"session": self.sid, "signal": name, "cancel": cancel}), timeout=15)
        except RemoteServiceError as exc:
            if exc.code != "not-found":
                raise
        except ChannelError as exc:
            self.log.debug("SIGNAL not delivered: %s", exc)

    def abandon(self) -> None:
        """Nobody reads any more: discard output from now on and kill the command."""
        if self._done:
            return
        self._discard = True
        self.ack(self.buffered)
        while not self._events.empty():
            self._events.get_nowait()
        task = asyncio.ensure_future(self.signal("KILL"))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # Section: the guest's notifications (bottom half: never raise)

    def _heard(self) -> None:
        self._last_heard = asyncio.get_running_loop().time()

    def _on_output(self, stream: Stream, data: memoryview) -> None:
        self._heard()
        self.buffered += len(data)
        if self._discard:
            self.ack(len(data))
        else:
            self._events.put_nowait(Output(stream, data))

    def _on_window(self, n: int) -> None:
        self._heard()
        self._input_credit += n
        self._input_more.set()
        if not self._discard and not self._done:
            self._events.put_nowait(InputCredit(n))

    def _on_exit(self, body: Mapping[str, Any]) -> None:
        def number(key: str) -> int | None:
            value = body.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        ended = Exit(number("code"), number("signal"), str(body.get("reason", "exited")),
                     number("duration_ms") or 0)
        self.exit = ended
        how = (f"killed by signal {ended.signal}" if ended.signal is not None
               else f"exit code {ended.code}" if ended.code is not None else "no exit status")
        self.log.info("session %d ended: %s, %s after %.3f s", self.sid, ended.reason, how,
                      ended.duration_ms / 1000)
        self._finish(ended)

    def _fail(self, error: VmisError) -> None:
        if self._done:
            return
        self.log.warning("session %d lost: %s", self.sid, error)
        self._finish(_Failed(error))

    def _finish(self, last: Exit | _Failed) -> None:
        self._done = True
        self._input_more.set()
        self._events.put_nowait(last)
        self.vm.part(VmSessionHost).open.pop(self.sid, None)
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()

    def _notify(self, op: VmSessionOp, payload: bytes | tuple[bytes, bytes | memoryview]) -> None:
        self.link.notify(SPEC.id, op, payload)

    async def _watch(self) -> None:
        # docs/services/vmsession.md §4: keepalives both ways; silence or a
        # closed channel ends the command's story on the host.
        closed = asyncio.ensure_future(self.link.wait_closed())
        loop = asyncio.get_running_loop()
        try:
            while not self._done:
                done, _ = await asyncio.wait({closed}, timeout=self._keepalive)
                if done or not self.link.running:
                    reason = self.link.lost_reason or "the channel closed"
                    self._fail(ChannelClosed(
                        f"{self.vm.vm.name}: the channel to the guest closed ({reason}); "
                        "the guest kills commands of a lost session"))
                    return
                self._notify(VmSessionOp.KEEPALIVE, encode_json({"sessions": [self.sid]}))
                silent = loop.time() - self._last_heard
                if silent > idle_deadline(self._keepalive):
                    self._fail(ChannelError(
                        f"{self.vm.vm.name}: nothing heard from session {self.sid} for "
                        f"{silent:.1f} s (keepalive every {self._keepalive:g} s); "
                        "the guest is not answering"))
                    # Our keepalives stop now: the guest kills the command
                    # after the same silence on its side.
                    return
        finally:
            closed.cancel()


SERVICE = VmSessionHost
