"""VSS over qemu-ga: guest-fsfreeze-freeze, -thaw and -status, with the host's watchdog.

The VSS host half runs a checkpoint as FREEZE, the snapshot step, THAW
(vmis.services.vss.checkpoint); this translation does each with qemu-ga:

- FREEZE reads the guest's filesystems (guest-get-fsinfo, which a frozen
  qemu-ga refuses) and freezes them all (guest-fsfreeze-freeze), then
  answers with a freeze cycle as a vmis guest does (vmis.services.vss.guest.Cycle):
  the frozen mount points and ``thaw_in``, the freeze window. A freeze that
  froze nothing fails, so the checkpoint is labelled crash-consistent, never
  silently.
- qemu-ga has no watchdog: a freeze never thawed stays frozen, and a guest
  frozen for ever is a guest dead. So the link is the watchdog. It arms a
  timer for the freeze window (``timeout`` of FREEZE, the vmis default 60 s,
  at most 900 s) *before* it sends the freeze, and when the window ends
  without a THAW it sends guest-fsfreeze-thaw itself. qemu-ga answers in
  order, so a thaw sent while a freeze hangs runs the moment the freeze
  returns. The host half cuts the snapshot step off before the window ends
  (docs/services/vss.md §4.3), so a snapshot that completes was taken frozen.
- While frozen, qemu-ga refuses all but a few commands; the link marks itself
  frozen and the other translations answer ``busy`` (KVP stops reading).
- STATUS is guest-fsfreeze-status with the link's cycle; a guest found frozen
  when a session starts is thawed by the host half (``VmVss.on_running``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from vmis.errors import ChannelError, RemoteServiceError, RequestTimeout
from vmis.links.qemu_ga.translator import LinkContext, Translator, json_body
from vmis.protocol import Payload, Received, encode_json
from vmis.services.catalog import by_key
from vmis.services.vss import (
    DEFAULT_FREEZE_TIMEOUT,
    MAX_FREEZE_TIMEOUT,
    GuestVssState,
    VssOp,
)
from vmis.services.vss.guest import Cycle

__all__ = ["VssTranslator"]

SPEC = by_key("vss")
#: seconds a thaw may take (qemu-ga thaws every filesystem it froze)
THAW_TIMEOUT = 300.0


class VssTranslator(Translator):
    """FREEZE, THAW and STATUS on qemu-ga; the freeze window enforced from the host."""

    spec = SPEC

    def __init__(self, link: LinkContext) -> None:
        super().__init__(link)
        self.ops = {VssOp.FREEZE: self._freeze, VssOp.THAW: self._thaw,
                    VssOp.STATUS: self._status}
        #: the current or last freeze cycle of this link
        self.cycle: Cycle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

    # Section: FREEZE

    async def _freeze(self, payload: Payload, timeout: float | None) -> Received:
        body = json_body(payload)
        window = _window(body.get("timeout"))
        async with self._lock:
            if self.cycle is not None and self.cycle.state == GuestVssState.FROZEN:
                raise RemoteServiceError("busy", f"the guest is already frozen for checkpoint "
                                                 f"{self.cycle.name or self.cycle.id}")
            if await self.link.call("guest-fsfreeze-status") == "frozen":
                raise RemoteServiceError("busy", "the guest's filesystems are already frozen "
                                                 "(by another qemu-ga client); thaw them first")
            mounts = await self._mount_points()
            cycle = Cycle(str(body.get("id") or ""), str(body.get("name") or ""), window)
            self.cycle = cycle
            cycle.frozen_at = time.monotonic()
            cycle.deadline = cycle.frozen_at + window
            self.link.frozen = True
            self._arm(cycle, window)
            try:
                count = await self.link.call("guest-fsfreeze-freeze", timeout=timeout)
            except RemoteServiceError as exc:
                # qemu-ga thawed whatever it had frozen before it answered so.
                self._end(cycle, "failed", "freeze", str(exc))
                raise RemoteServiceError("failed", f"the freeze failed: {exc}") from None
            except (RequestTimeout, ChannelError):
                # It may freeze yet: the watchdog's thaw stays armed behind it.
                cycle.error = "no answer to guest-fsfreeze-freeze"
                raise
            cycle.freeze_seconds = time.monotonic() - cycle.frozen_at
            if cycle.reason == "timeout":
                raise RemoteServiceError(
                    "failed", f"the freeze took {cycle.freeze_seconds:.1f} s, longer than its "
                              f"{window:g} s window; the host thawed the guest again")
            if not isinstance(count, int) or count <= 0:
                self._end(cycle, "failed", "freeze", "qemu-ga froze no filesystem")
                raise RemoteServiceError("failed", f"{self.link.agent.label} froze no "
                                                   "filesystem (none it can freeze is mounted)")
            cycle.state = GuestVssState.FROZEN
            cycle.frozen = mounts if len(mounts) == count else mounts or [f"({count} filesystems)"]
            self.link.log.info("VSS: qemu-ga froze %d filesystem(s) for %r; thaw within %g s",
                               count, cycle.name or cycle.id, window)
            return encode_json(cycle.to_json())

    async def _mount_points(self) -> list[str]:
        if not self.link.agent.enabled("guest-get-fsinfo"):
            return []
        try:
            filesystems = await self.link.call("guest-get-fsinfo")
        except RemoteServiceError:
            return []
        points = sorted({str(f.get("mountpoint")) for f in filesystems if isinstance(f, dict)})
        # "/" last, as a freeze goes (docs/hyperv.md §8)
        return sorted(points, key=lambda m: m == "/")

    # Section: the watchdog

    def _arm(self, cycle: Cycle, window: float) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = asyncio.get_running_loop().call_later(
            window, lambda: self.link.spawn(self._expired(cycle), "qemu-ga freeze watchdog"))

    async def _expired(self, cycle: Cycle) -> None:
        # Not under the lock: a freeze that hangs holds it, and this thaw must
        # go out behind that freeze (qemu-ga runs it the moment the freeze returns).
        if self.cycle is not cycle or cycle.state not in (GuestVssState.FROZEN,
                                                          GuestVssState.FREEZING):
            return
        cycle.reason = "timeout"
        self.link.log.warning("VSS: checkpoint %r was not thawed within its %g s freeze "
                              "window; the host thaws the guest", cycle.name or cycle.id,
                              cycle.timeout)
        try:
            await self.link.call("guest-fsfreeze-thaw", timeout=THAW_TIMEOUT)
        except (RemoteServiceError, RequestTimeout, ChannelError) as exc:
            self.link.log.error("VSS: the watchdog's thaw failed: %s", exc)
            cycle.error = f"the watchdog's thaw failed: {exc}"
            return
        self._end(cycle, GuestVssState.TIMED_OUT, "timeout")

    def _end(self, cycle: Cycle, state: str, reason: str, error: str | None = None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.link.frozen = False
        cycle.state = state
        cycle.reason = reason
        cycle.error = error
        cycle.thawed_at = time.monotonic()
        if state != "failed":
            cycle.thawed = list(reversed(cycle.frozen))

    # Section: THAW and STATUS

    async def _thaw(self, payload: Payload, timeout: float | None) -> Received:
        wanted = json_body(payload).get("id")
        async with self._lock:
            cycle = self.cycle
            if cycle is not None and wanted and cycle.id != wanted \
                    and cycle.state == GuestVssState.FROZEN:
                raise RemoteServiceError("busy", f"the guest is frozen for checkpoint "
                                                 f"{cycle.name or cycle.id}, not {wanted}")
            if cycle is not None and cycle.state == GuestVssState.TIMED_OUT \
                    and (not wanted or wanted == cycle.id):
                return encode_json({"result": "timed-out", "state": GuestVssState.TIMED_OUT,
                                    "cycle": cycle.to_json()})
            started = time.monotonic()
            count = await self.link.call("guest-fsfreeze-thaw",
                                         timeout=timeout or THAW_TIMEOUT)
            ours = cycle is not None and cycle.state == GuestVssState.FROZEN
            if ours and cycle is not None:
                self._end(cycle, GuestVssState.THAWED, "host")
                cycle.thaw_seconds = time.monotonic() - started
            else:
                self.link.frozen = False
            result = "thawed" if ours or (isinstance(count, int) and count > 0) else "not-frozen"
            return encode_json({"result": result, "state": GuestVssState.THAWED,
                                "cycle": cycle.to_json() if cycle is not None else None})

    async def _status(self, payload: Payload, timeout: float | None) -> Received:
        frozen = await self.link.call("guest-fsfreeze-status") == "frozen"
        cycle = self.cycle
        if frozen:
            state = GuestVssState.FROZEN
        elif cycle is not None and cycle.state == GuestVssState.TIMED_OUT:
            state = GuestVssState.TIMED_OUT
        else:
            state = GuestVssState.THAWED
        answer: dict[str, Any] = {
            "state": state, "freeze_timeout": DEFAULT_FREEZE_TIMEOUT, "hook_timeout": None,
            "hooks_dir": None, "hooks": [], "agent": self.link.agent.label,
            "cycle": cycle.to_json() if cycle is not None else None,
        }
        return encode_json(answer)


def _window(asked: object) -> float:
    """The freeze window: FREEZE's ``timeout`` if given, the vmis default otherwise."""
    if isinstance(asked, int | float) and not isinstance(asked, bool) and asked > 0:
        return float(min(asked, MAX_FREEZE_TIMEOUT))
    if asked is not None:
        raise RemoteServiceError("bad-request", "timeout must be a positive number of seconds")
    return DEFAULT_FREEZE_TIMEOUT
