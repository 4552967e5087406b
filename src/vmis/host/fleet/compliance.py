"""Get-VMIntegrationServiceCompliance: where the guests disagree with the desired state.

One row per VM and service (and an ``Agent`` row where a policy asks a
least agent version): what is wanted (``Desired``: the policy's word where
a policy names the service, else the VM's own setting), what the guest does
(``Actual``), whether they agree, since when, and why not. It is made from
what Get-VMIntegrationService shows (this host's sessions, the owners'
reports for other hosts' VMs, docs/fleet.md §1.3), so it needs no host up
but the one asking; a host that is not responding makes its VMs' rows
Unknown, never a stale Compliant.

``Since`` is when the row last changed: the later of the service's last
status change on its owner and the last change of the policy that decides it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from vmis.errors import ConfigError, NotFoundError
from vmis.host.fleet.policy import Decision, decide, load_policies, load_tags, version_key
from vmis.host.fleet.tables import vm_reports
from vmis.host.store import vms
from vmis.services.catalog import CATALOG

if TYPE_CHECKING:
    from vmis.host.manager import HostManager

__all__ = ["AGENT", "compliance"]

#: the Name of the row of the agent's version
AGENT = "Agent"

RUNNING, STOPPED, GUEST_DISABLED, NOT_OFFERED, UNKNOWN = (
    "Running", "Stopped", "Disabled in guest", "Not offered", "Unknown")


async def compliance(manager: HostManager, patterns: Sequence[str] | None,
                     computers: Sequence[str] | None) -> list[dict[str, Any]]:
    """The compliance rows of the VMs *patterns* names (default all) on the hosts
    *computers* names (default this one)."""
    chosen = list(patterns or ["*"])
    hosts = list(computers) if computers else None
    try:
        services = await manager.services(chosen, None, hosts)
    except NotFoundError:
        if patterns:
            raise
        return []  # no VM at all
    infos = {r["Name"].lower(): r for r in manager.list_vms(hosts)}
    ids = sorted({r["VMId"] for r in services})
    decisions, since = await asyncio.to_thread(_facts, manager, ids)
    for vm_id, session in ((i, manager.sessions.get(i)) for i in ids):
        if session is not None:
            since[vm_id] = dict(session.since)
    rows = []
    by_key = {spec.host_name: spec.key for spec in CATALOG.host_services}
    for r in services:
        decision = decisions.get(r["VMId"], Decision())
        rows.append(_service_row(r, by_key.get(r["Name"], r["Name"]), decision,
                                 since.get(r["VMId"], {})))
    seen: set[str] = set()
    for r in services:
        decision = decisions.get(r["VMId"], Decision())
        if decision.minimum is None or r["VMId"] in seen:
            continue
        seen.add(r["VMId"])
        info = infos.get(str(r["VMName"]).lower(), {})
        rows.append(_agent_row(r, info, decision.minimum, decision,
                               since.get(r["VMId"], {}).get("agent")))
    return sorted(rows, key=lambda row: (str(row["VMName"]).lower(), row["Name"] == AGENT))


def _facts(manager: HostManager, vm_ids: Sequence[str]
           ) -> tuple[dict[str, Decision], dict[str, dict[str, datetime]]]:
    """The policies' word on each VM, and its owner's reported status times."""
    with manager.engine.begin() as conn:
        policies = load_policies(conn)
        records = conn.execute(sa.select(vms.c.id, vms.c.name, vms.c.host)
                               .where(vms.c.id.in_(vm_ids))).all()
        tags = load_tags(conn, vm_ids)
        reported = conn.execute(sa.select(vm_reports.c.vm_id, vm_reports.c.body)
                                .where(vm_reports.c.vm_id.in_(vm_ids))
                                .where(vm_reports.c.kind == "since")).all()
    decisions = {r.id: decide(policies, r.name, r.host, tags.get(r.id, {})) for r in records}
    since = {vm_id: {k: datetime.fromisoformat(v) for k, v in json.loads(body).items()}
             for vm_id, body in reported}
    return decisions, since


def _actual(row: Mapping[str, Any]) -> str:
    state, startup = row.get("GuestState"), row.get("GuestStartupType")
    if row.get("HostState") not in (None, "Responding") or state is None or row.get(
            "PrimaryStatusDescription") in (None, "Lost Communication"):
        return UNKNOWN  # what the guest did last is not what it does now
    if state == "running":
        return RUNNING
    if startup == "disabled":
        return GUEST_DISABLED
    return NOT_OFFERED if state == "absent" else STOPPED


def _later(*times: datetime | None) -> str | None:
    # SQLite gives back naive times, which are UTC
    known = [t if t.tzinfo else t.replace(tzinfo=UTC) for t in times if t is not None]
    return max(known).isoformat(timespec="seconds") if known else None


def _service_row(row: Mapping[str, Any], key: str, decision: Decision,
                 since: Mapping[str, datetime]) -> dict[str, Any]:
    said = decision.services.get(key)
    wanted = said[0] if said else bool(row["Enabled"])
    actual = _actual(row)
    reason = ""
    if actual == UNKNOWN:
        reason = row.get("Reason") or "no contact with the guest"
    elif bool(row["Enabled"]) != wanted:
        reason = (f"policy {said[1] if said else ''!r} is not applied yet: its host converges "
                  "the VM when it hears of it")
    elif wanted and actual != RUNNING:
        reason = row.get("Reason") or f"{row['Name']} is {actual.lower()} in the guest"
        if actual == NOT_OFFERED and not row.get("Reason"):
            reason = f"the guest's agent does not offer {row['Name']}"
    elif not wanted and actual == RUNNING:
        reason = f"{row['Name']} still runs in the guest though it is disabled"
    return {"ComputerName": row.get("ComputerName"), "VMName": row["VMName"],
            "Name": row["Name"], "Desired": "Enabled" if wanted else "Disabled",
            "Actual": actual, "Compliant": not reason, "Since": _later(
                since.get(key), decision.updated if said else None),
            "Reason": reason, "Policy": said[1] if said else None}


def _agent_row(row: Mapping[str, Any], info: Mapping[str, Any], minimum: tuple[str, str],
               decision: Decision, since: datetime | None) -> dict[str, Any]:
    version, policy = minimum
    actual = info.get("AgentVersion")
    agent = info.get("GuestAgent") or "vmis"
    if row.get("HostState") not in (None, "Responding") or actual is None:
        reason = row.get("Reason") or "the agent's version is unknown: no contact with the guest"
        actual = UNKNOWN if actual is None or row.get("HostState") != "Responding" else actual
    elif agent != "vmis":
        reason = (f"it runs {agent} {actual}, not the vmis agent whose version policy "
                  f"{policy!r} asks")
    else:
        try:
            old = version_key(str(actual)) < version_key(version)
        except ConfigError:
            old = True
        reason = (f"the guest agent {actual} is older than {version}, which policy {policy!r} "
                  "asks: Update-VMIntegrationServices") if old else ""
    return {"ComputerName": row.get("ComputerName"), "VMName": row["VMName"], "Name": AGENT,
            "Desired": f">= {version}", "Actual": actual, "Compliant": not reason,
            "Since": _later(since, decision.updated), "Reason": reason, "Policy": policy}
