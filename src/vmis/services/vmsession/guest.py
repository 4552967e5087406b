"""Guest half of VM Session: runs the host's commands under the guest's policy.

Each START, once the policy allows it, becomes one
:class:`~vmis.services.vmsession.guest_session.GuestSession`: a process in
its own process group and session (``setsid``), with stdout and stderr read
into OUTPUT notifications as fast as the host's window allows, and stdin fed
from INPUT notifications. The whole group is signalled on a cancel, a
timeout, a lost host or a stopped service. docs/services/vmsession.md is the
contract; the section numbers below point into it.

Standard library only: this runs in guests.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shlex
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmis.errors import RemoteProtocolError, ServiceError
from vmis.protocol import (
    RequestReceived,
    ServiceId,
    decode_json,
    decode_json_raw,
    encode_json,
)
from vmis.services.catalog import by_key
from vmis.services.guest_half import GuestContext, GuestService
from vmis.services.vmsession import (
    DEFAULT_WINDOW,
    MAX_WINDOW,
    MIN_WINDOW,
    SIGNALS,
    VmSessionOp,
    idle_deadline,
)
from vmis.services.vmsession.guest_session import GuestSession
from vmis.services.vmsession.policy import (
    SessionConfig,
    allowed,
    check_env,
    resolve_program,
)

__all__ = ["SERVICE", "VmSessionService"]

#: environment variables a command inherits from the agent (the rest is built, §6)
_INHERITED_ENV = ("LANG", "LC_ALL", "TZ")
_MAX_ARGV_BYTES = 1024 * 1024


@dataclass(frozen=True)
class _Who:
    """Who asked for a session, as the host told it (for the log, §7)."""

    host: str
    vm: str
    requested_by: str

    @classmethod
    def from_request(cls, body: Mapping[str, Any]) -> _Who:
        host = body.get("host") if isinstance(body.get("host"), dict) else {}
        assert isinstance(host, dict)
        vm = str(host.get("vm_name", "?"))
        if host.get("vm_id"):
            vm += f" id {host['vm_id']}"
        return cls(str(host.get("name", "?")), vm, str(body.get("requested_by", "?")))

    def __str__(self) -> str:
        return f"host {self.host} (VM {self.vm}), requested by {self.requested_by}"


class VmSessionService(GuestService):
    """vmicvmsession: runs allowed commands for the host (docs/services/vmsession.md)."""

    spec = by_key("vmsession")

    def __init__(self, ctx: GuestContext) -> None:
        super().__init__(ctx)
        self.handlers = {VmSessionOp.START: self._start, VmSessionOp.SIGNAL: self._signal}
        self.notification_handlers = {
            VmSessionOp.INPUT: self._on_input,
            VmSessionOp.WINDOW: self._on_window,
            VmSessionOp.KEEPALIVE: self._on_keepalive,
        }
        #: open sessions by the host's session number
        self.sessions: dict[int, GuestSession] = {}

    @property
    def config(self) -> SessionConfig:
        """The ``[vmsession]`` settings (vmis.services.vmsession.policy)."""
        cfg = getattr(self.ctx.config, "vmsession", None)
        return cfg if isinstance(cfg, SessionConfig) else SessionConfig()

    # Section: lifecycle

    async def on_start(self) -> None:
        self.spawn(self._keepalive_loop(), "keepalive")

    def on_session(self, running: bool) -> None:
        if not running:
            # §5.4: a session cannot outlive the host session that started it;
            # nobody could read its output or stop it any more.
            self._drop_all("host-lost")

    async def on_stop(self) -> None:
        self._drop_all("stopped")

    def _drop_all(self, reason: str) -> None:
        # Forget the sessions at once: the next host may reuse their numbers.
        sessions, self.sessions = self.sessions, {}
        for session in sessions.values():
            self.log.warning("session %d: killing %s (%s)", session.sid,
                             shlex.join(session.argv), reason)
            session.silent = reason == "host-lost"
            session.cancel(signal.SIGKILL, reason)
            if session.task is not None:
                session.task.cancel()

    async def _keepalive_loop(self) -> None:
        # §4: tell the host which sessions are alive; end those whose host fell silent.
        while True:
            keepalive = self.config.keepalive
            await asyncio.sleep(keepalive)
            if not self.sessions:
                continue
            self.ctx.notify(ServiceId.VMSESSION, VmSessionOp.KEEPALIVE,
                            encode_json({"sessions": sorted(self.sessions)}))
            now = asyncio.get_running_loop().time()
            for session in list(self.sessions.values()):
                if now - session.last_heard > idle_deadline(keepalive):
                    self.log.warning("session %d: no word from the host for %.1f s; killing it",
                                     session.sid, now - session.last_heard)
                    session.cancel(signal.SIGKILL, "host-lost")

    def ended(self, session: GuestSession) -> None:
        """A session's run finished: log it (§7) and send EXIT unless its host is gone."""
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]
        body = session.exit_payload()
        if body["signal"] is not None:
            how = f"killed by signal {body['signal']}"
        elif body["code"] is not None:
            how = f"exit code {body['code']}"
        else:
            how = "no exit status"
        counts = session.counts
        self.log.info("session %d ended: %s, %s after %.3f s (stdout %d B, stderr %d B, "
                      "stdin %d B)", session.sid, session.reason, how,
                      body["duration_ms"] / 1000, counts["stdout"], counts["stderr"],
                      counts["stdin"])
        if not session.silent:
            self.ctx.notify(ServiceId.VMSESSION, VmSessionOp.EXIT, encode_json(body))

    def credit_input(self, sid: int, n: int) -> None:
        """Give the host *n* bytes of input credit back (§3)."""
        if n:
            self.ctx.notify(ServiceId.VMSESSION, VmSessionOp.WINDOW,
                            encode_json({"session": sid, "bytes": n}))

    # Section: requests

    async def _start(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        sid = body.get("session")
        if not isinstance(sid, int) or isinstance(sid, bool) or not 0 < sid < 2**32:
            raise ServiceError("bad-request", "session must be a positive number")
        if sid in self.sessions:
            raise ServiceError("exists", f"session {sid} is already open")
        cfg = self.config
        if len(self.sessions) >= cfg.max_sessions:
            raise ServiceError("busy", f"the guest runs {len(self.sessions)} sessions already "
                                       f"([vmsession] max_sessions = {cfg.max_sessions})")
        argv = body.get("argv")
        if (not isinstance(argv, list) or not argv or argv[0] == ""
                or not all(isinstance(a, str) and "\0" not in a for a in argv)
                or sum(len(a) for a in argv) > _MAX_ARGV_BYTES):
            raise ServiceError("bad-request", "argv must be a non-empty list of strings")
        env = check_env(body.get("env"))
        timeout_ms = body.get("timeout_ms")
        if timeout_ms is not None and (not isinstance(timeout_ms, int) or timeout_ms <= 0):
            raise ServiceError("bad-request", "timeout_ms must be a positive number")
        window = body.get("window", DEFAULT_WINDOW)
        if not isinstance(window, int) or not MIN_WINDOW <= window <= MAX_WINDOW:
            raise ServiceError("bad-request", f"window must be {MIN_WINDOW}..{MAX_WINDOW} bytes")
        who = _Who.from_request(body)

        # §6: the policy, in this order: anything allowed at all, the program, the user.
        if not cfg.allow:
            self.log.warning("refused %s for %s: the allow-list is empty", shlex.join(argv), who)
            raise ServiceError("denied", "the guest allows no commands: its [vmsession] allow "
                                         "list is empty (/etc/vmis/agent.conf)")
        real = resolve_program(argv[0], cfg.path)
        if not allowed(real, cfg.allow):
            self.log.warning("refused %s (%s) for %s: not on the allow-list",
                             shlex.join(argv), real, who)
            raise ServiceError("denied", f"{real} is not on the guest's allow-list "
                                         "([vmsession] allow in /etc/vmis/agent.conf)")
        user, switch = self._user(cfg)
        cwd_guest, cwd = self._cwd(body.get("cwd"), cfg, user)
        child_env = {"PATH": cfg.path, "HOME": user.pw_dir, "USER": user.pw_name,
                     "LOGNAME": user.pw_name, "SHELL": user.pw_shell or "/bin/sh"}
        child_env.update({k: os.environ[k] for k in _INHERITED_ENV if k in os.environ})
        child_env.update(env)
        extra: dict[str, Any] = {}
        if switch:
            extra = {"user": user.pw_uid, "group": user.pw_gid,
                     "extra_groups": os.getgrouplist(user.pw_name, user.pw_gid)}
        want_stdin = bool(body.get("stdin", False))
        try:
            proc = await asyncio.create_subprocess_exec(
                argv[0], *argv[1:], executable=real, cwd=cwd, env=child_env,
                stdin=asyncio.subprocess.PIPE if want_stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True, **extra,
            )
        except OSError as exc:
            raise ServiceError("failed", f"cannot start {argv[0]}: {exc.strerror or exc}") \
                from exc
        session = GuestSession(self, sid, proc, argv, window=window,
                               input_window=DEFAULT_WINDOW)
        self.sessions[sid] = session
        if timeout_ms is not None:
            session.arm_timeout(timeout_ms / 1000)
        session.task = self.spawn(session.run(), f"session-{sid}")
        self.log.info("session %d for %s: started %s as %s in %s (pid %d%s%s)", sid, who,
                      shlex.join(argv), user.pw_name, cwd_guest, proc.pid,
                      f", env {', '.join(sorted(env))}" if env else "",
                      f", timeout {timeout_ms / 1000:g} s" if timeout_ms else "")
        return encode_json({
            "pid": proc.pid,
            "user": user.pw_name,
            "cwd": cwd_guest,
            "program": real,
            "keepalive_ms": int(cfg.keepalive * 1000),
            "input_window": DEFAULT_WINDOW if want_stdin else 0,
        })

    def _user(self, cfg: SessionConfig) -> tuple[pwd.struct_passwd, bool]:
        me = os.geteuid()
        if not cfg.user:
            return pwd.getpwuid(me), False
        try:
            user = pwd.getpwnam(cfg.user)
        except KeyError:
            raise ServiceError("failed", f"[vmsession] user {cfg.user!r} does not exist in the "
                                         "guest") from None
        if user.pw_uid == me:
            return user, False
        if me != 0:
            raise ServiceError("failed", f"cannot run commands as {cfg.user}: the agent does "
                                         "not run as root")
        return user, True

    def _cwd(self, asked: object, cfg: SessionConfig,
             user: pwd.struct_passwd) -> tuple[str, str]:
        if asked is not None:
            if not isinstance(asked, str) or not asked.startswith("/"):
                raise ServiceError("bad-request", "cwd must be an absolute guest path")
            path = self.ctx.path(asked)
            if not path.is_dir():
                raise ServiceError("not-found", f"no directory {asked} in the guest")
            return asked, str(path)
        guest = user.pw_dir if cfg.cwd == "~" else cfg.cwd
        path = self.ctx.path(guest)
        if not path.is_dir():
            # a home that does not exist (or a lab VM's root without it): start at /
            guest, path = "/", self.ctx.path("/")
        return guest, str(path)

    async def _signal(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        session = self._session(body)
        name = str(body.get("signal", "")).upper()
        signum = SIGNALS.get(name)
        if signum is None:
            raise ServiceError("bad-request", f"unknown signal {name!r}; use "
                                              f"{', '.join(SIGNALS)}")
        if body.get("cancel"):
            self.log.info("session %d: cancelled by the host (SIG%s)", session.sid, name)
            session.cancel(signum, "cancelled")
        else:
            session.kill(signum)
        return encode_json({"session": session.sid})

    def _open_session(self, sid: object) -> GuestSession | None:
        # A number from the host's json: anything else (a list, a string) names no session.
        return self.sessions.get(sid) if type(sid) is int else None

    def _session(self, body: Mapping[str, Any]) -> GuestSession:
        session = self._open_session(body.get("session"))
        if session is None:
            raise ServiceError("not-found", f"no open session {body.get('session')!r}")
        session.last_heard = asyncio.get_running_loop().time()
        return session

    # Section: notifications

    def _on_input(self, payload: bytes) -> None:
        body, raw = decode_json_raw(payload)
        session = self._open_session(body.get("session"))
        if session is None:
            return  # late input for a session that ended
        session.last_heard = asyncio.get_running_loop().time()
        session.feed(raw, bool(body.get("eof")))

    def _on_window(self, payload: bytes) -> None:
        body = decode_json(payload)
        session = self._open_session(body.get("session"))
        n = body.get("bytes")
        if session is not None and isinstance(n, int) and n > 0:
            session.last_heard = asyncio.get_running_loop().time()
            session.window.give(n)

    def _on_keepalive(self, payload: bytes) -> None:
        body = decode_json(payload)
        sids = body.get("sessions") or []
        if not isinstance(sids, list):
            raise RemoteProtocolError("KEEPALIVE sessions must be a list of numbers")
        now = asyncio.get_running_loop().time()
        for sid in sids:
            session = self._open_session(sid)
            if session is not None:
                session.last_heard = now


#: the agent offers the service this module defines (vmis.guest.services)
SERVICE = VmSessionService
