"""Guest half of VSS (vmicvss): freeze hooks, filesystem freeze, watchdog thaw.

One freeze *cycle* at a time (docs/services/vss.md §2)::

    FREEZE: freeze hooks (name order) -> filesystems frozen (root last) -> frozen
            any failure: freezefail hooks (reverse order), everything thawed
    THAW, the watchdog, a guest administrator or the service stopping:
            filesystems thawed -> thaw hooks (reverse order)

Rules this module keeps, because a guest left frozen hangs every writer:

- **The watchdog.** Once frozen, the guest thaws by itself ``timeout``
  seconds after the freeze began (``[vss] freeze_timeout``, or less if the
  host asks), whatever happens to the host. Losing the host session does not
  thaw at once: a host that reconnects in time can still send THAW and keep
  the snapshot it is taking consistent; the watchdog bounds the wait.
  A freeze whose answer the host can never receive (its session ended while
  the hooks ran or the filesystems froze) is undone at once.
- **Nothing writes to disk while frozen.** The cycle lives in memory; hooks
  never run while frozen and their output goes to memory; the agent's log
  records are held (:class:`LogHold`) and emitted after the thaw, and
  :meth:`GuestContext.set_frozen` holds the agent's state file. Every module
  the frozen path needs is imported at the top, because a first import could
  write a bytecode cache.
- **Every transition holds one lock**, so FREEZE, THAW, the watchdog and a
  service stop never interleave; a stop thaws first.
- **An agent that dies frozen is undone by the next.** Before freezing, the
  service leaves a mark in ``/run/vmis`` (a tmpfs, never frozen, empty after
  a reboot) and removes it once thawed; an agent that starts and finds it
  thaws every filesystem before anything else (:meth:`VssService.recover`),
  as the kernel keeps them frozen after the process that froze them is gone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmis.errors import FreezeError, ServiceError, ThawError
from vmis.protocol import RequestReceived, decode_json, encode_json
from vmis.services.catalog import by_key
from vmis.services.guest_half import GuestContext, GuestService
from vmis.services.vss import (
    DEFAULT_FREEZE_TIMEOUT,
    DEFAULT_HOOK_TIMEOUT,
    HOOKS_DIR,
    MAX_FREEZE_TIMEOUT,
    GuestVssState,
    VssOp,
)
from vmis.services.vss.freeze import FilesystemFreeze, Freezer, IoctlFreezer
from vmis.services.vss.hooks import HookResult, list_hooks, run_hooks

__all__ = ["FROZEN_MARK", "SERVICE", "Cycle", "LogHold", "VssService"]

#: seconds between two attempts when a thaw failed
THAW_RETRY = 2.0
#: longest checkpoint id or name accepted
_MAX_TEXT = 256
#: the mark of a freeze in progress: a tmpfs in a real guest, never frozen
FROZEN_MARK = "/run/vmis/vss-frozen"


# Section: holding the log while frozen


class _HandlerHold(logging.Filter):
    """Keeps the records one handler would have emitted."""

    def __init__(self, handler: logging.Handler, limit: int) -> None:
        super().__init__()
        self.handler = handler
        self.records: collections.deque[logging.LogRecord] = collections.deque(maxlen=limit)
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if len(self.records) == self.records.maxlen:
            self.dropped += 1
        self.records.append(record)
        return False


class LogHold:
    """A freeze listener: while frozen, the agent's log records wait in memory.

    Under systemd the agent's stderr is a pipe to the journal; a journal on a
    frozen filesystem stops reading it, the pipe fills, and the next log line
    would block the agent, and with it the thaw (open-vm-tools #79, the
    hv_vss_daemon syslog deadlock). So every handler of the root logger gets
    a filter that keeps records (the last *limit* per handler) until the thaw,
    then emits them in order.
    """

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self._holds: list[_HandlerHold] = []

    def __call__(self, frozen: bool) -> None:
        """Hold on a freeze, release on the thaw."""
        if frozen:
            self.hold()
        else:
            self.release()

    def hold(self) -> None:
        """Start holding (idempotent)."""
        if self._holds:
            return
        for handler in logging.getLogger().handlers:
            hold = _HandlerHold(handler, self.limit)
            handler.addFilter(hold)
            self._holds.append(hold)

    def release(self) -> None:
        """Stop holding and emit what was held, oldest first."""
        holds, self._holds = self._holds, []
        for hold in holds:
            hold.handler.removeFilter(hold)
            if hold.dropped:
                hold.handler.handle(logging.makeLogRecord({
                    "name": "vmis.guest.vss", "levelno": logging.WARNING,
                    "levelname": "WARNING",
                    "msg": f"{hold.dropped} log records were dropped while frozen",
                }))
            for record in hold.records:
                hold.handler.handle(record)


# Section: the freeze cycle


@dataclass
class Cycle:
    """One freeze and its thaw: what the host and ``vss status`` see."""

    #: the checkpoint's id (the host's; THAW names it)
    id: str
    #: the checkpoint's name, for hooks and logs
    name: str
    #: seconds from the freeze until the watchdog thaws
    timeout: float
    #: ``freezing``, ``frozen``, ``thawed``, ``timed-out`` or ``failed``
    state: str = GuestVssState.FREEZING
    #: the freeze hooks, in the order they ran (all succeeded once frozen)
    hook_paths: list[Path] = field(default_factory=list)
    #: every hook run of this cycle, in order
    hooks: list[HookResult] = field(default_factory=list)
    #: mount points frozen, in freeze order
    frozen: list[str] = field(default_factory=list)
    #: mount points thawed, in thaw order
    thawed: list[str] = field(default_factory=list)
    #: why the cycle failed, or why a thaw failed
    error: str | None = None
    #: who ended the freeze: host, timeout, guest, stopping, session (or the failure's cause)
    reason: str | None = None
    #: monotonic times
    started: float = field(default_factory=time.monotonic)
    frozen_at: float | None = None
    deadline: float | None = None
    thawed_at: float | None = None
    #: seconds the filesystem freeze and thaw calls took
    freeze_seconds: float = 0.0
    thaw_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The wire form (docs/services/vss.md §1.1)."""
        now = time.monotonic()
        frozen_for = None
        if self.frozen_at is not None:
            frozen_for = round((self.thawed_at or now) - self.frozen_at, 3)
        thaw_in = None
        if self.state == GuestVssState.FROZEN and self.deadline is not None:
            thaw_in = round(max(self.deadline - now, 0.0), 3)
        return {
            "id": self.id, "name": self.name, "state": self.state, "timeout": self.timeout,
            "frozen": self.frozen, "thawed": self.thawed,
            "hooks": [h.to_json() for h in self.hooks],
            "error": self.error, "reason": self.reason,
            "frozen_for": frozen_for, "thaw_in": thaw_in,
            "freeze_ms": round(self.freeze_seconds * 1000, 1),
            "thaw_ms": round(self.thaw_seconds * 1000, 1),
        }


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise ServiceError("bad-request", f"{key} must be a string of at most {_MAX_TEXT} "
                                          "characters")
    try:  # a lone surrogate (json's \udxxx) cannot be written to the freeze's mark file
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ServiceError("bad-request", f"{key} must be UTF-8 text") from None
    return value


class VssService(GuestService):
    """vmicvss: freezes the guest for the host's checkpoints (docs/services/vss.md)."""

    spec = by_key("vss")

    def __init__(self, ctx: GuestContext) -> None:
        super().__init__(ctx)
        self.handlers = {
            VssOp.FREEZE: self._on_freeze,
            VssOp.THAW: self._on_thaw,
            VssOp.STATUS: self._on_status,
        }
        self.control_ops = {"vss.status": self._control_status, "vss.thaw": self._control_thaw}
        freezer: Freezer | None = ctx.adapters.get("freezer")
        self._freezer = freezer
        # A lab VM's fake freezer brings its own mount table (vmis.guest.adapters).
        freeze_root = ctx.adapters.get("freeze_root", ctx.root)
        self._fs = FilesystemFreeze(freezer, freeze_root) if freezer is not None else None
        self._lock = asyncio.Lock()
        #: the current cycle, or the last one
        self.cycle: Cycle | None = None
        self._epoch = 0
        self._watchdog: asyncio.Task[Any] | None = None
        self.log_hold = LogHold()
        ctx.freeze_listeners.append(self.log_hold)

    # Section: settings

    @property
    def freeze_timeout(self) -> float:
        """The longest freeze this guest allows (``[vss] freeze_timeout``)."""
        value = getattr(self.ctx.config, "freeze_timeout", DEFAULT_FREEZE_TIMEOUT)
        return min(float(value), MAX_FREEZE_TIMEOUT)

    @property
    def hook_timeout(self) -> float:
        """Seconds one hook may run (``[vss] hook_timeout``)."""
        return float(getattr(self.ctx.config, "hook_timeout", DEFAULT_HOOK_TIMEOUT))

    @property
    def state(self) -> str:
        """``thawed``, ``freezing``, ``frozen`` or ``timed-out`` (docs/services/vss.md §2)."""
        cycle = self.cycle
        if cycle is None or cycle.state == "failed":
            return GuestVssState.THAWED
        return cycle.state

    def status(self) -> dict[str, Any]:
        """The STATUS answer (docs/services/vss.md §1.4)."""
        return {
            "state": self.state,
            "freeze_timeout": self.freeze_timeout,
            "hook_timeout": self.hook_timeout,
            "hooks_dir": HOOKS_DIR,
            "hooks": [p.name for p in list_hooks(self.ctx.path(HOOKS_DIR))],
            "cycle": self.cycle.to_json() if self.cycle is not None else None,
        }

    # Section: requests

    async def _on_freeze(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        timeout = body.get("timeout")
        # "not > 0" refuses NaN too (json.loads reads it); a number past the
        # longest freeze allowed (infinity, a 400-digit integer) is that longest
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float)
            or not timeout > 0
        ):
            raise ServiceError("bad-request", "timeout must be a positive number of seconds")
        cycle = await self.freeze(_text(body, "id") or uuid.uuid4().hex, _text(body, "name"),
                                  float(min(timeout, MAX_FREEZE_TIMEOUT))
                                  if timeout is not None else None)
        return encode_json(cycle.to_json())

    async def _on_thaw(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        return encode_json(await self.thaw(_text(body, "id") or None, "host"))

    async def _on_status(self, request: RequestReceived) -> bytes:
        return encode_json(self.status())

    async def _control_status(self, request: dict[str, Any]) -> Any:
        return self.status()

    async def _control_thaw(self, request: dict[str, Any]) -> Any:
        return await self.thaw(None, "guest")

    # Section: lifecycle

    @property
    def _mark(self) -> Path:
        return self.ctx.path(FROZEN_MARK)

    def recover(self) -> None:
        """Thaw what an agent that died frozen left frozen (its mark is still there)."""
        mark = self._mark
        try:
            checkpoint = mark.read_text().strip()
        except FileNotFoundError:
            return
        if self._fs is None:
            return
        try:
            thawed = self._fs.thaw()
        except ThawError as exc:  # the mark stays: the next start tries again
            self.log.error("VSS: the previous agent died with the guest frozen; thawing "
                           "failed: %s", exc)
            return
        mark.unlink(missing_ok=True)
        self.log.warning("VSS: the previous agent died with the guest frozen for checkpoint "
                         "%s; thawed %s", checkpoint or "?", ", ".join(thawed) or "nothing")

    def on_session(self, running: bool) -> None:
        if not running:
            self._epoch += 1

    async def on_stop(self) -> None:
        async with self._lock:
            cycle = self.cycle
            if cycle is not None and cycle.state == GuestVssState.FROZEN:
                try:
                    await self._thaw_locked(cycle, "stopping")
                except ServiceError as exc:
                    self.log.error("VSS stopping: %s", exc)

    # Section: freeze

    def _check_freezer(self) -> FilesystemFreeze:
        if self._fs is None:
            raise ServiceError("failed", "this agent has no freezer adapter")
        if isinstance(self._freezer, IoctlFreezer) and self.ctx.root.resolve() != Path("/"):
            # A lab agent (--root) with the real freezer would freeze the
            # filesystems of the machine it runs on.
            raise ServiceError("denied", "an agent running with --root never freezes real "
                                         "filesystems (use adapters = fake)")
        return self._fs

    def _busy(self) -> ServiceError | None:
        cycle = self.cycle
        if cycle is not None and cycle.state in (GuestVssState.FREEZING, GuestVssState.FROZEN):
            return ServiceError("busy", f"the guest is already {cycle.state} for checkpoint "
                                        f"{cycle.name or cycle.id}; thaw it first")
        return None

    async def freeze(self, cid: str, name: str = "", timeout: float | None = None) -> Cycle:
        """Run the freeze hooks and freeze the filesystems; arm the watchdog.

        :param cid: the checkpoint id THAW will name.
        :param timeout: seconds until the watchdog thaws; at most ``[vss] freeze_timeout``.
        :raise ServiceError: ``busy`` while another cycle is freezing or frozen;
            ``failed`` when a hook or a filesystem failed (the freezefail hooks
            ran and nothing is frozen), or when the host session ended meanwhile.
        :return: the frozen cycle.
        """
        if (busy := self._busy()) is not None:
            raise busy
        async with self._lock:
            if (busy := self._busy()) is not None:
                raise busy
            fs = self._check_freezer()
            epoch = self._epoch
            limit = self.freeze_timeout
            cycle = Cycle(cid, name, min(timeout, limit) if timeout else limit)
            self.cycle = cycle
            hooks = list_hooks(self.ctx.path(HOOKS_DIR))
            results = await run_hooks(hooks, "freeze", timeout=self.hook_timeout,
                                      cwd=self.ctx.root, env=self._env(cycle, "freeze"),
                                      stop_on_failure=True)
            cycle.hooks += results
            cycle.hook_paths = hooks[: len(results)]
            if results and not results[-1].ok:
                await self._failed(cycle, f"freeze hook {results[-1].summary()}", "hook")
            if epoch != self._epoch or not self.running:
                await self._failed(cycle, self._gone_reason(), "session")
            self._set_mark(cycle)
            self.ctx.set_frozen(True)
            cycle.frozen_at = time.monotonic()
            cycle.deadline = cycle.frozen_at + cycle.timeout
            try:
                cycle.frozen = await self._freeze_filesystems(fs)
            except FreezeError as exc:
                self.ctx.set_frozen(False)
                self._clear_mark()
                await self._failed(cycle, str(exc), "freeze")
            except OSError as exc:
                self.ctx.set_frozen(False)
                self._clear_mark()
                await self._failed(cycle, f"cannot read the mount table: {exc}", "freeze")
            finally:
                cycle.freeze_seconds = time.monotonic() - cycle.frozen_at
            cycle.state = GuestVssState.FROZEN
            if epoch != self._epoch or not self.running:
                # Nobody will learn of this freeze: undo it now, not at the deadline.
                reason = self._gone_reason()
                await self._thaw_locked(cycle, "session" if self.running else "stopping")
                raise ServiceError("failed", f"{reason}; the filesystems were thawed again")
            self._watchdog = self.spawn(self._watch(cycle, cycle.deadline), "watchdog")
            return cycle

    def _set_mark(self, cycle: Cycle) -> None:
        try:
            self._mark.parent.mkdir(parents=True, exist_ok=True)
            self._mark.write_text(cycle.id)
        except OSError as exc:  # the freeze still goes ahead; only a crash is not undone
            self.log.warning("VSS: cannot mark the freeze in %s: %s", FROZEN_MARK, exc)

    def _clear_mark(self) -> None:
        with contextlib.suppress(OSError):
            self._mark.unlink(missing_ok=True)

    def _gone_reason(self) -> str:
        if not self.running:
            return "the VSS service stopped during the freeze"
        return "the host session ended during the freeze"

    async def _freeze_filesystems(self, fs: FilesystemFreeze) -> list[str]:
        # FIFREEZE flushes the filesystem first and may take a while: a thread
        # keeps the agent (heartbeat, THAW) responsive meanwhile.
        work = asyncio.ensure_future(asyncio.to_thread(fs.freeze))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # The freeze cannot be interrupted: let it end, then undo it.
            with contextlib.suppress(BaseException):
                await asyncio.wait([work])
            with contextlib.suppress(ThawError):
                fs.thaw()
                self._clear_mark()
            self.ctx.set_frozen(False)
            raise

    async def _failed(self, cycle: Cycle, error: str, cause: str) -> None:
        """End a freeze that failed before or while freezing: freezefail hooks, then raise."""
        cycle.state = "failed"
        cycle.error = error
        cycle.reason = cause
        ran = list(reversed(cycle.hook_paths))
        cycle.hooks += await run_hooks(ran, "freezefail", timeout=self.hook_timeout,
                                       cwd=self.ctx.root, env=self._env(cycle, "freezefail"))
        self.log.error("VSS freeze for %s failed: %s", cycle.name or cycle.id, error)
        self._log_hooks(cycle)
        ran_note = "; freezefail hooks ran" if ran else ""
        raise ServiceError("failed", f"{error}{ran_note}; nothing is frozen")

    # Section: thaw

    async def thaw(self, cid: str | None, reason: str) -> dict[str, Any]:
        """Thaw the filesystems and run the thaw hooks.

        :param cid: the checkpoint whose freeze to end; None ends any.
        :param reason: ``host``, ``guest`` (an administrator) ...
        :raise ServiceError: ``busy`` when *cid* names another checkpoint than
            the frozen one; ``failed`` when a filesystem could not be thawed
            (the agent keeps trying every few seconds).
        :return: the cycle with ``result``: ``thawed`` (this call thawed),
            ``timed-out`` (the watchdog had thawed that checkpoint already)
            or ``not-frozen``.
        """
        async with self._lock:
            cycle = self.cycle
            if cycle is None or cycle.state != GuestVssState.FROZEN:
                result = "not-frozen"
                if cycle is not None and cycle.id == cid and cycle.state == \
                        GuestVssState.TIMED_OUT:
                    result = "timed-out"
                return {"result": result, "state": self.state,
                        "cycle": cycle.to_json() if cycle is not None else None}
            if cid is not None and cid != cycle.id:
                raise ServiceError("busy", f"the guest is frozen for another checkpoint "
                                           f"({cycle.name or cycle.id})")
            await self._thaw_locked(cycle, reason)
            return {"result": "thawed", "state": self.state, "cycle": cycle.to_json()}

    async def _watch(self, cycle: Cycle, deadline: float) -> None:
        await asyncio.sleep(max(deadline - time.monotonic(), 0.0))
        async with self._lock:
            if self.cycle is cycle and cycle.state == GuestVssState.FROZEN:
                with contextlib.suppress(ServiceError):  # retried; logged after the thaw
                    await self._thaw_locked(cycle, "timeout")

    async def _thaw_locked(self, cycle: Cycle, reason: str) -> None:
        watchdog = self._watchdog
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()
        self._watchdog = None
        assert self._fs is not None
        start = time.monotonic()
        try:
            cycle.thawed = self._fs.thaw()  # FITHAW is quick: no thread, nothing to interrupt
        except ThawError as exc:
            cycle.error = f"{exc}; retrying every {THAW_RETRY:g} s"
            retry = time.monotonic() + THAW_RETRY
            if self.running:
                self._watchdog = self.spawn(self._watch(cycle, retry), "thaw-retry")
            raise ServiceError("failed", cycle.error) from exc
        self._clear_mark()
        cycle.thaw_seconds = time.monotonic() - start
        cycle.thawed_at = time.monotonic()
        cycle.reason = reason
        cycle.error = None
        cycle.state = GuestVssState.TIMED_OUT if reason == "timeout" else GuestVssState.THAWED
        self.ctx.set_frozen(False)  # the held log records are emitted here
        if reason == "timeout":
            self.log.warning("VSS: no THAW for checkpoint %s within %g s: thawed by the watchdog",
                             cycle.name or cycle.id, cycle.timeout)
        hooks = list(reversed(cycle.hook_paths))
        cycle.hooks += await run_hooks(hooks, "thaw", timeout=self.hook_timeout,
                                       cwd=self.ctx.root, env=self._env(cycle, "thaw"))
        self.log.info("VSS: %s thawed after %.2f s (%s)", ", ".join(cycle.thawed) or "nothing",
                      (cycle.thawed_at or 0) - (cycle.frozen_at or 0), reason)
        self._log_hooks(cycle)

    # Section: helpers

    def _env(self, cycle: Cycle, phase: str) -> dict[str, str]:
        env = {
            "VMIS_VSS_PHASE": phase,
            "VMIS_CHECKPOINT_ID": cycle.id,
            "VMIS_CHECKPOINT_NAME": cycle.name,
            "VMIS_FREEZE_TIMEOUT": f"{cycle.timeout:g}",
            "VMIS_ROOT": str(self.ctx.root),
        }
        if phase != "freeze":
            env["VMIS_VSS_REASON"] = cycle.reason or ""
        return env

    def _log_hooks(self, cycle: Cycle) -> None:
        # Called only when nothing is frozen: the hooks' output reaches the log now.
        for hook in cycle.hooks:
            level = logging.INFO if hook.ok else logging.WARNING
            self.log.log(level, "VSS hook %s", hook.summary())
            if hook.output.strip():
                self.log.debug("VSS hook %s %s output:\n%s", hook.name, hook.phase,
                               hook.output.rstrip())


#: the agent offers the service this module defines (vmis.guest.services)
SERVICE = VssService
