"""The host halves: every guest notification handler (``VmPart.handlers()``), the
guest's SERVICE_STATE, and the answers a host half reads (VSS STATUS/THAW after
a reconnect, VM Session's START, a checkpoint's FREEZE, STATUS and THAW), on a
real host manager.

The manager (SQLite store in a scratch directory) has one VM whose guest is a link
of the link seam (vmis.services.link) that answers each request with what
the input says: a payload, or an error code. The notification handlers are
those the session hands to a link (``session.handlers``); SERVICE_STATE goes
through the vmis agent link's own parser. Between inputs the answers are
forgotten and open commands ended.

May raise: a notification handler nothing ("logs (never raises) a bad
payload", vmis.services.link); ``VmPart.on_running`` VmisError or OSError
(the session logs them); ``RemoteCommand.start`` ServiceUnavailable and
RemoteServiceError, as documented, and ProtocolError for an answer that is
not json; ``CheckpointRun.run`` nothing ("never raises for a failure"). A
task of the manager that fails (logged with a traceback) is a crash too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Mapping
from typing import Any

import atheris

from support.fuzz.failures import LoggedFailures
from support.fuzz.scratch import scratch_dir
from support.fuzz.values import json_object, json_payload, json_raw_payload, text
from vmis.errors import (
    ChannelClosed,
    ProtocolError,
    RemoteServiceError,
    ServiceUnavailable,
    VmisError,
)
from vmis.host.manager import HostManager
from vmis.host.session import VmSession
from vmis.host.store import Store
from vmis.links.vmis_agent import VmisAgentLink
from vmis.protocol import encode_json
from vmis.services.catalog import CATALOG
from vmis.services.heartbeat import HeartbeatOp
from vmis.services.host_half import VmRecord
from vmis.services.hypervisor import SnapshotRequest, SnapshotResult
from vmis.services.link import LinkEvents, LinkHello, ServiceOffer
from vmis.services.vmsession import VmSessionOp
from vmis.services.vmsession.host import RemoteCommand, VmSessionHost
from vmis.services.vss import VssOp
from vmis.services.vss.checkpoint import CheckpointPlan, CheckpointRun, SnapshotType
from vmis.services.vss.host import SessionPeer, VssHost

_JSON_RAW = {(int(CATALOG.by_key("vmsession").id), VmSessionOp.OUTPUT)}
_RAW = {(int(CATALOG.by_key("heartbeat").id), HeartbeatOp.BEAT)}
#: the members each guest payload has (notifications and the answers read here)
_KEYS = ["health", "failed", "pool", "items", "part", "last", "action", "error", "event",
         "delta_ns", "session", "stream", "bytes", "code", "signal", "reason", "duration_ms",
         "sessions", "state", "cycle", "id", "name", "result", "keepalive_ms", "input_window",
         "pid", "user", "cwd", "program", "frozen", "thawed", "freeze_ms", "thaw_ms", "thaw_in",
         "timeout", "hooks", "frozen_for", "phase", "duration_ms", "exit", "output"]
_CODES = ["failed", "not-found", "busy", "denied", "bad-request", "service-stopped",
          "service-disabled", "unknown-op", "too-large", "exists"]


class FuzzLink:
    """A guest that answers what the input says (the link seam, no protocol)."""

    kind = "fuzz"
    max_payload = peer_max_payload = 1 << 20

    def __init__(self, events: LinkEvents) -> None:
        self.events = events
        self.hello = LinkHello({"version": "fuzz"}, {
            s.key: ServiceOffer((1, 0), "running", "automatic") for s in CATALOG})
        #: (service, op) -> answers still to give (bytes, or an error code)
        self.answers: dict[tuple[int, int], list[bytes | str]] = {}
        self.sent = 0
        self._closed = asyncio.Event()

    @property
    def running(self) -> bool:
        return not self._closed.is_set()

    @property
    def lost_reason(self) -> str:
        return "closed" if self._closed.is_set() else ""

    async def request(self, service: int, op: int, payload: Any = b"",
                      timeout: float | None = 30.0, into: Any = None) -> bytes:
        if not self.running:
            raise ChannelClosed("closed")
        queue = self.answers.get((service, op))
        answer = queue.pop(0) if queue else "failed"
        if isinstance(answer, str):
            raise RemoteServiceError(answer, "refused by the fuzz guest")
        return answer

    def notify(self, service: int, op: int, payload: Any = b"") -> None:
        self.sent += 1

    async def set_service(self, key: str, enabled: bool, settings: Mapping[str, Any],
                          timeout: float) -> dict[str, Any]:
        offer = self.hello.services[key]
        offer.state = "running" if enabled else "stopped"
        return {"state": offer.state, "startup": offer.startup}

    async def ping(self, timeout: float) -> None:
        pass

    async def install_agent(self, bundle: str, sha256: str, version: str,
                            timeout: float) -> dict[str, Any]:
        raise RemoteServiceError("unknown-op", "not here")

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self.events.lost("closed")

    async def wait_closed(self) -> None:
        await self._closed.wait()


class FuzzKind:
    name = "fuzz"

    def __init__(self) -> None:
        self.link: FuzzLink | None = None

    async def open(self, vm: VmRecord, events: LinkEvents) -> FuzzLink:
        self.link = FuzzLink(events)
        return self.link


class _Host:
    def __init__(self) -> None:
        self.dir = scratch_dir("host")
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.failures = LoggedFailures("vmis", "asyncio")
        self.kind = FuzzKind()
        self.manager = HostManager(Store(f"sqlite:///{self.dir / 'host.db'}"),
                                   guest_kinds={"vmis": self.kind})
        self.loop.run_until_complete(self._start())
        assert self.kind.link is not None
        self.link: FuzzLink = self.kind.link
        # SERVICE_STATE is parsed by the vmis agent link; its offers are the session's
        self.agent_link = VmisAgentLink(self.session, logging.getLogger("vmis.fuzz"))
        self.agent_link.hello = self.link.hello

    async def _start(self) -> None:
        await self.manager.start()
        self.manager.add_vm("FuzzVM", "unix:/nonexistent", heartbeat_interval_ms=1000)
        self.session: VmSession = self.manager.session("FuzzVM")
        assert await self.session.wait_connected(10)

    async def reset(self) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        self.link.answers.clear()
        for cmd in list(self.session.part(VmSessionHost).open.values()):
            cmd._fail(ChannelClosed("input done"))
        for offer in self.link.hello.services.values():
            offer.state, offer.startup = "running", "automatic"


@functools.cache
def setup() -> _Host:
    """Start the manager, once (the host halves are imported on the way)."""
    return _Host()


#: the requests the actions below send: their answers are what matters
_ASKED = [(int(CATALOG.by_key("vss").id), op) for op in (VssOp.FREEZE, VssOp.THAW, VssOp.STATUS)]
_ASKED += [(int(CATALOG.by_key("vmsession").id), int(VmSessionOp.START))]


def _answers(host: _Host, fdp: atheris.FuzzedDataProvider) -> None:
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        if fdp.ConsumeBool():
            service, op = fdp.PickValueInList(_ASKED)
        else:
            service, op = int(fdp.PickValueInList(list(CATALOG)).id), fdp.ConsumeIntInRange(1, 8)
        answer: bytes | str = json_payload(fdp, _KEYS) if fdp.ConsumeProbability() < 0.8 else \
            str(fdp.PickValueInList(_CODES))
        host.link.answers.setdefault((service, op), []).append(answer)


async def _notification(host: _Host, fdp: atheris.FuzzedDataProvider) -> None:
    handlers = host.session.handlers
    key = fdp.PickValueInList(sorted(handlers))
    if key in _RAW:
        payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 12))
    elif key in _JSON_RAW:
        payload = json_raw_payload(fdp, ["session", "stream"])
    else:
        payload = json_payload(fdp, _KEYS)
    handlers[key](payload)


async def _service_state(host: _Host, fdp: atheris.FuzzedDataProvider) -> None:
    body = json_object(fdp, keys=["service", "state", "startup"])
    if fdp.ConsumeBool():
        body["service"] = fdp.PickValueInList([s.key for s in CATALOG])
    host.agent_link._on_service_state(encode_json(body))


async def _vss_reconnect(host: _Host, fdp: atheris.FuzzedDataProvider) -> None:
    vss = host.session.part(VssHost)
    with contextlib.suppress(VmisError, OSError):
        await vss.on_running()


async def _command(host: _Host, fdp: atheris.FuzzedDataProvider) -> None:
    try:
        cmd = await RemoteCommand.start(host.session, [text(fdp) or "true"],
                                        stdin=fdp.ConsumeBool())
    except (ServiceUnavailable, RemoteServiceError, ProtocolError):
        return
    assert cmd.sid in host.session.part(VmSessionHost).open


class _Snapshot:
    """A snapshot step that takes no time and always works (the step is not fuzzed)."""

    kind = "fuzz"

    def describe(self) -> str:
        return "nothing"

    async def take(self, request: SnapshotRequest) -> SnapshotResult:
        return SnapshotResult("ok")


async def _checkpoint(host: _Host, fdp: atheris.FuzzedDataProvider) -> None:
    # the guest's FREEZE, STATUS and THAW answers are what the input gave (see _answers)
    vm = host.session.vm
    plan = CheckpointPlan(vm.name, vm.id, "cp-1", "fuzz", fdp.PickValueInList(list(SnapshotType)),
                          fdp.PickValueInList([None, 1.0, 60.0]))
    report = await CheckpointRun(plan, SessionPeer(host.session), _Snapshot()).run()
    assert report.status in ("Completed", "Failed"), report.status
    json.dumps(report.to_json())


_ACTIONS = [_notification, _notification, _notification, _service_state, _vss_reconnect,
            _command, _checkpoint]


async def _run(host: _Host, fdp: atheris.FuzzedDataProvider) -> None:
    _answers(host, fdp)
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        await fdp.PickValueInList(_ACTIONS)(host, fdp)


def one_input(data: bytes) -> None:
    host = setup()
    fdp = atheris.FuzzedDataProvider(data)
    try:
        host.loop.run_until_complete(_run(host, fdp))
    finally:
        host.loop.run_until_complete(host.reset())
    host.failures.raise_first()
