"""Requests between hosts: a command for another host's VM, and its answer.

The caller writes one row per VM into ``host_requests`` (with whatever
desired state the command changes, in the same transaction) and notifies
the owner's channel; the owner takes its pending rows in id order, applies
each through its :class:`~vmis.host.fleet.actions.Action`, writes the
result into the row and notifies the caller's channel. The caller waits a
bounded time (the action's own, and :data:`PICKUP_SECONDS` for the owner to
take it up), then answers what it has: the owner's entries, or Pending with
the reason. A request stays in the store until its owner applies it, so a
host that was down applies what came meanwhile when it starts.

One VM's requests are applied one after the other, in the order they were
made; different VMs' at the same time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from vmis.errors import InternalError, NotFoundError, StateError, VmisError
from vmis.host.fleet.actions import (
    ACTIONS,
    GUEST_WAIT,
    Action,
    Entries,
    failed_entries,
    pending_entries,
)
from vmis.host.fleet.hosts import HostIdentity, RemoteVm
from vmis.host.fleet.listener import channel_of
from vmis.host.fleet.tables import db_now, host_requests, hosts
from vmis.host.store import vms

if TYPE_CHECKING:
    from vmis.host.manager import HostManager

__all__ = ["PICKUP_SECONDS", "Requests", "notify"]

_log = logging.getLogger("vmis.host.fleet")

PENDING, RUNNING, DONE = "pending", "running", "done"
#: seconds a responding host has to take a request up before the caller answers Pending
PICKUP_SECONDS = 5.0
#: longest pause between two looks at a waited-for request when no notification came
LOOK_SECONDS = 1.0

#: prepares the requests inside the transaction that writes them: writes the VMs'
#: desired state, and returns what each VM's request adds to its parameters (by id)
Prepare = Callable[[Connection, Sequence[RemoteVm]], Mapping[str, Mapping[str, Any]]]


def notify(conn: Connection, host_key: str, payload: str) -> None:
    """Notify a host's channel when *conn*'s transaction commits (PostgreSQL only)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_notify(channel_of(host_key), payload)))


class Requests:
    """This host's requests: those it makes, and those it applies.

    :param manager: the host manager.
    :param me: this host.
    """

    def __init__(self, manager: HostManager, me: HostIdentity) -> None:
        self.manager = manager
        self.engine = manager.engine
        self.me = me
        self._waiters: set[asyncio.Event] = set()
        self._wake = asyncio.Event()
        self._taker: asyncio.Task[None] | None = None
        self._applying: set[asyncio.Task[None]] = set()
        self._vm_locks: dict[str, asyncio.Lock] = {}

    # Section: the caller's side

    async def run(self, action_name: str, remote: Sequence[RemoteVm],
                  params: Mapping[str, Any], prepare: Prepare | None = None) -> Entries:
        """Make one request per VM of *remote* and wait (bounded) for their outcomes.

        :return: the entries of every VM, in the order of *remote*, each with its
            ``ComputerName``.
        """
        action = ACTIONS[action_name]
        made = await asyncio.to_thread(self._submit, action, remote, params, prepare)
        return await self._wait(action, {i: vm for i, vm, _ in made},
                                {i: own for i, _, own in made})

    def _submit(self, action: Action, remote: Sequence[RemoteVm], params: Mapping[str, Any],
                prepare: Prepare | None) -> list[tuple[int, RemoteVm, dict[str, Any]]]:
        """Write the requests (and what *prepare* writes) in one transaction; each
        request's id, VM and parameters."""
        batch = str(uuid.uuid4())
        made = []
        with self.engine.begin() as conn:
            added = prepare(conn, remote) if prepare else {}
            for vm in remote:
                own = {**params, **added.get(vm.id, {})}
                result = conn.execute(host_requests.insert().values(
                    batch=batch, host=vm.host_key, vm_id=vm.id, action=action.name,
                    params=json.dumps(own), state=PENDING, requested_by=self.me.key,
                    created=db_now(conn)))
                assert result.inserted_primary_key is not None
                made.append((int(result.inserted_primary_key[0]), vm, own))
            for host in sorted({vm.host_key for vm in remote}):
                notify(conn, host, "request")
        return made

    def answered(self) -> None:
        """A notification said one of this host's requests is done: look again."""
        for waiter in self._waiters:
            waiter.set()

    async def _wait(self, action: Action, remote: dict[int, RemoteVm],
                    params: dict[int, dict[str, Any]]) -> Entries:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + max(action.wait(p) for p in params.values())
        outcomes: dict[int, Entries] = {}
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        try:
            while True:
                waiter.clear()
                rows = await asyncio.to_thread(self._look, [i for i in remote
                                                            if i not in outcomes])
                now = loop.time()
                for request_id, vm in remote.items():
                    if request_id in outcomes:
                        continue
                    row = rows.get(request_id)
                    if row is None:  # its VM was removed meanwhile (ON DELETE CASCADE)
                        outcomes[request_id] = failed_entries(
                            action, vm.name, params[request_id],
                            NotFoundError(f"VM {vm.name} was removed before host "
                                          f"{vm.host_name} applied the request"))
                    elif row.state == DONE:
                        outcomes[request_id] = json.loads(row.result)
                    elif reason := _why_pending(vm, row, now - started, now > deadline):
                        outcomes[request_id] = pending_entries(action, vm.name,
                                                               params[request_id], reason)
                if len(outcomes) == len(remote):
                    break
                try:
                    async with asyncio.timeout(min(LOOK_SECONDS, max(deadline - now, 0.05))):
                        await waiter.wait()
                except TimeoutError:
                    pass
        finally:
            self._waiters.discard(waiter)
        return [{**entry, "ComputerName": vm.host_name}
                for request_id, vm in remote.items() for entry in outcomes[request_id]]

    def _look(self, ids: list[int]) -> dict[int, Any]:
        if not ids:
            return {}
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(host_requests.c.id, host_requests.c.state, host_requests.c.result,
                          (hosts.c.lease_until >= db_now(conn)).label("live"),
                          hosts.c.last_seen)
                .join(hosts, hosts.c.name_key == host_requests.c.host)
                .where(host_requests.c.id.in_(ids))).all()
        return {row.id: row for row in rows}

    # Section: the owner's side

    def start(self) -> None:
        """Begin applying this host's requests; the first are those left from before
        (:meth:`catch_up`)."""
        self._interrupted()
        self._taker = asyncio.create_task(self._take_loop(), name="fleet-requests")
        self._wake.set()  # what came while this host was down, without waiting for LISTEN

    async def close(self) -> None:
        tasks = [t for t in (self._taker, *self._applying) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._taker = None

    async def catch_up(self) -> None:
        """Take up whatever is pending for this host (after a (re)connect)."""
        self._wake.set()

    def arrived(self) -> None:
        """A notification said a request for this host is waiting."""
        self._wake.set()

    def _interrupted(self) -> None:
        # What a run of this host was applying when it stopped is not applied again:
        # it may have been half done (an update, a shutdown); its caller is told.
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(host_requests, vms.c.name)
                                .join(vms, vms.c.id == host_requests.c.vm_id)
                                .where(host_requests.c.host == self.me.key)
                                .where(host_requests.c.state == RUNNING)).all()
            for row in rows:
                action = ACTIONS.get(row.action)
                entries = [] if action is None else failed_entries(
                    action, row.name, json.loads(row.params), StateError(
                        f"{row.name}: host {self.me.name}'s manager stopped while it applied "
                        "this; see what came of it (Get-VM) and run the command again"))
                self._finish(conn, row, entries)

    async def _take_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                rows = await asyncio.to_thread(self._take)
            except sa.exc.SQLAlchemyError as exc:
                _log.warning("cannot take up requests: %s", str(exc).splitlines()[0])
                continue  # the listener's reconnect catches up again
            for row in rows:
                task = asyncio.create_task(self._apply(row), name=f"request:{row.id}")
                self._applying.add(task)
                task.add_done_callback(self._applying.discard)

    def _take(self) -> list[Any]:
        with self.engine.begin() as conn:
            taken = conn.execute(
                host_requests.update().where(host_requests.c.host == self.me.key)
                .where(host_requests.c.state == PENDING)
                .values(state=RUNNING, started=db_now(conn))
                .returning(host_requests.c.id)).scalars().all()
            if not taken:
                return []
            return list(conn.execute(
                sa.select(host_requests, vms.c.name).join(vms, vms.c.id == host_requests.c.vm_id)
                .where(host_requests.c.id.in_(taken)).order_by(host_requests.c.id)).all())

    async def _apply(self, row: Any) -> None:
        # Tasks are made in id order and a lock serves its waiters first come, first
        # served: one VM's requests apply in the order they were made. (A lock per VM
        # that ever had a request; one dropped while a task still waits on it would
        # let the next request overtake that task.)
        async with self._vm_locks.setdefault(row.vm_id, asyncio.Lock()):
            entries = await self._entries(row)
        try:
            await asyncio.to_thread(self._finish_one, row, entries)
        except sa.exc.SQLAlchemyError as exc:
            _log.error("cannot record the outcome of request %d (%s of %s): %s", row.id,
                       row.action, row.name, str(exc).splitlines()[0])

    async def _entries(self, row: Any) -> Entries:
        params = json.loads(row.params)
        action = ACTIONS.get(row.action)
        if action is None:
            return [{"VMName": row.name, "Error": f"host {self.me.name} does not know the "
                     f"request {row.action!r} (vmis {self.me.version})",
                     "ErrorType": "StateError"}]
        session = self.manager.sessions.get(row.vm_id)
        try:
            if session is None:
                raise StateError(f"{row.name} is no longer on host {self.me.name}")
            if action.needs_guest(params) and not session.contacted:
                await session.wait_connected(GUEST_WAIT)
            entries = await action.apply(self.manager, session, params)
        except VmisError as exc:
            return failed_entries(action, row.name, params, exc)
        except Exception as exc:
            _log.exception("request %d (%s of %s) failed", row.id, row.action, row.name)
            return failed_entries(action, row.name, params, InternalError(
                f"internal error on host {self.me.name}: {type(exc).__name__}: {exc}"))
        session.log.info("applied %s requested by host %s", row.action, row.requested_by)
        return entries

    def _finish_one(self, row: Any, entries: Entries) -> None:
        with self.engine.begin() as conn:
            self._finish(conn, row, entries)

    def _finish(self, conn: Connection, row: Any, entries: Entries) -> None:
        conn.execute(host_requests.update().where(host_requests.c.id == row.id)
                     .values(state=DONE, finished=db_now(conn), result=json.dumps(entries)))
        notify(conn, row.requested_by, f"done:{row.id}")


def _why_pending(vm: RemoteVm, row: Any, waited: float, timed_out: bool) -> str:
    """Why a request not done yet is answered Pending now ("" to wait on)."""
    if not row.live:
        seen = row.last_seen.isoformat(timespec="seconds")
        return (f"host {vm.host_name} is not responding (last seen {seen}); the request is "
                "kept and applied when it returns")
    if row.state == PENDING and waited > PICKUP_SECONDS:
        return (f"host {vm.host_name} has not taken the request up within "
                f"{PICKUP_SECONDS:g} s; it applies it when it does")
    if timed_out:
        return (f"host {vm.host_name} is still applying it after {waited:.0f} s; see what "
                "came of it with Get-VM")
    return ""
