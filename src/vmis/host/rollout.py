"""A staged agent rollout: Update-VMIntegrationServices -BatchPercent N -HealthWaitSec S.

The VMs (this host's and, with ``-ComputerName``, other hosts', updated by
their owners through requests, docs/fleet.md) go in batches of at most N %
of them, one batch after the other (docs/updates.md):

1. note each VM's health: its Heartbeat and every service's status;
2. update the batch (vmis.host.update: the per-VM update, with the guest's own
   rollback when the new agent does not come up);
3. watch it for S seconds; the batch is **healthy** when at the end every VM
   updated (or was current), its Heartbeat is OK and no service's status is
   worse than before;
4. an unhealthy batch stops the rollout: its updated VMs are put back on the
   version they had (the same per-VM update, with that version's bundle:
   this host's own agent, or the owner's for another host's VM), and the
   VMs of later batches are left as they are (``skipped``).

Progress goes to the *progress* callback (the API streams it) and, as
``update`` events with a ``Stage`` of ``batch``, ``healthy``, ``unhealthy``,
``rollback`` and ``done``, onto the manager's event stream.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vmis.host.fleet.hosts import RemoteVm
from vmis.host.manager import HostManager
from vmis.host.session import VmSession
from vmis.host.update import Bundle, Progress, update_sessions

__all__ = ["RolloutPlan", "rollout"]

#: a status's rank: higher is worse (docs/status.md); an unknown text ranks worst
_RANK = {"OK": 0, "Degraded": 1}


@dataclass(frozen=True)
class RolloutPlan:
    """How a rollout goes: batches of at most *batch_percent* % of the VMs, each
    watched *health_wait* seconds."""

    batch_percent: float
    health_wait: float
    timeout: float

    def batches(self, count: int) -> int:
        """The size of a batch of *count* VMs: at least one."""
        return max(1, math.floor(count * self.batch_percent / 100))


@dataclass(frozen=True)
class _Vm:
    name: str
    computer: str
    session: VmSession | None
    remote: RemoteVm | None


async def rollout(manager: HostManager, patterns: list[str], computers: list[str] | None,
                  bundle: Bundle, *, plan: RolloutPlan,
                  progress: Progress) -> list[dict[str, Any]]:
    """Run a staged rollout (module docstring); one row per VM, in batch order."""
    vms = _targets(manager, patterns, computers)
    size = plan.batches(len(vms))
    batches = [vms[i:i + size] for i in range(0, len(vms), size)]
    rows: list[dict[str, Any]] = []
    stopped = ""
    for number, batch in enumerate(batches, 1):
        if stopped:
            rows += [_skipped(vm, number, stopped) for vm in batch]
            continue
        names = [vm.name for vm in batch]
        _report(manager, progress, "batch", Batch=number, Batches=len(batches), VMs=names)
        before = await _health(manager, batch, computers)
        results = await _update(manager, batch, bundle, plan, progress)
        await asyncio.sleep(plan.health_wait)
        after = await _health(manager, batch, computers)
        verdicts = {vm.name: _verdict(results[vm.name], before.get(vm.name),
                                      after.get(vm.name)) for vm in batch}
        sick = {name: why for name, why in verdicts.items() if why}
        for vm in batch:
            rows.append({**results[vm.name], "ComputerName": vm.computer, "Batch": number,
                         "Healthy": not verdicts[vm.name],
                         "HealthReason": verdicts[vm.name] or None, "RolledBack": False})
        if not sick:
            _report(manager, progress, "healthy", Batch=number, Batches=len(batches),
                    VMs=names)
            continue
        stopped = (f"batch {number} of {len(batches)} was unhealthy ("
                   + "; ".join(f"{name}: {why}" for name, why in sorted(sick.items()))
                   + "): the rollout stopped and that batch was rolled back")
        _report(manager, progress, "unhealthy", Batch=number, Batches=len(batches),
                VMs=names, Reason=stopped)
        await _roll_back(manager, batch, rows[-len(batch):], plan, progress)
    _report(manager, progress, "done", Batches=len(batches), Stopped=bool(stopped),
            Reason=stopped or None)
    return rows


def _targets(manager: HostManager, patterns: list[str],
             computers: list[str] | None) -> list[_Vm]:
    me = manager.fleet.me.name
    if not computers:
        return [_Vm(s.vm.name, me, s, None) for s in manager.match(patterns)]
    targets = manager.fleet.targets(patterns, computers)
    found = [_Vm(s.vm.name, me, s, None) for s in targets.local]
    found += [_Vm(v.name, v.host_name, None, v) for v in targets.remote]
    return sorted(found, key=lambda vm: (vm.computer.lower(), vm.name.lower()))


def _report(manager: HostManager, progress: Progress, stage: str, **data: Any) -> None:
    progress({"type": "rollout", "Stage": stage, **data})
    manager.publish("update", Stage=stage, Rollout=True, **data)


async def _update(manager: HostManager, batch: Sequence[_Vm], bundle: Bundle,
                  plan: RolloutPlan, progress: Progress) -> dict[str, dict[str, Any]]:
    local = [vm.session for vm in batch if vm.session is not None]
    remote = [vm.remote for vm in batch if vm.remote is not None]
    jobs: list[Any] = []
    if local:
        jobs.append(update_sessions(manager, local, bundle, progress, plan.timeout))
    if remote:
        for vm in remote:
            progress({"type": "progress", "VMName": vm.name, "Stage": "requested",
                      "ComputerName": vm.host_name})
        jobs.append(manager.fleet.requests.run("update", remote, {"timeout": plan.timeout}))
    parts = await asyncio.gather(*jobs)
    return {r["VMName"]: r for part in parts for r in part}


async def _health(manager: HostManager, batch: Sequence[_Vm],
                  computers: list[str] | None) -> dict[str, dict[str, Any]]:
    """Each VM's Heartbeat and its services' status, as Get-VM and
    Get-VMIntegrationService show them (another host's: its owner's reports)."""
    names = [vm.name for vm in batch]
    vms = await manager.get_vms(names, computers)
    services = await manager.services(names, None, computers)
    health: dict[str, dict[str, Any]] = {r["Name"]: {"Heartbeat": r.get("Heartbeat"),
                                                    "Services": {}} for r in vms}
    for r in services:
        if r["VMName"] in health and r.get("Enabled"):
            health[r["VMName"]]["Services"][r["Name"]] = r.get("PrimaryStatusDescription")
    return health


def _rank(status: str | None) -> int:
    return _RANK.get(status or "", 2)


def _verdict(result: dict[str, Any], before: dict[str, Any] | None,
             after: dict[str, Any] | None) -> str:
    """Why the VM is not healthy after its update ("" when it is)."""
    if result.get("Pending"):
        return f"its host has not updated it: {result.get('PendingReason')}"
    if result.get("Result") not in ("updated", "current"):
        return f"the update {result.get('Result')}: {result.get('Error')}"
    if after is None:
        return "it is not to be found any more"
    heartbeat = after.get("Heartbeat") or "Unknown"
    if not heartbeat.startswith("Ok"):
        return f"Heartbeat {heartbeat}"
    worse = [f"{name} {(before or {}).get('Services', {}).get(name)} -> {status}"
             for name, status in after["Services"].items()
             if _rank(status) > _rank((before or {}).get("Services", {}).get(name, "OK"))]
    return "worse than before: " + ", ".join(worse) if worse else ""


async def _roll_back(manager: HostManager, batch: Sequence[_Vm], rows: list[dict[str, Any]],
                     plan: RolloutPlan, progress: Progress) -> None:
    """Put the batch's updated VMs back on the version they had (module docstring)."""
    current = await asyncio.to_thread(Bundle.current)
    by_name = {vm.name: vm for vm in batch}
    for row in rows:
        if row.get("Result") != "updated":
            continue  # not changed, or the guest rolled back itself
        vm = by_name[row["VMName"]]
        _report(manager, progress, "rollback", VMName=vm.name, To=row["From"])
        if vm.session is not None:
            if row["From"] != current.version:
                row["Error"] = (f"{vm.name}: cannot roll back to {row['From']}: this host "
                                f"has the agent {current.version} only")
                continue
            [back] = await update_sessions(manager, [vm.session], current, progress,
                                           plan.timeout)
        else:
            assert vm.remote is not None
            [back] = await manager.fleet.requests.run(
                "rollback", [vm.remote], {"timeout": plan.timeout, "version": row["From"]})
        if back.get("Result") in ("updated", "current"):
            row.update(Result="rolledback", Version=back.get("Version"), RolledBack=True)
        else:
            row["Error"] = f"{vm.name}: the rollback failed too: {back.get('Error')}"


def _skipped(vm: _Vm, batch: int, why: str) -> dict[str, Any]:
    return {"VMName": vm.name, "ComputerName": vm.computer, "Batch": batch, "From": None,
            "To": None, "Result": "skipped", "Version": None, "Seconds": None,
            "Error": None, "Healthy": None, "HealthReason": why, "RolledBack": False}
