"""Shutdown over qemu-ga: guest-shutdown, whose success has no answer.

qemu-ga runs the guest's ``shutdown`` program and answers guest-shutdown only
when that fails (``success-response: false``). So the link sends a guest-ping
right behind it: qemu-ga answers in order, and the ping's answer with no error
before it means the shutdown was accepted (the codec settles the no-reply
command then). The SHUTDOWN answer goes back to the host half as the vmis
agent's does, and the host waits for the VM to go as for any guest
(docs/services/shutdown.md §2).

Without ``-Force`` a vmis guest refuses while logind holds a block inhibitor
on shutdown; qemu-ga's shutdown never asks, so where guest-exec is allowed
the link asks logind itself (the same busctl call) and refuses the same way.

qemu-ga 7.2 runs ``shutdown -P +0``, which systemd 252 hands to logind over
D-Bus: in a guest without D-Bus (a minimal image) it fails ("child process
has failed to shutdown"). Where guest-exec is allowed the link then runs
``systemctl poweroff`` (``reboot``) itself, which needs neither, and says so
in the log; otherwise the failure is the answer.
"""

from __future__ import annotations

import asyncio

from vmis.errors import ChannelError, RemoteServiceError, RequestTimeout
from vmis.links.qemu_ga import guest_exec
from vmis.links.qemu_ga.translator import LinkContext, Translator, json_body
from vmis.protocol import Payload, Received, encode_json
from vmis.services.catalog import by_key
from vmis.services.shutdown import (
    LIST_INHIBITORS,
    MAX_REASON_BYTES,
    PowerAction,
    ShutdownOp,
    parse_inhibitors,
)

__all__ = ["ShutdownTranslator"]

SPEC = by_key("shutdown")
#: qemu-ga's guest-shutdown modes
_MODES = {PowerAction.POWEROFF: "powerdown", PowerAction.REBOOT: "reboot"}
#: the systemctl verbs of the fallback
_SYSTEMCTL = {PowerAction.POWEROFF: "poweroff", PowerAction.REBOOT: "reboot"}


class ShutdownTranslator(Translator):
    """SHUTDOWN as guest-shutdown, an inhibitor check first unless forced."""

    spec = SPEC

    def __init__(self, link: LinkContext) -> None:
        super().__init__(link)
        self.ops = {ShutdownOp.SHUTDOWN: self._shutdown}
        #: the action accepted on this link, if any
        self.pending: PowerAction | None = None

    async def _shutdown(self, payload: Payload, timeout: float | None) -> Received:
        body = json_body(payload)
        try:
            action = PowerAction(str(body.get("action")))
        except ValueError:
            raise RemoteServiceError("bad-request", f"unknown power action "
                                                    f"{body.get('action')!r}") from None
        force = bool(body.get("force", False))
        reason = str(body.get("reason") or "")
        if len(reason.encode()) > MAX_REASON_BYTES:
            raise RemoteServiceError("too-large",
                                     f"the reason is longer than {MAX_REASON_BYTES} bytes")
        if self.pending is not None:
            raise RemoteServiceError("busy", f"a {self.pending.value} is already in progress")
        if not force and self.link.agent.can_exec:
            blockers = await self._blockers()
            if blockers:
                raise RemoteServiceError(
                    "busy", "the guest refuses to shut down: blocked by "
                    + "; ".join(blockers) + " (use -Force to shut down anyway)")
        shutdown = self.link.conn.send("guest-shutdown", {"mode": _MODES[action]})
        ping = self.link.conn.send("guest-ping")
        try:
            await ping
        except (RequestTimeout, ChannelError):
            # No answer behind it: qemu-ga stopped with the guest going down. An
            # error of guest-shutdown would have come at once, before the ping's.
            if not shutdown.done():
                shutdown.cancel()
        if shutdown.done() and not shutdown.cancelled() and shutdown.exception() is not None:
            failure = shutdown.exception()
            if not self.link.agent.can_exec:
                raise RemoteServiceError("failed", str(failure)) from None
            self.link.log.warning("%s; running systemctl %s through guest-exec instead",
                                  failure, _SYSTEMCTL[action])
            await self._systemctl(action)
        self.pending = action
        self.link.log.warning("%s accepted by qemu-ga%s: %s", action.value,
                              " (forced)" if force else "", reason)
        return encode_json({"action": action.value, "force": force, "accepted": True})

    async def _systemctl(self, action: PowerAction) -> None:
        """``systemctl poweroff`` (or ``reboot``) in the guest; the guest may go before it ends."""
        pid = await guest_exec.start(self.link, ["systemctl", _SYSTEMCTL[action]])
        try:
            done = None
            for _ in range(50):  # systemctl returns once the job is queued
                done = await guest_exec.poll(self.link, pid)
                if done is not None:
                    break
                await asyncio.sleep(0.1)
        except (RequestTimeout, ChannelError):
            return  # qemu-ga stopped with the guest going down
        if done is not None and not done.ok:
            raise RemoteServiceError("failed", f"systemctl {_SYSTEMCTL[action]} in the guest: "
                                               f"{done.why()}")

    async def _blockers(self) -> list[str]:
        """logind's block inhibitors on shutdown; none when logind does not answer."""
        try:
            done = await guest_exec.run(self.link, LIST_INHIBITORS, timeout=30)
        except (RemoteServiceError, RequestTimeout) as exc:
            self.link.log.info("cannot ask logind for inhibitors (%s); assuming none", exc)
            return []
        if not done.ok:
            return []  # no logind (or no D-Bus): no inhibitors, as systemctl assumes
        try:
            return parse_inhibitors(done.stdout.decode("utf-8", "replace"))
        except ValueError as exc:
            self.link.log.warning("unexpected ListInhibitors answer: %s", exc)
            return []
