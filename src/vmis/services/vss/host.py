"""Host half of VSS: snapshot settings per VM, checkpoint history, the runs.

What it keeps (docs/services/vss.md §4-5):

- the table ``vss_settings``: each VM's snapshot command and the time a
  crash-consistent snapshot may take;
- the table ``vss_checkpoints``: every checkpoint with its report. A row
  still ``Running`` when a manager starts belonged to a manager that died
  mid-checkpoint; it is marked ``Interrupted``;
- :class:`VssHost` (``manager.service(VssHost)``): runs
  :class:`~vmis.services.vss.checkpoint.CheckpointRun`, one at a time per VM;
- after every (re)connect, a guest still frozen by an earlier host session
  that this manager no longer drives is thawed at once, rather than left to
  its watchdog.

A VM's snapshot step is chosen by :meth:`VssHost.pick_step`: a
``-SnapshotCommand`` given to the checkpoint wins, then the VM's stored
snapshot command, then its hypervisor backend's own step (QEMU's QMP block
snapshot: vmis.services.hypervisor).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from vmis.errors import ServiceUnavailable, StateError, VmisError
from vmis.protocol import decode_json, encode_json
from vmis.services.catalog import by_key
from vmis.services.host_half import (
    HostContext,
    HostService,
    VmContext,
    VmPart,
    VmRecord,
    metadata,
)
from vmis.services.hypervisor import SnapshotStep
from vmis.services.vss import GuestVssState, VssOp
from vmis.services.vss.checkpoint import (
    THAW_REQUEST_TIMEOUT,
    CheckpointPlan,
    CheckpointReport,
    CheckpointRun,
    CommandSnapshot,
    SnapshotType,
)

__all__ = ["SERVICE", "SessionPeer", "VmVss", "VssHost", "VssSettings"]

SPEC = by_key("vss")
#: seconds a crash-consistent snapshot step may take unless set per VM
DEFAULT_SNAPSHOT_TIMEOUT = 600.0

vss_settings = sa.Table(
    "vss_settings",
    metadata,
    sa.Column("vm_id", sa.String(36), sa.ForeignKey("vms.id", ondelete="CASCADE"),
              primary_key=True),
    #: shell command run on the host to take the snapshot (None: no command)
    sa.Column("snapshot_command", sa.Text),
    sa.Column("snapshot_timeout", sa.Float, nullable=False,
              server_default=str(DEFAULT_SNAPSHOT_TIMEOUT)),
)

vss_checkpoints = sa.Table(
    "vss_checkpoints",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("vm_id", sa.String(36), sa.ForeignKey("vms.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    #: what was asked: Production, ProductionOnly, Standard
    sa.Column("snapshot_type", sa.String(16), nullable=False),
    #: what was taken: Production, Standard, or None
    sa.Column("taken", sa.String(16)),
    #: Running, Completed, Failed, Interrupted
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("duration", sa.Float),
    #: the whole report, JSON
    sa.Column("report", sa.Text),
)

@dataclass(frozen=True, slots=True)
class VssSettings:
    """A VM's snapshot settings."""

    snapshot_command: str | None = None
    snapshot_timeout: float = DEFAULT_SNAPSHOT_TIMEOUT


class SessionPeer:
    """The guest's VSS service through the VM's session (a ``VssPeer``)."""

    def __init__(self, session: VmContext) -> None:
        self.session = session

    def check(self) -> None:
        self.session.require(SPEC)

    async def request(self, op: VssOp, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return decode_json(await self.session.request(SPEC, op, encode_json(body),
                                                      timeout=timeout))

    async def wait_connected(self, timeout: float) -> bool:
        return await self.session.wait_connected(timeout)


def _default_name(vm_name: str) -> str:
    # Hyper-V names checkpoints "DemoVM - (11/22/2026 - 10:15:30 AM)"
    return f"{vm_name} - ({datetime.now().astimezone():%m/%d/%Y - %I:%M:%S %p})"


class VmVss(VmPart):
    """One VM's VSS on the host: a guest left frozen is thawed when it comes back."""

    def __init__(self, vm: VmContext, vss: VssHost) -> None:
        super().__init__(vm)
        self.vss = vss

    async def on_running(self) -> None:
        """After a (re)connect: thaw a guest an earlier host session left frozen."""
        session = self.vm
        if session.vm.id in self.vss.running:
            return  # the run in progress sends its own THAW
        try:
            session.require(SPEC)
        except ServiceUnavailable:
            return
        status = await SessionPeer(session).request(VssOp.STATUS, {}, 10.0)
        if status.get("state") != GuestVssState.FROZEN:
            return
        cycle = status.get("cycle") or {}
        session.log.warning("VSS: the guest is still frozen for checkpoint %r of an earlier host "
                            "session; thawing it now", cycle.get("name") or cycle.get("id"))
        await SessionPeer(session).request(VssOp.THAW, {"id": cycle.get("id")},
                                           THAW_REQUEST_TIMEOUT)


class VssHost(HostService[VmVss]):
    """VSS on the host: Checkpoint-VM, Get-VMCheckpoint, Get-VMVss and the snapshot settings."""

    spec = SPEC
    tables = (vss_settings, vss_checkpoints)
    needs = frozenset({VssOp.FREEZE, VssOp.THAW, VssOp.STATUS})

    def __init__(self, host: HostContext) -> None:
        super().__init__(host)
        #: VM id -> the checkpoint running for it
        self.running: dict[str, CheckpointRun] = {}

    def new_part(self, vm: VmContext) -> VmVss:
        return VmVss(vm, self)

    async def start(self) -> None:
        if count := self.mark_interrupted():
            self.log.warning("%d checkpoint(s) were interrupted when the last host manager "
                             "stopped", count)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.host.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StateError(f"database error: {exc}") from exc

    # Section: settings

    def settings(self, vm: VmRecord) -> VssSettings:
        """A VM's snapshot settings (defaults when none were set)."""
        with self._tx() as conn:
            row = conn.execute(sa.select(vss_settings).where(vss_settings.c.vm_id == vm.id)) \
                .mappings().first()
        if row is None:
            return VssSettings()
        return VssSettings(row["snapshot_command"], float(row["snapshot_timeout"]))

    def set_settings(self, vm_name: str, *, command: str | None = None, clear: bool = False,
                     timeout: float | None = None) -> dict[str, Any]:
        """``vm set-snapshot-command``: store a VM's snapshot command and timeout.

        :raise NotFoundError: For an unknown VM.
        :raise StateError: For an empty command or a non-positive timeout.
        """
        vm = self.host.session(vm_name).vm
        old = self.settings(vm)
        if command is not None and not command.strip():
            raise StateError("the snapshot command is empty; use -Clear to remove it")
        if timeout is not None and not timeout > 0:
            raise StateError("the snapshot timeout must be a positive number of seconds")
        new = VssSettings(None if clear else (command or old.snapshot_command),
                          timeout or old.snapshot_timeout)
        values = {"snapshot_command": new.snapshot_command,
                  "snapshot_timeout": new.snapshot_timeout}
        with self._tx() as conn:
            updated = conn.execute(vss_settings.update().where(vss_settings.c.vm_id == vm.id)
                                   .values(**values))
            if updated.rowcount == 0:
                conn.execute(vss_settings.insert().values(vm_id=vm.id, **values))
        return self._settings_json(vm, new)

    def _settings_json(self, vm: VmRecord, settings: VssSettings) -> dict[str, Any]:
        step = self.pick_step(vm, settings)
        return {"VMName": vm.name, "SnapshotCommand": settings.snapshot_command,
                "SnapshotTimeout": settings.snapshot_timeout,
                "SnapshotStep": step.describe() if step is not None else None}

    def pick_step(self, vm: VmRecord, settings: VssSettings,
                  command: str | None = None) -> SnapshotStep | None:
        """The snapshot step for *vm*: *command* if given, else the VM's stored command,
        else its hypervisor backend's step."""
        if command or settings.snapshot_command:
            return CommandSnapshot(command or settings.snapshot_command or "")
        hypervisor = self.host.hypervisor_for(vm)
        return hypervisor.snapshot_step(vm) if hypervisor is not None else None

    # Section: checkpoints

    async def checkpoint(self, vm_name: str, *, name: str | None = None,
                         snapshot_type: SnapshotType = SnapshotType.PRODUCTION,
                         command: str | None = None,
                         freeze_timeout: float | None = None) -> CheckpointReport:
        """``Checkpoint-VM``: freeze, snapshot, thaw (docs/services/vss.md §4).

        :raise NotFoundError: For an unknown VM.
        :raise StateError: When the VM has no snapshot step or a checkpoint of
            it is running already.
        :return: the report; a failed checkpoint is a report with status
            ``Failed``, not an exception.
        """
        session = self.host.session(vm_name)
        vm = session.vm
        if (other := self.running.get(vm.id)) is not None:
            raise StateError(f"a checkpoint of {vm.name} is running already "
                             f"({other.plan.name!r}); wait for it to end")
        settings = self.settings(vm)
        step = self.pick_step(vm, settings, command)
        if step is None:
            raise StateError(
                f"{vm.name} has no snapshot step: set one with 'vmis vm set-snapshot-command "
                f"-Name {vm.name} -Command CMD', or pass -SnapshotCommand CMD"
            )
        plan = CheckpointPlan(
            vm.name, vm.id, str(uuid.uuid4()), name or _default_name(vm.name), snapshot_type,
            freeze_timeout, settings.snapshot_timeout, vm.qmp,
        )
        run = CheckpointRun(plan, SessionPeer(session), step)
        self._record(run.report, insert=True)
        self.running[vm.id] = run
        session.log.info("checkpoint %r (%s) starting", plan.name, snapshot_type.value)
        session.publish("checkpoint", Name=plan.name, Status="Running",
                        SnapshotType=snapshot_type.value)
        try:
            report = await run.run()
        finally:
            del self.running[vm.id]
            self._record(run.report)
        for warning in report.warnings:
            session.log.warning("checkpoint %r: %s", plan.name, warning)
        if report.status == "Completed":
            session.log.info("checkpoint %r completed: %s in %.2f s", plan.name, report.taken,
                             report.duration)
        else:
            session.log.error("checkpoint %r failed: %s", plan.name, report.error)
        session.publish("checkpoint", Name=plan.name, Status=report.status, Taken=report.taken,
                        Error=report.error, DurationSeconds=report.duration,
                        FrozenSeconds=report.frozen_seconds)
        return report

    def _record(self, report: CheckpointReport, insert: bool = False) -> None:
        p = report.plan
        values = {"taken": report.taken, "status": report.status, "error": report.error,
                  "duration": report.duration, "report": json.dumps(report.to_json())}
        try:
            with self._tx() as conn:
                if insert:
                    conn.execute(vss_checkpoints.insert().values(
                        id=p.checkpoint_id, vm_id=p.vm_id, name=p.name,
                        snapshot_type=p.snapshot_type.value, created=report.created, **values))
                else:
                    conn.execute(vss_checkpoints.update()
                                 .where(vss_checkpoints.c.id == p.checkpoint_id).values(**values))
        except StateError:
            if insert:
                raise
            # The checkpoint itself is done; losing its history line is not worth failing it.
            self.log.exception("cannot record checkpoint %s", p.checkpoint_id)

    def history(self, vm_patterns: Sequence[str]) -> list[dict[str, Any]]:
        """``Get-VMCheckpoint``: the checkpoints of matching VMs, oldest first."""
        sessions = {s.vm.id: s for s in self.host.match(vm_patterns)}
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(vss_checkpoints).where(vss_checkpoints.c.vm_id.in_(list(sessions)))
                .order_by(vss_checkpoints.c.created)
            ).mappings().all()
        result = []
        for r in rows:
            report = json.loads(r["report"]) if r["report"] else {}
            created = r["created"]
            result.append({
                "VMName": sessions[r["vm_id"]].vm.name, "Id": r["id"], "Name": r["name"],
                "SnapshotType": r["snapshot_type"], "Taken": r["taken"], "Status": r["status"],
                "Error": r["error"], "Warnings": report.get("Warnings", []),
                "CreationTime": created.isoformat() if created else None,
                "DurationSeconds": r["duration"], "Report": report,
            })
        return result

    def mark_interrupted(self) -> int:
        """Checkpoints left ``Running`` by a manager that died: ``Interrupted``."""
        with self._tx() as conn:
            result = conn.execute(
                vss_checkpoints.update().where(vss_checkpoints.c.status == "Running").values(
                    status="Interrupted",
                    error="the host manager stopped during the checkpoint; the guest thawed "
                          "by itself (freeze timeout) or when the host reconnected")
            )
        return int(result.rowcount or 0)

    # Section: the guest's state

    async def status(self, vm_name: str) -> dict[str, Any]:
        """``Get-VMVss``: the VM's snapshot settings and the guest's VSS state, now."""
        session = self.host.session(vm_name)
        vm = session.vm
        answer = self._settings_json(vm, self.settings(vm))
        run = self.running.get(vm.id)
        answer["CheckpointRunning"] = run.plan.name if run is not None else None
        answer["Guest"] = None
        answer["GuestError"] = None
        try:
            answer["Guest"] = await SessionPeer(session).request(VssOp.STATUS, {}, 10.0)
        except VmisError as exc:
            answer["GuestError"] = str(exc)
        return answer


SERVICE = VssHost
