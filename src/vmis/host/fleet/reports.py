"""What owners publish of their VMs, and how another host shows it.

The owner of a VM writes, in ``vm_reports``, what other hosts need to show
of it: its Get-VM row, its Get-VMIntegrationService rows and the guest's
KVP pools as last pushed. It writes them when they change, never per beat:
the :class:`Reporter` follows the manager's event stream (vmis.host.events:
a session publishes a ``service`` event from ``check_status`` when a status
changes, the sweep a ``heartbeat`` event on a transition) and writes each
VM that had an event, a burst of them at once.

A host reads another's VMs from there, so a read never needs that host up;
and when its lease has lapsed, the rows say so (``HostState`` Not
Responding, no status) rather than show the last OK as if it still held.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from vmis.host.fleet.hosts import HostRow, RemoteVm
from vmis.host.fleet.tables import db_now, vm_reports
from vmis.host.store import service_settings, vms
from vmis.host.vminfo import vm_row
from vmis.services.catalog import CATALOG, ServiceSpec
from vmis.services.kvp import parse_pool
from vmis.services.kvp.host import KvpHost, kvp_pending, pool_rows
from vmis.services.kvp.pool import Pool
from vmis.services.status import ServiceStatus

if TYPE_CHECKING:
    from vmis.host.manager import HostManager
    from vmis.host.session import VmSession

__all__ = [
    "NOT_RESPONDING",
    "RESPONDING",
    "Reporter",
    "kvp_rows",
    "remote_vm_list",
    "service_rows",
    "vm_rows",
    "vm_rows_text",
]

_log = logging.getLogger("vmis.host.fleet")

RESPONDING = "Responding"
NOT_RESPONDING = "Not Responding"
#: seconds the reporter waits after a VM's first event before writing: the other
#: events of the same change (a reconnect is several) go in the same write
FLUSH_DELAY = 0.1
#: VMs whose reports are made between two looks at the rest of the event loop
YIELD_EVERY = 32
#: seconds before a write that failed (the store out of reach) is tried again
RETRY_DELAY = 2.0


# Section: the owner's side


class Reporter:
    """Writes this host's VMs' reports when they change.

    :param manager: the host manager whose VMs it reports.
    """

    def __init__(self, manager: HostManager) -> None:
        self.manager = manager
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: reports written (a metric; tests read it)
        self.written = 0
        self._writing = False

    def start(self) -> None:
        subscription = self.manager.events.subscribe(accept=lambda e: e.vm_id is not None)
        self._tasks = [asyncio.create_task(self._follow(subscription), name="fleet-follow"),
                       asyncio.create_task(self._write_loop(), name="fleet-reports")]
        self.mark(self.manager.sessions)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    @property
    def busy(self) -> bool:
        """Whether reports are waiting to be written, or being written."""
        return bool(self._dirty) or self._writing

    def mark(self, vm_ids: Iterable[str]) -> None:
        """Have these VMs' reports written again soon."""
        self._dirty.update(vm_ids)
        if self._dirty:
            self._wake.set()

    async def _follow(self, subscription: Any) -> None:
        try:
            async for event in subscription:
                # an event lost by a slow reader may be any VM's: write them all
                self.mark([event.vm_id] if event.type != "dropped" else self.manager.sessions)
        finally:
            subscription.close()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(FLUSH_DELAY)
            self._wake.clear()
            chosen, self._dirty = self._dirty, set()
            self._writing = True
            try:
                await self.write(chosen)
            except (SQLAlchemyError, OSError) as exc:
                _log.warning("cannot publish %d VMs' status for the fleet: %s", len(chosen),
                             str(exc).splitlines()[0])
                self.mark(chosen)
                await asyncio.sleep(RETRY_DELAY)
            except Exception:  # a bug: logged, and the next change is published still
                _log.exception("publishing %d VMs' status for the fleet failed", len(chosen))
            finally:
                self._writing = False

    async def write(self, vm_ids: Iterable[str]) -> None:
        """Write the reports of these VMs (those still this host's) now."""
        rows: list[dict[str, Any]] = []
        for count, vm_id in enumerate(vm_ids, 1):
            session = self.manager.sessions.get(vm_id)
            if session is not None:
                rows += await self._reports(session)
            if count % YIELD_EVERY == 0:
                # a thousand VMs' reports are half a second of work: let the rest of
                # the manager (its API, a policy to converge) in between
                await asyncio.sleep(0)
        if rows:
            await asyncio.to_thread(self._save, rows)
            self.written += len(rows)

    async def _reports(self, session: VmSession) -> list[dict[str, Any]]:
        manager = self.manager
        off = await manager.is_off(session)
        kvp = session.part(KvpHost)
        bodies = {
            # Uptime changes every second but a report only when something happens:
            # other hosts would show a stale one, so they show none
            "vm": {**await vm_row(session, manager.hypervisor_for(session.vm)), "Uptime": None},
            "info": manager.vm_info(session),
            # a connected session's rows are those check_status keeps current
            "services": [(session.last_status(spec) if session.connected
                          else session.status(spec, off=off)).to_json()
                         for spec in CATALOG.host_services],
            "since": {key: at.isoformat() for key, at in session.since.items()},
            "kvp": {"Connected": session.connected,
                    "Pools": {str(int(p)): items for p, items in kvp.pools.items()},
                    "ReportedAt": {str(int(p)): at.isoformat()
                                   for p, at in kvp.reported.items()}},
        }
        return [{"vm_id": session.vm.id, "kind": kind, "body": json.dumps(body)}
                for kind, body in bodies.items()]

    def _save(self, rows: list[dict[str, Any]]) -> None:
        me = self.manager.fleet.me.key
        with self.manager.engine.begin() as conn:
            # Only VMs still this host's (one moved away meanwhile is its new
            # owner's to report), held until the commit so none is removed meanwhile.
            mine = set(conn.execute(
                sa.select(vms.c.id).where(vms.c.id.in_({r["vm_id"] for r in rows}))
                .where(vms.c.host == me).with_for_update(read=True)).scalars())
            chosen = [{**r, "updated": db_now(conn)} for r in rows if r["vm_id"] in mine]
            if not chosen:
                return
            upsert = pg_insert(vm_reports).values(chosen)
            conn.execute(upsert.on_conflict_do_update(
                index_elements=[vm_reports.c.vm_id, vm_reports.c.kind],
                set_={"body": upsert.excluded.body, "updated": upsert.excluded.updated}))


# Section: another host's side


#: beyond this many VMs a read selects them by their owners rather than by a list of
#: ids: Get-VM -ComputerName '*' of a large fleet would bind one parameter per VM
MANY = 200


def _of(remote: Sequence[RemoteVm], column: Any) -> Any:
    """A WHERE clause on *column* (a VM id) that takes at least these VMs."""
    if len(remote) <= MANY:
        return column.in_([vm.id for vm in remote])
    return column.in_(sa.select(vms.c.id).where(vms.c.host.in_({vm.host_key for vm in remote})))


def _bodies(engine: Engine, remote: Sequence[RemoteVm], kind: str) -> dict[str, Any]:
    if not remote:
        return {}
    wanted = {vm.id for vm in remote}
    with engine.begin() as conn:
        found = conn.execute(sa.select(vm_reports.c.vm_id, vm_reports.c.body)
                             .where(_of(remote, vm_reports.c.vm_id))
                             .where(vm_reports.c.kind == kind)).all()
    return {vm_id: json.loads(body) for vm_id, body in found if vm_id in wanted}


def _host_columns(vm: RemoteVm) -> dict[str, Any]:
    return {"ComputerName": vm.host_name, "HostState": RESPONDING if vm.responding
            else NOT_RESPONDING}


def _unknown(vm: RemoteVm) -> str:
    """Why another host's VM shows no status."""
    if vm.responding:
        return f"host {vm.host_name} has not reported this VM's status yet"
    seen = vm.last_seen.isoformat(timespec="seconds") if vm.last_seen else "never"
    return (f"host {vm.host_name} is not responding (last seen {seen}): the VM's status "
            "is unknown")


def remote_vm_list(engine: Engine, remote: Sequence[RemoteVm]) -> list[dict[str, Any]]:
    """``vm list`` rows of other hosts' VMs: the registry's facts, and the connection's
    as their owners last reported it."""
    bodies = _bodies(engine, remote, "info")
    with engine.begin() as conn:
        records = {r.id: r for r in conn.execute(sa.select(vms).where(_of(remote, vms.c.id)))}
    rows = []
    for vm in remote:
        record = records.get(vm.id)
        if record is None:
            continue  # removed meanwhile
        row = {"Connected": False, "Heartbeat": None, "AgentVersion": None, "LastError": "",
               **bodies.get(vm.id, {})}
        if not vm.responding:
            row.update(Connected=False, Heartbeat=None, LastError=_unknown(vm))
        rows.append({**row, "Name": record.name, "Id": record.id, "Channel": record.channel,
                     "Qmp": record.qmp, "Kind": record.kind,
                     "HeartbeatIntervalMs": record.heartbeat_interval_ms, **_host_columns(vm)})
    return rows


def vm_rows(engine: Engine, remote: Sequence[RemoteVm],
            texts: Mapping[str, str | None] | None = None) -> list[dict[str, Any]]:
    """Get-VM rows of other hosts' VMs, as their owners last reported them.

    :param texts: their reports' bodies when read already (by VM id).
    """
    bodies = _bodies(engine, remote, "vm") if texts is None else {
        vm_id: json.loads(text) for vm_id, text in texts.items() if text is not None}
    rows = []
    for vm in remote:
        row = bodies.get(vm.id) or {
            "State": "Unknown", "Status": "", "Heartbeat": None, "Uptime": None,
            "IntegrationServicesVersion": None, "IntegrationServicesState": "",
            "HostIntegrationServicesVersion": None}
        if not vm.responding:  # never the last OK as if it still held
            row.update(State="Unknown", Status="Host Not Responding", Heartbeat="Unknown")
        rows.append({**row, "Name": vm.name, "Id": vm.id, **_host_columns(vm)})
    return rows


def vm_rows_text(engine: Engine, others: Sequence[HostRow]) -> list[tuple[str, str]]:
    """Get-VM rows of every VM of the hosts *others*, as JSON text ready to send, each
    with its sort key (the lower-case name): a fleet's 10,240 rows are not decoded and
    encoded again (bench/fleet_scale.py). The same rows as :func:`vm_rows`."""
    if not others:
        return []
    by_key = {h.key: h for h in others}
    with engine.begin() as conn:
        found = conn.execute(
            sa.select(vms.c.name_key, vms.c.id, vms.c.name, vms.c.host, vm_reports.c.body)
            .select_from(vms.outerjoin(vm_reports, (vm_reports.c.vm_id == vms.c.id)
                                       & (vm_reports.c.kind == "vm")))
            .where(vms.c.host.in_(list(by_key)))).tuples().all()
    rows = []
    for name_key, vm_id, name, host_key, body in found:
        host = by_key[host_key]
        if body is None or not host.responding or not body.endswith("}"):
            remote = RemoteVm(vm_id, name, host.key, host.name, host.responding,
                              host.last_seen)
            rows.append((name_key, json.dumps(vm_rows(engine, [remote], {vm_id: body})[0])))
            continue
        # the owner's row names the VM already (Name, Id): the host's columns go on
        rows.append((name_key, f'{body[:-1]}, "ComputerName": {json.dumps(host.name)}, '
                               f'"HostState": "{RESPONDING}"}}'))
    return rows


def service_rows(engine: Engine, remote: Sequence[RemoteVm],
                 specs: Sequence[ServiceSpec]) -> list[dict[str, Any]]:
    """Get-VMIntegrationService rows of other hosts' VMs: Enabled from the desired
    state (the store's), the status as their owners last reported it."""
    bodies = _bodies(engine, remote, "services")
    with engine.begin() as conn:
        wanted = {(s.vm_id, s.service): bool(s.enabled) for s in conn.execute(
            sa.select(service_settings).where(_of(remote, service_settings.c.vm_id)))}
    rows = []
    for vm in remote:
        reported = {r["Name"]: r for r in bodies.get(vm.id, [])}
        for spec in specs:
            name = spec.host_name or spec.key
            enabled = wanted.get((vm.id, spec.key), spec.default_enabled)
            row = reported.get(name)
            if row is None or not vm.responding:
                row = ServiceStatus(vm.name, vm.id, name, enabled, None,
                                    reason=_unknown(vm)).to_json()
            rows.append({**row, "VMName": vm.name, "Enabled": enabled, **_host_columns(vm)})
    return rows


def kvp_rows(engine: Engine, remote: Sequence[RemoteVm],
             pool: str | None) -> list[dict[str, Any]]:
    """Get-VMKvp rows of other hosts' VMs: the pools their owners last reported, and
    the writes pending in the store (which are the store's to tell, owner up or not)."""
    pools = [parse_pool(pool)] if pool else list(Pool)
    bodies = _bodies(engine, remote, "kvp")
    with engine.begin() as conn:
        pending = conn.execute(sa.select(kvp_pending).where(_of(remote, kvp_pending.c.vm_id))
                               .order_by(kvp_pending.c.id)).all()
    rows = []
    for vm in remote:
        body = bodies.get(vm.id, {})
        when = body.get("ReportedAt", {})
        reported = {Pool(int(p)): (items, _time(when.get(p)))
                    for p, items in body.get("Pools", {}).items()}
        connected = bool(body.get("Connected")) and vm.responding
        rows += [{**row, **_host_columns(vm)} for row in pool_rows(
            vm.name, connected, reported, [r for r in pending if r.vm_id == vm.id], pools)]
    return rows


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(text)
    return None
