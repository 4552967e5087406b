"""A checkpoint on the host: freeze -> snapshot step -> thaw.

:class:`CheckpointRun` drives one checkpoint (docs/services/vss.md §4):

- ``Production``: freeze the guest through VSS, take the snapshot, thaw.
  If VSS is disabled, absent or fails, take a ``Standard`` snapshot instead
  and say so (Hyper-V's semantics: a production checkpoint falls back to a
  standard one).
- ``ProductionOnly``: the same, but a VSS failure fails the checkpoint.
- ``Standard``: a crash-consistent snapshot; the guest is not involved.

The snapshot itself is a :class:`~vmis.services.hypervisor.SnapshotStep`: a
host command (:class:`CommandSnapshot`) or a hypervisor backend's own (QEMU's
QMP block snapshot, :class:`vmis.qemu.hypervisor.QmpSnapshot`). A step
gets a :class:`SnapshotRequest` and must finish within its ``timeout``,
which for a frozen guest ends safely before the guest's watchdog would thaw
it; so a snapshot that completes is consistent, and one that cannot finish
in time fails instead of silently becoming crash-consistent.

This module talks to the guest through a :class:`VssPeer` (the host half,
vmis.services.vss.host, adapts the VM's session), so it can be tested
against any peer.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from vmis.errors import (
    ChannelError,
    ProtocolError,
    RemoteServiceError,
    ServiceUnavailable,
    SnapshotError,
    VmisError,
)
from vmis.services.hypervisor import SnapshotRequest, SnapshotResult, SnapshotStep
from vmis.services.vss import MAX_FREEZE_TIMEOUT, SnapshotType, VssOp
from vmis.services.vss.hooks import run_process

__all__ = [
    "CheckpointPlan",
    "CheckpointReport",
    "CheckpointRun",
    "CommandSnapshot",
    "SnapshotType",
    "StepRow",
    "VssPeer",
]

#: seconds the host waits for a FREEZE answer (Hyper-V's FREEZE timeout,
#: docs/services/vss.md §4.3); the guest's hook timeouts end it far sooner
FREEZE_REQUEST_TIMEOUT = MAX_FREEZE_TIMEOUT
#: seconds the host waits for a THAW answer (the thaw hooks run before it)
THAW_REQUEST_TIMEOUT = 300.0
#: seconds to wait for a lost session to come back before giving up on THAW
RECONNECT_WAIT = 30.0


# Section: the snapshot step


class CommandSnapshot:
    """A snapshot step that runs a shell command on the host.

    The command runs with ``/bin/sh -c`` in its own process group, its output
    kept in memory, with the checkpoint in its environment
    (docs/services/vss.md §4.2): ``VMIS_VM_NAME``, ``VMIS_VM_ID``,
    ``VMIS_CHECKPOINT_NAME``, ``VMIS_CHECKPOINT_ID``, ``VMIS_CONSISTENCY``,
    ``VMIS_FROZEN_FILESYSTEMS`` (newline-separated), ``VMIS_SNAPSHOT_TIMEOUT``
    and ``VMIS_QMP``. A non-zero exit or the timeout (its process group is
    killed) fails the checkpoint.

    :param command: the shell command.
    :param cwd: its working directory (default: the manager's).
    """

    kind = "command"

    def __init__(self, command: str, cwd: Path | None = None) -> None:
        self.command = command
        self.cwd = cwd

    def describe(self) -> str:
        return f"command: {self.command}"

    async def take(self, request: SnapshotRequest) -> SnapshotResult:
        env = {
            "VMIS_VM_NAME": request.vm_name,
            "VMIS_VM_ID": request.vm_id,
            "VMIS_CHECKPOINT_NAME": request.checkpoint_name,
            "VMIS_CHECKPOINT_ID": request.checkpoint_id,
            "VMIS_CONSISTENCY": request.consistency,
            "VMIS_FROZEN_FILESYSTEMS": "\n".join(request.frozen),
            "VMIS_SNAPSHOT_TIMEOUT": f"{request.timeout:.3f}",
            "VMIS_QMP": request.qmp or "",
        }
        # A little beyond the caller's deadline: the caller's cancellation is
        # what ends a slow command; this only guards against a lost caller.
        done = await run_process(["/bin/sh", "-c", self.command], timeout=request.timeout + 1,
                                 cwd=self.cwd, env=env)
        last = done.output.strip().splitlines()[-1:] if done.output.strip() else []
        tail = f": {last[0][:200]}" if last else ""
        if done.result == "ok":
            return SnapshotResult("exit 0", done.output, {"exit": 0})
        if done.result == "failed":
            how = f"exit {done.exit}" if (done.exit or 0) >= 0 else f"signal {-(done.exit or 0)}"
            raise SnapshotError(f"the snapshot command failed ({how}){tail}", done.output)
        if done.result == "timeout":
            raise SnapshotError(f"the snapshot command ran longer than {request.timeout:.1f} s",
                                done.output)
        raise SnapshotError(f"the snapshot command could not be started{tail}", done.output)


# Section: the guest, as the runner sees it


class VssPeer(Protocol):
    """The guest's VSS service, reached through the host's session."""

    def check(self) -> None:
        """Check that VSS can take requests now.

        :raise ServiceUnavailable: When it cannot (disabled, no contact, stopped ...).
        """
        ...

    async def request(self, op: VssOp, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one VSS request and return the decoded answer.

        :raise ServiceUnavailable: As :meth:`check`.
        :raise RemoteServiceError: When the guest answers with an error.
        :raise ChannelError: When the session fails or the answer does not come in time.
        """
        ...

    async def wait_connected(self, timeout: float) -> bool:
        """Wait for a running session; False on timeout."""
        ...


# Section: the report


@dataclass(frozen=True, slots=True)
class StepRow:
    """One line of a checkpoint's timeline."""

    #: ``freeze hook``, ``freeze``, ``freezefail hook``, ``snapshot``, ``thaw``, ``thaw hook``
    step: str
    #: what it acted on: a hook name, mount points, the snapshot step's kind
    target: str
    #: ``ok``, ``failed``, ``timeout``, ``error``, ``skipped``
    result: str
    #: seconds
    duration: float
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"Step": self.step, "Target": self.target, "Result": self.result,
                "Duration": round(self.duration, 3), "Detail": self.detail}


@dataclass
class CheckpointPlan:
    """What to checkpoint, and how."""

    vm_name: str
    vm_id: str
    checkpoint_id: str
    name: str
    snapshot_type: SnapshotType
    #: seconds the guest may stay frozen (None: the guest's own limit)
    freeze_timeout: float | None = None
    #: seconds a crash-consistent snapshot step may take
    snapshot_timeout: float = 600.0
    qmp: str | None = None


@dataclass
class CheckpointReport:
    """Everything a checkpoint did, for the CLI, the API and the history."""

    plan: CheckpointPlan
    #: the snapshot step's kind
    step_kind: str
    #: wall-clock start
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: ``Running``, ``Completed`` or ``Failed``
    status: str = "Running"
    #: ``Production`` or ``Standard`` once a snapshot was taken
    taken: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    #: the guest's VSS state after the checkpoint, when it was asked
    guest_state: str | None = None
    #: seconds the guest was frozen, as the guest measured it
    frozen_seconds: float | None = None
    steps: list[StepRow] = field(default_factory=list)
    snapshot: dict[str, Any] | None = None
    duration: float = 0.0

    @property
    def consistency(self) -> str | None:
        """``application``, ``crash``, or None when no snapshot was taken."""
        return {"Production": "application", "Standard": "crash"}.get(self.taken or "")

    def fail(self, error: str) -> None:
        self.status = "Failed"
        self.error = error

    def to_json(self) -> dict[str, Any]:
        """The API's answer (docs/services/vss.md §5)."""
        p = self.plan
        return {
            "VMName": p.vm_name, "VMId": p.vm_id, "Id": p.checkpoint_id, "Name": p.name,
            "SnapshotType": p.snapshot_type.value, "Taken": self.taken,
            "Consistency": self.consistency, "Status": self.status, "Error": self.error,
            "Warnings": self.warnings, "FrozenFilesystems": self.frozen,
            "FrozenSeconds": self.frozen_seconds, "GuestState": self.guest_state,
            "SnapshotStep": self.step_kind, "Snapshot": self.snapshot,
            "Steps": [s.to_json() for s in self.steps],
            "CreationTime": self.created.isoformat(), "DurationSeconds": round(self.duration, 3),
        }


def _number(value: object) -> float:
    """A number of the guest's answer (ms, s), or 0 when it sent something else."""
    if isinstance(value, int | float) and not isinstance(value, bool) and \
            math.isfinite(value):
        return float(value)
    return 0.0


def _list(value: object) -> list[Any]:
    """A list of the guest's answer, or an empty one when it sent something else."""
    return value if isinstance(value, list) else []


def _hook_rows(cycle: Mapping[str, Any] | None, phases: tuple[str, ...]) -> list[StepRow]:
    rows = []
    for hook in _list((cycle or {}).get("hooks")):
        if not isinstance(hook, dict) or hook.get("phase") not in phases:
            continue
        detail = ""
        if hook.get("result") != "ok":
            exit_code = hook.get("exit")
            detail = f"exit {exit_code}" if exit_code is not None else str(hook.get("result"))
            lines = str(hook.get("output") or "").strip().splitlines()
            if lines:
                detail += f": {lines[-1][:200]}"
        rows.append(StepRow(f"{hook.get('phase')} hook", str(hook.get("name")),
                            str(hook.get("result")), _number(hook.get("duration_ms")) / 1000,
                            detail))
    return rows


def _margin(window: float) -> float:
    # The host learns of the freeze a little after it began; finish the
    # snapshot this much before the guest's watchdog could thaw.
    return max(0.5, 0.1 * window)


# Section: the run


class CheckpointRun:
    """One checkpoint of one VM.

    :param plan: what to do.
    :param peer: the guest's VSS service (unused for Standard).
    :param step: takes the snapshot.
    """

    def __init__(self, plan: CheckpointPlan, peer: VssPeer, step: SnapshotStep) -> None:
        self.plan = plan
        self.peer = peer
        self.step = step
        self.report = CheckpointReport(plan, step.kind)
        #: True while the guest may be frozen by this run
        self.freezing = False

    async def run(self) -> CheckpointReport:
        """Freeze, snapshot, thaw; never raises for a failure (see the report).

        :return: the report, ``Completed`` or ``Failed``.
        """
        start = time.monotonic()
        try:
            await self._run()
        except asyncio.CancelledError:
            # The manager is stopping: never leave the guest frozen for it.
            if self.freezing:
                await asyncio.shield(self._thaw())
            self.report.fail("the checkpoint was cancelled (the host manager is stopping)")
            raise
        finally:
            self.report.duration = time.monotonic() - start
        return self.report

    async def _run(self) -> None:
        plan, report = self.plan, self.report
        deadline: float | None = None
        if plan.snapshot_type is not SnapshotType.STANDARD:
            deadline = await self._freeze()
            if deadline is None and plan.snapshot_type is SnapshotType.PRODUCTION_ONLY:
                return
        frozen = deadline is not None
        timeout = deadline - time.monotonic() if deadline is not None else plan.snapshot_timeout
        request = SnapshotRequest(
            plan.vm_name, plan.vm_id, plan.checkpoint_id, plan.name,
            "application" if frozen else "crash", tuple(report.frozen), max(timeout, 0.0),
            plan.qmp,
        )
        error = await self._snapshot(request, frozen)
        if frozen:
            await self._thaw()
        if error is not None:
            report.fail(f"snapshot failed: {error}")
            return
        report.taken = "Production" if frozen else "Standard"
        report.status = "Completed"

    async def _freeze(self) -> float | None:
        """Freeze the guest; return the monotonic time by which the snapshot must end.

        :return: None when VSS failed (the report says so and, for
            ProductionOnly, has failed).
        """
        plan, report = self.plan, self.report
        body: dict[str, Any] = {"id": plan.checkpoint_id, "name": plan.name}
        if plan.freeze_timeout is not None:
            body["timeout"] = plan.freeze_timeout
        try:
            self.peer.check()
            self.freezing = True
            answer = await self.peer.request(VssOp.FREEZE, body, FREEZE_REQUEST_TIMEOUT)
        except (ServiceUnavailable, RemoteServiceError, ChannelError, ProtocolError) as exc:
            await self._freeze_failed(exc)
            return None
        received = time.monotonic()
        # The guest is frozen now: nothing it answers may keep the run from its THAW.
        report.frozen = [str(m) for m in _list(answer.get("frozen"))]
        report.steps += _hook_rows(answer, ("freeze",))
        report.steps.append(StepRow("freeze", ", ".join(report.frozen) or "(none)", "ok",
                                    _number(answer.get("freeze_ms")) / 1000))
        window = _number(answer.get("thaw_in")) or _number(answer.get("timeout"))
        return received + window - _margin(window)

    async def _freeze_failed(self, exc: VmisError) -> None:
        plan, report = self.plan, self.report
        reason = str(exc).removeprefix(f"{plan.vm_name}: ")
        if isinstance(exc, RemoteServiceError | ProtocolError):
            # The guest answered: nothing is frozen, and its last cycle says why.
            self.freezing = False
            cycle = await self._last_cycle()
            report.steps += _hook_rows(cycle, ("freeze", "freezefail"))
            report.steps.append(StepRow("freeze", "", "failed", 0.0, reason))
        elif isinstance(exc, ChannelError):
            # No answer: the guest may have frozen after all. Thaw to be sure.
            report.steps.append(StepRow("freeze", "", "error", 0.0, reason))
            await self._thaw()
        else:
            self.freezing = False
            report.steps.append(StepRow("freeze", "", "skipped", 0.0, reason))
        if plan.snapshot_type is SnapshotType.PRODUCTION_ONLY:
            report.fail(f"cannot take a production checkpoint of {plan.vm_name}: {reason}; "
                        "-SnapshotType ProductionOnly does not fall back to a standard "
                        "checkpoint")
        else:
            report.warnings.append(
                f"a production checkpoint of {plan.vm_name} could not be taken: {reason}; "
                "a standard (crash-consistent) checkpoint was taken instead"
            )

    async def _last_cycle(self) -> dict[str, Any] | None:
        try:
            status = await self.peer.request(VssOp.STATUS, {}, 10.0)
        except VmisError:
            return None
        cycle = status.get("cycle")
        if isinstance(cycle, dict) and cycle.get("id") == self.plan.checkpoint_id:
            return cycle
        return None

    async def _snapshot(self, request: SnapshotRequest, frozen: bool) -> str | None:
        """Run the snapshot step; return an error text, or None on success."""
        report = self.report
        start = time.monotonic()
        if request.timeout <= 0:
            error = "no time was left in the guest's freeze window"
            report.steps.append(StepRow("snapshot", self.step.kind, "skipped", 0.0, error))
            return error
        try:
            async with asyncio.timeout(request.timeout):
                result = await self.step.take(request)
        except TimeoutError:
            window = " (the guest's freeze window)" if frozen else ""
            error = f"the snapshot step did not finish within {request.timeout:.1f} s{window}"
            report.steps.append(StepRow("snapshot", self.step.kind, "timeout",
                                        time.monotonic() - start, error))
            return error
        except SnapshotError as exc:
            report.snapshot = {"Step": self.step.kind, "Detail": str(exc), "Output": exc.output}
            report.steps.append(StepRow("snapshot", self.step.kind, "failed",
                                        time.monotonic() - start, str(exc)))
            return str(exc)
        report.snapshot = {"Step": self.step.kind, "Detail": result.detail,
                           "Output": result.output, "Data": dict(result.data)}
        report.steps.append(StepRow("snapshot", self.step.kind, "ok", time.monotonic() - start,
                                    result.detail))
        return None

    async def _thaw(self) -> None:
        """Thaw the guest, waiting once for a lost session to come back."""
        report = self.report
        body = {"id": self.plan.checkpoint_id}
        answer: dict[str, Any] | None = None
        for attempt in (1, 2):
            try:
                answer = await self.peer.request(VssOp.THAW, body, THAW_REQUEST_TIMEOUT)
                break
            except (ServiceUnavailable, ChannelError) as exc:
                if attempt == 1 and await self.peer.wait_connected(RECONNECT_WAIT):
                    continue
                report.steps.append(StepRow("thaw", "", "error", 0.0, str(exc)))
                report.warnings.append(f"could not reach the guest to thaw it ({exc}); it "
                                       "thaws by itself when its freeze timeout passes")
                return
            except (RemoteServiceError, ProtocolError) as exc:
                report.steps.append(StepRow("thaw", "", "failed", 0.0, str(exc)))
                report.warnings.append(f"the guest could not thaw: {exc}")
                return
        self.freezing = False
        assert answer is not None
        cycle = answer.get("cycle") if isinstance(answer.get("cycle"), dict) else None
        result = str(answer.get("result"))
        report.guest_state = str(answer.get("state"))
        if cycle is not None and cycle.get("id") == self.plan.checkpoint_id:
            report.frozen_seconds = cycle.get("frozen_for")
            thawed = ", ".join(str(m) for m in _list(cycle.get("thawed")))
            row_result = "ok" if result == "thawed" else result
            report.steps.append(StepRow("thaw", thawed or "(none)", row_result,
                                        _number(cycle.get("thaw_ms")) / 1000))
            hooks = _hook_rows(cycle, ("thaw",))
            report.steps += hooks
            report.warnings += [f"thaw hook {h.target}: {h.detail}" for h in hooks
                                if h.result != "ok"]
        else:
            report.steps.append(StepRow("thaw", "", result, 0.0))
        if result == "timed-out":
            report.warnings.append("the guest had already thawed by itself: its freeze timeout "
                                   "passed before THAW arrived")
