"""The host manager's part in its fleet (docs/fleet.md).

:class:`Fleet` registers the host and keeps its lease, runs sessions only
for the VMs the store says it owns (:meth:`Fleet.reconcile`), publishes
their status, applies the requests other hosts leave for it, and answers
``-ComputerName``: which hosts a command means (:meth:`Fleet.resolve`),
which VMs (:meth:`Fleet.targets`), and how a command reaches them
(:meth:`Fleet.across`: this host's VMs directly, others' through requests).

On SQLite the store is this host's alone: it registers (so every VM has an
owner, and a second manager on the same file is refused) but keeps no
lease, listens to nothing and publishes nothing; ``-ComputerName`` takes
this host's names only.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from vmis.errors import ConfigError, NotFoundError, StateError
from vmis.host.fleet.actions import Entries
from vmis.host.fleet.hosts import (
    LOCAL_NAMES,
    RENEW_SECONDS,
    HostIdentity,
    HostRegistry,
    HostRow,
    RemoteVm,
)
from vmis.host.fleet.listener import Listener, channel_of
from vmis.host.fleet.reports import RESPONDING, Reporter
from vmis.host.fleet.requests import Prepare, Requests, notify
from vmis.host.fleet.tables import hosts
from vmis.host.store import vms
from vmis.transport.address import parse_address

if TYPE_CHECKING:
    from vmis.host.manager import HostManager
    from vmis.host.session import VmSession

__all__ = ["Fleet", "Targets"]

_log = logging.getLogger("vmis.host.fleet")

_WILDCARDS = "*?["


@dataclass(frozen=True)
class Targets:
    """The VMs a command acts on: this host's sessions, and other hosts' VMs."""

    local: list[VmSession]
    remote: list[RemoteVm]


def _matches(name: str, pattern: str) -> bool:
    if any(c in pattern for c in _WILDCARDS):
        return fnmatch.fnmatchcase(name.lower(), pattern.lower())
    return name.lower() == pattern.lower()


class Fleet:
    """One host manager's part in its fleet.

    :param manager: the host manager.
    :param name: this host's name (``-ComputerName``); default the machine's.
    :raise ConfigError: For a name a host may not have.
    """

    def __init__(self, manager: HostManager, name: str | None = None) -> None:
        self.manager = manager
        self.me = HostIdentity.named(name)
        self.registry = HostRegistry(manager.engine, self.me)
        #: whether the store is shared (PostgreSQL): a fleet of hosts, not one
        self.shared = self.registry.shared
        self.requests = Requests(manager, self.me)
        self.reporter = Reporter(manager)
        self.listener: Listener | None = None
        #: set when another run of this host took its name over: this one must stop
        self.lost = asyncio.Event()
        self._lease: asyncio.Task[None] | None = None
        self._reconciling = asyncio.Lock()
        #: VMs being handed over to another host right now
        self._moving: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    # Section: lifecycle

    def join(self) -> None:
        """Register this host (before its VMs' sessions start).

        :raise StateError: When a manager of the same name runs.
        """
        self.registry.register()
        if self.shared:
            adopted = self.registry.adopt_unowned()
            if adopted:
                _log.info("adopted %d VMs that no host owned", adopted)
        _log.info("host %s joined %s", self.me.name, "its fleet" if self.shared
                  else "its own store (SQLite: one host)")

    def start(self) -> None:
        """Keep the lease, listen, publish and apply requests (a shared store only)."""
        if not self.shared:
            return
        self.requests.start()
        self.listener = Listener(self.manager.engine, channel_of(self.me.key), self._notified,
                                 self._caught_up, f"vmis host {self.me.name}: notifications")
        self.listener.start()
        self.reporter.start()
        self._lease = asyncio.create_task(self._keep_lease(), name="fleet-lease")

    async def close(self) -> None:
        """Stop all of it and end the lease, so the others see this host stopped at once."""
        tasks = [t for t in (self._lease, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.reporter.close()
        if self.listener is not None:
            await self.listener.close()
        await self.requests.close()
        if self.shared and not self.lost.is_set():
            await asyncio.to_thread(self.registry.release)

    def _notified(self, payload: str) -> None:
        if payload == "request":
            self.requests.arrived()
        elif payload.startswith("done:"):
            self.requests.answered()
        elif payload == "policy":
            self.manager.policies.poke()
        elif payload == "vms":
            task = asyncio.create_task(self.reconcile(), name="fleet-reconcile")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _caught_up(self) -> None:
        await self.requests.catch_up()
        await self.reconcile()
        self.manager.policies.poke()  # a policy changed while nothing listened

    async def _keep_lease(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                renewed = await asyncio.to_thread(self.registry.renew)
            except SQLAlchemyError as exc:
                if not failing:
                    _log.error("cannot renew this host's lease: %s", str(exc).splitlines()[0])
                failing = True
                continue
            if failing:
                _log.info("this host's lease is renewed again")
                failing = False
            if not renewed:
                _log.error("another host manager took the name %s over; this one stops",
                           self.me.name)
                self.lost.set()
                for session in list(self.manager.sessions.values()):
                    await self.manager.release(session, "the host's name was taken over")
                return
            try:
                await self.reconcile()
            except Exception:  # the lease must go on whatever befalls one look
                _log.exception("checking which VMs this host owns failed")

    async def reconcile(self) -> None:
        """Run sessions for exactly the VMs the store says this host owns: end those
        moved away (taken while this host was not responding, say), start those given
        to it (Move-VM)."""
        if not self.shared or self.lost.is_set():
            return
        async with self._reconciling:
            before = set(self.manager.sessions)
            try:
                owned = await asyncio.to_thread(self.registry.owned)
            except SQLAlchemyError as exc:
                _log.warning("cannot read which VMs this host owns: %s",
                             str(exc).splitlines()[0])
                return
            for vm_id in before - owned - self._moving:
                session = self.manager.sessions.get(vm_id)
                if session is not None:
                    await self.manager.release(session, "it is another host's now")
            for vm_id in owned - set(self.manager.sessions) - self._moving:
                try:
                    record = await asyncio.to_thread(self.manager.store.get_vm_by_id, vm_id)
                except NotFoundError:
                    continue  # removed meanwhile
                except StateError as exc:  # the store out of reach: the next look
                    _log.warning("cannot take VM %s up: %s", vm_id, exc)
                    return
                if record.id not in self.manager.sessions:
                    self.manager.adopt(record)
                    self.manager.policies.poke()  # policies may select it here, not there

    # Section: -ComputerName

    def local_columns(self) -> dict[str, Any]:
        """What a row of this host's VM says of its host."""
        return {"ComputerName": self.me.name, "HostState": RESPONDING}

    def resolve(self, computers: Sequence[str]) -> tuple[bool, list[HostRow]]:
        """The hosts a ``-ComputerName`` means: this host or not, and the others.

        A name, ``localhost`` or ``.`` (this host), or a wildcard (``*``: every host).

        :raise ConfigError: For another host on SQLite (one host's store).
        :raise NotFoundError: For a name no host of the fleet has.
        """
        local = False
        chosen: dict[str, HostRow] = {}
        known: list[HostRow] | None = None
        for name in computers:
            if name.lower() in (*LOCAL_NAMES, self.me.key):
                local = True
                continue
            wildcard = any(c in name for c in _WILDCARDS)
            if not self.shared:
                if wildcard:
                    local = local or fnmatch.fnmatchcase(self.me.key, name.lower())
                    continue
                raise ConfigError(
                    f"-ComputerName {name}: this host manager's store is SQLite, host "
                    f"{self.me.name}'s alone; reaching other hosts needs a fleet on a shared "
                    "PostgreSQL store (vmis host serve -Db postgresql+psycopg://...)")
            known = known if known is not None else self.registry.hosts()
            found = [h for h in known if _matches(h.key, name)]
            if not found and not wildcard:
                raise NotFoundError(f"no host named {name!r} in this fleet (see vmis "
                                    "Get-VMHost -ComputerName '*')")
            for host in found:
                if host.key == self.me.key:
                    local = True
                else:
                    chosen[host.key] = host
        return local, sorted(chosen.values(), key=lambda h: h.key)

    def targets(self, patterns: Sequence[str] | None, computers: Sequence[str]) -> Targets:
        """The VMs that match *patterns* (all without) on the hosts *computers* names.

        :raise NotFoundError: When a name without wildcards matches no VM on those
            hosts (saying where it is, if elsewhere), or nothing matches at all.
        """
        local, others = self.resolve(computers)
        mine = sorted(self.manager.sessions.values(), key=lambda s: s.vm.name.lower()) \
            if local else []
        remote = self.registry.vms_on([h.key for h in others])
        if not patterns:
            return Targets(mine, remote)
        local_hits: dict[str, VmSession] = {}
        remote_hits: dict[str, RemoteVm] = {}
        for pattern in patterns:
            hits = [s for s in mine if _matches(s.vm.name, pattern)]
            far = [v for v in remote if _matches(v.name, pattern)]
            if not hits and not far and not any(c in pattern for c in _WILDCARDS):
                raise NotFoundError(self._missing(pattern, local, others))
            local_hits.update((s.vm.id, s) for s in hits)
            remote_hits.update((v.id, v) for v in far)
        if not local_hits and not remote_hits:
            raise NotFoundError(f"no VM matches {', '.join(patterns)} on "
                                f"{self._where(local, others)}")
        return Targets([s for s in mine if s.vm.id in local_hits],
                       [v for v in remote if v.id in remote_hits])

    def _where(self, local: bool, others: Sequence[HostRow]) -> str:
        names = ([self.me.name] if local else []) + [h.name for h in others]
        return ("host " if len(names) == 1 else "hosts ") + ", ".join(names)

    def _missing(self, name: str, local: bool, others: Sequence[HostRow]) -> str:
        text = f"no VM named {name!r} on {self._where(local, others)}"
        elsewhere = self.registry.where_is(name)
        return f"{text} (it is on host {elsewhere})" if elsewhere else text

    def where_else(self, name: str) -> str | None:
        """The host that owns the VM called *name*, when it is not this one."""
        owner = self.registry.where_is(name)
        return owner if owner is not None and owner.lower() != self.me.key else None

    async def across(self, action: str, patterns: Sequence[str],
                     computers: Sequence[str] | None, params: Mapping[str, Any], *,
                     local: Callable[[list[str]], Awaitable[Entries]],
                     prepare: Prepare | None = None) -> Entries:
        """Run a command on the VMs *patterns* names on the hosts *computers* names:
        *local* on this host's (given their names), a request per VM of the others'.

        :param action: the request's action (vmis.host.fleet.actions).
        :param params: the request's parameters, as JSON.
        :param prepare: writes one remote VM's desired state with its request.
        :return: every VM's entries, by VM name, each with its ``ComputerName``.
        """
        if not computers:  # this host alone, as a command without -ComputerName always was
            return [{**e, "ComputerName": self.me.name} for e in await local(list(patterns))]
        targets = self.targets(patterns, computers)
        jobs: list[Awaitable[Entries]] = []
        if targets.local:
            jobs.append(local([s.vm.name for s in targets.local]))
        if targets.remote:
            jobs.append(self.requests.run(action, targets.remote, params, prepare))
        parts = await asyncio.gather(*jobs)
        entries = [{"ComputerName": self.me.name, **e} for e in parts[0]] \
            if targets.local else []
        entries += parts[-1] if targets.remote else []
        return sorted(entries, key=lambda e: str(e.get("VMName", "")).lower())

    # Section: hosts

    def host_rows(self, computers: Sequence[str] | None) -> list[dict[str, Any]]:
        """Get-VMHost: the hosts *computers* names (default this one), with their VM counts."""
        local, others = self.resolve(computers or ["."])
        chosen = {h.key for h in others} | ({self.me.key} if local else set())
        with self.manager.engine.begin() as conn:
            counts: dict[str, int] = dict(conn.execute(sa.select(vms.c.host, sa.func.count())
                                       .group_by(vms.c.host)).tuples().all())
        return [{"Name": h.name, "State": h.state, "VMs": counts.get(h.key, 0),
                 "Version": h.version, "Address": h.address,
                 "Started": h.started.isoformat(timespec="seconds"),
                 "LastSeen": h.last_seen.isoformat(timespec="seconds"),
                 "IsLocal": h.key == self.me.key}
                for h in self.registry.hosts() if h.key in chosen]

    def _host(self, name: str) -> HostRow:
        local, others = self.resolve([name])
        if any(c in name for c in _WILDCARDS) or local + len(others) != 1:
            raise ConfigError(f"name one host, not {name!r}")
        if others:
            return others[0]
        return next(h for h in self.registry.hosts() if h.key == self.me.key)

    # Section: Move-VM

    async def move_vm(self, name: str, destination: str, *, source: str | None = None,
                      channel: str | None = None, qmp: str | None = None) -> dict[str, Any]:
        """Move-VM: give a VM to another host, with a channel valid there if given.

        As Hyper-V's, it acts on the host the VM is on (*source*, ``-ComputerName``;
        default this host). That host hands it over (ends its session, then gives it
        away); from a source that is not responding the VM is taken without it, and
        the answer warns so. Of two moves of one VM from one source, one wins.

        :raise ConfigError: On SQLite (one host), or for an invalid channel.
        :raise NotFoundError: For an unknown host, or a VM not on *source*.
        :raise StateError: When the VM is on the destination already, the destination
            is not responding, or another command moved the VM meanwhile.
        """
        if not self.shared:
            raise ConfigError("Move-VM needs a fleet: this host manager's store is SQLite, "
                              f"host {self.me.name}'s alone")
        changes: dict[str, Any] = {}
        if channel is not None:
            parse_address(channel)
            changes["channel"] = channel
        if qmp is not None:
            changes["qmp"] = qmp
        origin = self._host(source or ".")
        target = self._host(destination)
        vm = self.manager.store.get_vm(name)
        owner = self.registry.owner(vm.id)
        if owner != origin.key:
            where = self._name_of(owner) if owner else "no host"
            hint = f" (add -ComputerName {where})" if source is None and owner else ""
            raise NotFoundError(f"VM {vm.name!r} is on host {where}, not on host "
                                f"{origin.name}{hint}")
        if target.key == origin.key:
            raise StateError(f"{vm.name} is already on host {target.name}")
        if not target.responding:
            raise StateError(f"host {target.name} is not responding: a VM moves only to a "
                             "host whose manager runs")
        if origin.key == self.me.key:
            session = self.manager.sessions.get(vm.id)
            if session is None:  # owned, but its session not (yet, or no longer) here
                raise StateError(f"{vm.name} is being moved or taken up on this host; try "
                                 "again in a moment")
            result = await self.hand_over(session, target.key, changes)
        elif origin.responding:
            remote = RemoteVm(vm.id, vm.name, origin.key, origin.name, True, origin.last_seen)
            [result] = await self.requests.run(
                "move", [remote], {"destination": target.key, "changes": changes})
        else:
            result = await asyncio.to_thread(self._take_over, vm.id, vm.name, origin, target,
                                             changes)
        if target.key == self.me.key:
            await self.reconcile()
        return result

    async def hand_over(self, session: VmSession, destination: str,
                        changes: Mapping[str, Any]) -> dict[str, Any]:
        """This host's part of a move: end the VM's session, then give the VM away.

        :raise StateError: When the VM was not this host's to give any more.
        """
        vm = session.vm
        self._moving.add(vm.id)
        try:
            await self.manager.release(session, f"moving to host {destination}")
            try:
                moved = await asyncio.to_thread(self._give, vm.id, destination, changes)
            except SQLAlchemyError as exc:
                moved = False
                _log.error("moving %s: %s", vm.name, str(exc).splitlines()[0])
            if not moved:
                self._moving.discard(vm.id)
                await self.reconcile()  # still this host's: its session runs again
                raise StateError(f"{vm.name} could not be given to host {destination}; it "
                                 f"stays on host {self.me.name}")
        finally:
            self._moving.discard(vm.id)
        record = await asyncio.to_thread(self.manager.store.get_vm_by_id, vm.id)
        return {"VMName": vm.name, "SourceHost": self.me.name,
                "DestinationHost": self._name_of(destination), "Channel": record.channel,
                "Qmp": record.qmp, "Moved": True, "Warning": None, "Error": None}

    def _give(self, vm_id: str, destination: str, changes: Mapping[str, Any]) -> bool:
        with self.manager.engine.begin() as conn:
            if not self.registry.move(conn, vm_id, self.me.key, destination, dict(changes)):
                return False
            notify(conn, destination, "vms")
        return True

    def _take_over(self, vm_id: str, name: str, source: HostRow, target: HostRow,
                   changes: Mapping[str, Any]) -> dict[str, Any]:
        with self.manager.engine.begin() as conn:
            if not self.registry.move(conn, vm_id, source.key, target.key, dict(changes),
                                      only_if_lapsed=True):
                now = self.registry.where_is(name)
                raise StateError(f"{name} is on host {now}, not on host {source.name}, now: "
                                 "another command moved it meanwhile; nothing was changed")
            notify(conn, target.key, "vms")
            record = conn.execute(sa.select(vms.c.channel, vms.c.qmp)
                                  .where(vms.c.id == vm_id)).one()
        warning = (f"host {source.name} is not responding: {name} was taken without its part "
                   "in it; make sure the VM does not run there any more")
        return {"VMName": name, "SourceHost": source.name, "DestinationHost": target.name,
                "Channel": record.channel, "Qmp": record.qmp, "Moved": True,
                "Warning": warning, "Error": None}

    def _name_of(self, host_key: str) -> str:
        with self.manager.engine.begin() as conn:
            name: str | None = conn.execute(sa.select(hosts.c.name)
                                            .where(hosts.c.name_key == host_key)).scalar()
        return name or host_key
