"""The host manager's policy commands, and how it converges its VMs to policy.

Set-/Get-/Remove-VMIntegrationServicePolicy and Set-VM -Tag write the
store (vmis.host.fleet.policy) and, in the same transaction, notify the
hosts whose VMs they may change (the ``policy`` payload on each host's
channel, vmis.host.fleet.listener): the change reaches them when it is
committed, and a host that was down converges when it starts. A host
converges only the VMs it owns: it writes the policies' word into their
desired state and pushes what changed to the guests, as
Enable-/Disable-VMIntegrationService would. On SQLite (one host) the
command's own host converges at once.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from vmis.errors import ConfigError, NotFoundError, StateError
from vmis.host.fleet.policy import (
    Policy,
    conflicts,
    converge,
    delete_policies,
    load_policies,
    load_tags,
    notify_hosts,
    parse_tags,
    save_policy,
    service_keys,
    set_tags,
    version_key,
)
from vmis.host.fleet.tables import hosts
from vmis.host.store import vms
from vmis.services.catalog import by_key

if TYPE_CHECKING:
    from vmis.host.manager import HostManager

__all__ = ["Policies"]

_log = logging.getLogger("vmis.host.fleet")


class Policies:
    """The policy side of one host manager.

    :param manager: the host manager.
    """

    def __init__(self, manager: HostManager) -> None:
        self.manager = manager
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: convergences run (a metric: tests and bench/fleet_scale.py read it)
        self.runs = 0
        #: time.monotonic() when the last convergence had written the desired state
        #: and given it to the sessions (the pushes to the guests then follow)
        self.reached_at = 0.0
        #: time.monotonic() when the last convergence ended (pushes included)
        self.converged_at = 0.0

    @property
    def _key(self) -> str:
        return self.manager.fleet.me.key

    # Section: converging this host's VMs

    def converge_now(self) -> dict[str, dict[str, bool]]:
        """Write the policies' word on this host's VMs into their desired state (before
        their sessions start: they start with it)."""
        with self.manager.engine.begin() as conn:
            return converge(conn, self._key)

    def converge_vm(self, vm_id: str) -> bool:
        """Converge one VM of this host (just registered); whether it changed."""
        with self.manager.engine.begin() as conn:
            return bool(converge(conn, self._key, [vm_id]))

    def poke(self) -> None:
        """Converge soon (a notification said a policy or a tag changed); several pokes
        while one convergence runs make one more, not several."""
        self._wanted.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="policy-converge")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while self._wanted.is_set():
            self._wanted.clear()
            try:
                await self.converge()
            except (SQLAlchemyError, StateError) as exc:
                _log.warning("cannot converge this host's VMs to policy: %s",
                             str(exc).splitlines()[0])
            except Exception:  # the next change converges again
                _log.exception("converging this host's VMs to policy failed")

    async def converge(self) -> int:
        """Converge this host's VMs to policy now: the desired state written, what
        changed pushed to the guests. The number of VMs changed."""
        manager = self.manager
        changes = await asyncio.to_thread(self.converge_now)
        sessions = []
        for vm_id, changed in changes.items():
            session = manager.sessions.get(vm_id)
            if session is None:
                continue  # no session (yet): it starts with the store's word
            session.vm = replace(session.vm, enabled={**session.vm.enabled, **changed})
            for key, enabled in changed.items():
                session.publish("settings", Name=by_key(key).host_name, Enabled=enabled,
                                Policy=True)
            sessions.append((session, changed))
        self.reached_at = time.monotonic()
        by_services: dict[tuple[str, ...], list[Any]] = {}
        for session, changed in sessions:
            by_services.setdefault(tuple(sorted(changed)), []).append(session)
        await asyncio.gather(*(manager.push_settings(group, [by_key(k) for k in keys])
                               for keys, group in by_services.items()))
        self.runs += 1
        self.converged_at = time.monotonic()
        if changes:
            _log.info("converged %d VMs to policy", len(changes))
        return len(changes)

    async def _changed(self) -> None:
        """After a write: converge this host now on SQLite (nobody listens there)."""
        if not self.manager.fleet.shared:
            await self.converge()

    # Section: Set-/Get-/Remove-VMIntegrationServicePolicy

    async def set_policy(self, name: str, *, computer: str | None = None,
                         vm_name: str | None = None, tags: Sequence[str] = (),
                         enable: Sequence[str] = (), disable: Sequence[str] = (),
                         minimum_version: str | None = None) -> dict[str, Any]:
        """Create or replace a policy; every host converges its VMs to it.

        :raise ConfigError: For a policy that says nothing, a service both enabled and
            disabled, a bad tag or version, another host on SQLite.
        :raise NotFoundError: For an unknown service name.
        """
        name = name.strip()
        if not name or any(c in name for c in "*?[") or len(name) > 255:
            raise ConfigError(f"invalid policy name {name[:60]!r}: a name without wildcards, "
                              "of at most 255 characters")
        for what, pattern in (("-ComputerName", computer), ("-VMName", vm_name)):
            if pattern is not None and len(pattern) > 255:
                raise ConfigError(f"{what}: at most 255 characters")
        on, off = service_keys(enable), service_keys(disable)
        if both := [by_key(k).host_name for k in on if k in off]:
            raise ConfigError(f"{', '.join(map(str, both))}: both enabled and disabled")
        if minimum_version is not None:
            version_key(minimum_version)
        if not on and not off and minimum_version is None:
            raise ConfigError("a policy needs -Enable, -Disable or -MinimumVersion")
        if computer is not None and not self.manager.fleet.shared:
            self.manager.fleet.resolve([computer])  # a one-line error for other hosts
        policy = Policy(name, computer, vm_name, parse_tags(tags), on, off, minimum_version)

        def write() -> int:
            with self.manager.engine.begin() as conn:
                save_policy(conn, policy)
                notify_hosts(conn)
                return self._selected(conn, policy)

        selected = await asyncio.to_thread(write)
        await self._changed()
        [saved] = await asyncio.to_thread(self.get_policies, [name])
        return {**saved, "VMs": selected}

    def _selected(self, conn: Any, policy: Policy) -> int:
        rows = conn.execute(sa.select(vms.c.id, vms.c.name, vms.c.host)).all()
        tags = load_tags(conn) if policy.tags else {}
        return sum(policy.selects(r.name, r.host, tags.get(r.id, {})) for r in rows)

    def get_policies(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Get-VMIntegrationServicePolicy.

        :raise NotFoundError: For a name without wildcards that no policy has.
        """
        with self.manager.engine.begin() as conn:
            found = load_policies(conn, names)
        for pattern in names or []:
            if not any(c in pattern for c in "*?[") and not any(
                    p.name.lower() == pattern.lower() for p in found):
                raise NotFoundError(f"no integration service policy named {pattern!r}")
        return [p.to_json() for p in found]

    async def remove_policies(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """Remove-VMIntegrationServicePolicy: the VMs keep their settings as they are."""
        def write() -> list[Policy]:
            with self.manager.engine.begin() as conn:
                return delete_policies(conn, names)

        return [p.to_json() for p in await asyncio.to_thread(write)]

    # Section: Set-VM -Tag

    async def set_vm_tags(self, patterns: Sequence[str], tags: Sequence[str],
                          remove: Sequence[str]) -> list[dict[str, Any]]:
        """Set-VM -Tag / -RemoveTag on the VMs *patterns* names, on any host of the fleet
        (tags are the store's); their owners converge them.

        :raise NotFoundError: For a name without wildcards no VM has.
        :raise ConfigError: For a bad tag, or nothing to change.
        """
        added = parse_tags(tags)
        if not added and not remove:
            raise ConfigError("give -Tag key=value or -RemoveTag key")

        def write() -> list[dict[str, Any]]:
            with self.manager.engine.begin() as conn:
                rows = conn.execute(sa.select(vms.c.id, vms.c.name, vms.c.host,
                                              hosts.c.name.label("host_name"))
                                    .select_from(vms.outerjoin(hosts, hosts.c.name_key ==
                                                               vms.c.host))
                                    .order_by(vms.c.name_key)).all()
                chosen = _choose(rows, patterns)
                set_tags(conn, [r.id for r in chosen], added, remove)
                notify_hosts(conn, [r.host for r in chosen if r.host])
                now = load_tags(conn, [r.id for r in chosen])
            return [{"VMName": r.name, "ComputerName": r.host_name or r.host,
                     "Tag": now.get(r.id, {})} for r in chosen]

        result = await asyncio.to_thread(write)
        await self._changed()
        return result

    # Section: the precedence of policy over Enable-/Disable-VMIntegrationService

    def refuse_conflicts(self, targets: Sequence[tuple[str, str, str | None]],
                         keys: Sequence[str], enabled: bool) -> None:
        """Refuse an explicit change a policy holds otherwise (module docstring).

        :raise StateError: Naming the VMs, services and policies; nothing was changed.
        """
        with self.manager.engine.begin() as conn:
            found = conflicts(conn, targets, keys, enabled)
        if found:
            more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
            raise StateError(f"{'; '.join(found[:3])}{more}: a policy's word wins over an "
                             "explicit setting; change the policy (Set-VMIntegrationService"
                             "Policy) or what selects the VM; nothing was changed")


def _choose(rows: Sequence[Any], patterns: Sequence[str]) -> list[Any]:
    chosen: dict[str, Any] = {}
    for pattern in patterns:
        wildcard = any(c in pattern for c in "*?[")
        hits = [r for r in rows if fnmatch.fnmatchcase(r.name.lower(), pattern.lower())] \
            if wildcard else [r for r in rows if r.name.lower() == pattern.lower()]
        if not hits and not wildcard:
            raise NotFoundError(f"no VM named {pattern!r} is registered (see 'vmis vm list')")
        chosen.update((r.id, r) for r in hits)
    if not chosen:
        raise NotFoundError(f"no VM matches {', '.join(patterns)}")
    return sorted(chosen.values(), key=lambda r: r.name.lower())
