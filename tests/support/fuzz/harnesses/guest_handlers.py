"""The guest halves: every request and notification handler of every guest service,
and the agent's own control service (HELLO, SET_SERVICE, PING).

One agent (not listening: its handlers are called as its channel would call
them) with every service running, in a root directory of its own
(support.fuzz.scratch), with the lab's fake clock and freezer and a power adapter that
only counts. Each input is up to four requests and notifications in a row,
then the agent is put back as it was (thawed, copies closed, pools and
copied files removed, clock reset) so inputs do not depend on each other.

May raise, as the agent's dispatch (vmis.guest.agent) documents it: a
request handler any VmisError (ServiceError is answered with its code,
RemoteProtocolError ``bad-request``, the rest ``failed``); a notification
handler VmisError, ValueError or KeyError (logged and dropped). Anything
else is a crash, and so is a background task of a service that fails or a
handler that does not answer within 5 s (a copy into a frozen guest pauses
until the thaw by design: the harness sends none).

UPDATE (a new agent bundle, run to test it) is left out: it executes what
it is given; tests/updates covers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import shutil
from typing import Any

import atheris

from support.fuzz.failures import LoggedFailures
from support.fuzz.scratch import scratch_dir
from support.fuzz.values import json_object, json_payload, json_raw_payload
from vmis.errors import VmisError
from vmis.guest.adapters import LabFreezer, VirtualClock
from vmis.guest.agent import Agent
from vmis.guest.config import AgentConfig
from vmis.guest.services import available_services
from vmis.protocol import RequestReceived
from vmis.protocol.services import CONTROL, ControlOp
from vmis.services.catalog import CATALOG
from vmis.services.fcopy import FcopyOp
from vmis.services.guest_half import GuestService
from vmis.services.vmsession import VmSessionOp

#: requests whose payload is json+raw (docs/services/fcopy.md, vmsession.md)
_JSON_RAW = {("fcopy", FcopyOp.WRITE), ("fcopy", FcopyOp.PUT), ("vmsession", VmSessionOp.INPUT)}
#: fcopy data operations: while frozen they wait for the thaw (docs/services/fcopy.md §6)
_PAUSING = {FcopyOp.WRITE, FcopyOp.PUT, FcopyOp.COMMIT, FcopyOp.READ, FcopyOp.CLOSE,
            FcopyOp.SEEK, FcopyOp.ABORT}
_COPY_DIRS = ("tmp", "var/tmp", "home", "root", "srv", "opt")
_CONTROL_OPS = [ControlOp.HELLO, ControlOp.SET_SERVICE, ControlOp.PING]
_CONTROL_KEYS = ["framework", "services", "host", "max_payload", "service", "enabled",
                 "settings"]
_SERVICE_KEYS = {
    "fcopy": ["path", "name", "size", "token", "handle", "offset", "length", "sha256",
              "create_path", "exact", "force", "resume", "mode", "atime_ns", "mtime_ns",
              "parents", "start", "inline_max", "keep"],
    "kvp": ["pool", "items", "key"],
    "vss": ["timeout", "id", "name"],
    "timesync": ["t1", "t2", "t3", "t4", "flag", "seq", "prev", "samples"],
    "shutdown": ["action", "force", "reason"],
    "vmsession": ["session", "argv", "env", "cwd", "timeout_ms", "window", "stdin",
                  "signal", "cancel", "bytes", "eof", "sessions", "host", "requested_by"],
}


class _Power:
    """A power adapter that counts: the harness must not end its own process."""

    def __init__(self) -> None:
        self.calls = 0

    def poweroff(self, reason: str) -> None:
        self.calls += 1

    def reboot(self, reason: str) -> None:
        self.calls += 1

    def blockers(self) -> list[str]:
        return []


class _Guest:
    def __init__(self) -> None:
        self.root = scratch_dir("guest")
        for directory in _COPY_DIRS:
            (self.root / directory).mkdir(parents=True, exist_ok=True)
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.power = _Power()
        adapters = {"clock": self._clock(), "power": self.power,
                    "freezer": LabFreezer(self.root)}
        config = AgentConfig(channel="unix:/run/vmis/channel.sock", adapters="fake",
                             health_interval=3600, freeze_timeout=30, hook_timeout=5)
        self.agent = Agent(config, self.root, available_services(), adapters)
        self.notes: list[tuple[int, int, bytes]] = []
        self.agent.ctx.notify = self._notify  # type: ignore[method-assign]
        self.failures = LoggedFailures("vmis", "asyncio")
        self.services: dict[str, GuestService] = self.agent.manager.services
        self.loop.run_until_complete(self._start_all())

    def _clock(self) -> VirtualClock:
        path = self.root / "var/lib/vmis/clock.json"
        path.unlink(missing_ok=True)
        return VirtualClock(path)

    def _notify(self, service: int, op: int, payload: bytes) -> None:
        if len(self.notes) < 100:
            self.notes.append((service, op, payload))

    async def _start_all(self) -> None:
        for service in self.services.values():
            await service.start()

    async def reset(self) -> None:
        """Back to the state before the input: nothing frozen or open, files gone."""
        for _ in range(3):  # background work the input woke (a beat) runs now
            await asyncio.sleep(0)
        vss = self.services["vss"]
        if vss.running:
            await vss.thaw(None, "guest")  # type: ignore[attr-defined]
        self.agent.ctx.set_frozen(False)
        fcopy = self.services["fcopy"]
        fcopy.close_all()  # type: ignore[attr-defined]
        await asyncio.sleep(0)
        fcopy.handles._next = 1  # type: ignore[attr-defined]
        shutdown = self.services["shutdown"]
        shutdown.pending = None  # type: ignore[attr-defined]
        await self._start_all()
        for directory in _COPY_DIRS:
            shutil.rmtree(self.root / directory, ignore_errors=True)
            (self.root / directory).mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.root / "var/lib/hyperv", ignore_errors=True)
        self.agent.ctx.adapters["clock"] = self._clock()  # type: ignore[index]
        self.notes.clear()




def _payload(fdp: atheris.FuzzedDataProvider, key: str, op: int) -> bytes:
    keys = _SERVICE_KEYS.get(key, _CONTROL_KEYS)
    if key == "fcopy" and op == FcopyOp.PUT and fdp.ConsumeBool():
        # a PUT whose size and digest match its data, so the write path is reached
        data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
        body: dict[str, Any] = json_object(fdp, keys=keys)
        body.update(size=len(data), sha256=hashlib.sha256(data).hexdigest(), token="t" * 32)
        head = json.dumps(body).encode()
        return len(head).to_bytes(4, "little") + head + data
    if (key, op) in _JSON_RAW:
        return json_raw_payload(fdp, keys)
    return json_payload(fdp, keys)


async def _call(coro: Any, what: str) -> None:
    try:
        async with asyncio.timeout(5):
            await coro
    except TimeoutError:
        raise AssertionError(f"{what} did not answer within 5 s") from None
    except VmisError:
        pass


def _one(guest: _Guest, fdp: atheris.FuzzedDataProvider, rid: int) -> None:
    if fdp.ConsumeProbability() < 0.15:
        op = fdp.PickValueInList(_CONTROL_OPS)
        payload = json_payload(fdp, _CONTROL_KEYS)
        if op == ControlOp.SET_SERVICE and fdp.ConsumeBool():
            # a well-formed SET_SERVICE whose settings are the input's (heartbeat's interval)
            payload = json.dumps({"service": fdp.PickValueInList([s.key for s in CATALOG]),
                                  "enabled": fdp.ConsumeBool(), "settings": json_object(
                                      fdp, keys=["interval_ms"])}).encode()
        request = RequestReceived(CONTROL, op, rid, payload)
        guest.loop.run_until_complete(_call(guest.agent._control(request), f"control {op}"))
        return
    spec = fdp.PickValueInList(list(CATALOG))
    service = guest.services.get(spec.key)
    if service is None or not service.running:
        return
    ops = sorted({*service.handlers, *service.notification_handlers})
    if not ops:
        return
    op = fdp.PickValueInList(ops)
    payload = _payload(fdp, spec.key, op)
    if op in service.handlers:
        if spec.key == "fcopy" and op in _PAUSING and guest.agent.ctx.frozen:
            return
        request = RequestReceived(int(spec.id), op, rid, payload)
        guest.loop.run_until_complete(
            _call(service.handlers[op](request), f"{spec.key} request {op}"))
    else:
        guest.loop.run_until_complete(_notification(service.notification_handlers[op], payload))


async def _notification(handler: Any, payload: bytes) -> None:
    # on the loop, as the channel calls it
    with contextlib.suppress(VmisError, ValueError, KeyError):
        handler(payload)


@functools.cache
def setup() -> _Guest:
    """Make the agent, once (its services are imported on the way)."""
    return _Guest()


def one_input(data: bytes) -> None:
    guest = setup()
    fdp = atheris.FuzzedDataProvider(data)
    try:
        for rid in range(1, fdp.ConsumeIntInRange(1, 4) + 1):
            _one(guest, fdp, rid)
    finally:
        guest.loop.run_until_complete(guest.reset())
    guest.failures.raise_first()
