"""Integration service policies and VM tags in the store (docs/fleet.md §5).

A policy selects VMs by host (``-ComputerName`` pattern), name (``-VMName``
pattern) and tags (every ``-Tag k=v`` it names), and says which services
they have (``-Enable``, ``-Disable``) and the least guest agent version
(``-MinimumVersion``). Policies are decided in name order: where two select
one VM and name one service, the later name wins, and the decision says
which policy made it.

Precedence: a policy's word is the VM's desired state. The owner writes it
into ``service_settings`` (:func:`converge`), where Enable-/Disable-
VMIntegrationService write, and pushes it; an explicit Enable/Disable that
contradicts a policy is refused, naming the policy (:func:`conflicts`).
A service no policy names keeps its own, explicit setting. Removing a
policy leaves the VMs as they are: nothing holds them to it any more.

Everything here runs in a caller's transaction, on SQLite (one host) and
PostgreSQL (a fleet) alike.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from vmis.errors import ConfigError, NotFoundError
from vmis.host.fleet.requests import notify
from vmis.host.fleet.tables import db_now, hosts, service_policies, vm_tags
from vmis.host.store import service_settings, set_enabled, vms
from vmis.services.catalog import by_key

__all__ = [
    "Decision",
    "Policy",
    "conflicts",
    "converge",
    "decide",
    "delete_policies",
    "load_policies",
    "load_tags",
    "notify_hosts",
    "parse_tags",
    "save_policy",
    "set_tags",
    "version_key",
]

_WILDCARDS = "*?["
_VERSION = re.compile(r"^\d+(\.\d+){0,3}$")


def version_key(version: str) -> tuple[int, ...]:
    """``1.2.10`` as ``(1, 2, 10)``, so that versions compare as numbers.

    :raise ConfigError: For anything but dotted numbers.
    """
    if len(version) > 64 or not _VERSION.match(version.strip()):
        raise ConfigError(f"invalid version {version!r}: use dotted numbers, such as 1.4.0")
    return tuple(int(p) for p in version.strip().split("."))


def _matches(value: str, pattern: str | None) -> bool:
    if pattern is None:
        return True
    if any(c in pattern for c in _WILDCARDS):
        return fnmatch.fnmatchcase(value.lower(), pattern.lower())
    return value.lower() == pattern.lower()


def parse_tags(items: Iterable[str]) -> dict[str, str]:
    """``["role=web", "tier=1"]`` as ``{"role": "web", "tier": "1"}``; keys lower-case.

    :raise ConfigError: For an item that is not ``key=value``.
    """
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"invalid tag {item!r}: use key=value (role=web)")
        if len(key.strip()) > 255 or len(value.strip()) > 1024:
            raise ConfigError(f"tag {key.strip()[:40]!r}...: a tag's name has at most 255 "
                              "characters, its value at most 1024")
        tags[key.strip().lower()] = value.strip()
    return tags


@dataclass(frozen=True)
class Policy:
    """One integration service policy."""

    name: str
    computer: str | None = None
    vm_name: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    #: service keys (vmis.services.catalog)
    enable: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    minimum_version: str | None = None
    updated: datetime | None = None

    def selects(self, vm_name: str, host_key: str | None, tags: Mapping[str, str]) -> bool:
        """Whether the VM called *vm_name*, on *host_key*, with *tags*, is this policy's."""
        return (_matches(vm_name, self.vm_name)
                and (self.computer is None or _matches(host_key or "", self.computer))
                and all(tags.get(k) == v for k, v in self.tags.items()))

    def to_json(self) -> dict[str, Any]:
        return {"Name": self.name, "ComputerName": self.computer, "VMName": self.vm_name,
                "Tag": dict(self.tags),
                "Enable": [by_key(k).host_name for k in self.enable],
                "Disable": [by_key(k).host_name for k in self.disable],
                "MinimumVersion": self.minimum_version,
                "Updated": self.updated.isoformat(timespec="seconds") if self.updated else None}


@dataclass
class Decision:
    """What the policies say of one VM."""

    #: service key -> (enabled, the policy that says so)
    services: dict[str, tuple[bool, str]] = field(default_factory=dict)
    #: (least agent version, the policy that asks it), the highest asked
    minimum: tuple[str, str] | None = None
    #: when the last of the policies that decided anything changed
    updated: datetime | None = None


def decide(policies: Sequence[Policy], vm_name: str, host_key: str | None,
           tags: Mapping[str, str]) -> Decision:
    """The policies' word on one VM; *policies* in name order (the later wins)."""
    decision = Decision()
    for policy in policies:
        if not policy.selects(vm_name, host_key, tags):
            continue
        for key in policy.enable:
            decision.services[key] = (True, policy.name)
        for key in policy.disable:
            decision.services[key] = (False, policy.name)
        if policy.minimum_version and (decision.minimum is None or version_key(
                policy.minimum_version) >= version_key(decision.minimum[0])):
            decision.minimum = (policy.minimum_version, policy.name)
        if policy.updated and (decision.updated is None or policy.updated > decision.updated):
            decision.updated = policy.updated
    return decision


# Section: the store


def load_policies(conn: Connection, patterns: Sequence[str] | None = None) -> list[Policy]:
    """The policies (those *patterns* names), in name order."""
    found = []
    for row in conn.execute(sa.select(service_policies).order_by(service_policies.c.name_key)):
        if patterns and not any(_matches(row.name, p) for p in patterns):
            continue
        found.append(Policy(row.name, row.computer, row.vm_name, json.loads(row.tags),
                            tuple(json.loads(row.enable)), tuple(json.loads(row.disable)),
                            row.minimum_version, row.updated))
    return found


def save_policy(conn: Connection, policy: Policy) -> None:
    """Create the policy, or replace the one of that name."""
    conn.execute(service_policies.delete().where(
        service_policies.c.name_key == policy.name.lower()))
    conn.execute(service_policies.insert().values(
        name_key=policy.name.lower(), name=policy.name, computer=policy.computer,
        vm_name=policy.vm_name, tags=json.dumps(dict(policy.tags)),
        enable=json.dumps(list(policy.enable)), disable=json.dumps(list(policy.disable)),
        minimum_version=policy.minimum_version, updated=db_now(conn)))


def delete_policies(conn: Connection, patterns: Sequence[str]) -> list[Policy]:
    """Remove the policies *patterns* names.

    :raise NotFoundError: For a name without wildcards that no policy has.
    """
    chosen = load_policies(conn, patterns)
    for pattern in patterns:
        if not any(c in pattern for c in _WILDCARDS) and not any(
                p.name.lower() == pattern.lower() for p in chosen):
            raise NotFoundError(f"no integration service policy named {pattern!r} (see "
                                "Get-VMIntegrationServicePolicy)")
    if chosen:
        conn.execute(service_policies.delete().where(
            service_policies.c.name_key.in_([p.name.lower() for p in chosen])))
    return chosen


def load_tags(conn: Connection, vm_ids: Iterable[str] | None = None) -> dict[str, dict[str, str]]:
    """The VMs' tags, by VM id (every VM's without *vm_ids*)."""
    query = sa.select(vm_tags)
    if vm_ids is not None:
        query = query.where(vm_tags.c.vm_id.in_(list(vm_ids)))
    tags: dict[str, dict[str, str]] = {}
    for row in conn.execute(query):
        tags.setdefault(row.vm_id, {})[row.key] = row.value
    return tags


def set_tags(conn: Connection, vm_ids: Sequence[str], tags: Mapping[str, str],
             remove: Sequence[str]) -> None:
    """Give the VMs *tags* (replacing a tag's value) and take the tags *remove* names."""
    keys = [k.lower() for k in (*tags, *remove)]
    if not vm_ids or not keys:
        return
    conn.execute(vm_tags.delete().where(vm_tags.c.vm_id.in_(vm_ids))
                 .where(vm_tags.c.key.in_(keys)))
    if tags:
        conn.execute(vm_tags.insert(), [{"vm_id": v, "key": k.lower(), "value": value}
                                        for v in vm_ids for k, value in tags.items()])


def notify_hosts(conn: Connection, host_keys: Iterable[str] | None = None) -> None:
    """Tell hosts (every host of the fleet without *host_keys*) to converge their VMs
    when *conn*'s transaction commits (PostgreSQL: NOTIFY; SQLite has one host)."""
    if host_keys is None:
        host_keys = conn.execute(sa.select(hosts.c.name_key)).scalars().all()
    for key in sorted(set(host_keys)):
        notify(conn, key, "policy")


def converge(conn: Connection, host_key: str,
             vm_ids: Iterable[str] | None = None) -> dict[str, dict[str, bool]]:
    """Write the policies' word on the VMs *host_key* owns (those of *vm_ids*) into
    their desired state, where it differs.

    :return: what changed, by VM id: service key -> enabled.
    """
    policies = load_policies(conn)
    query = sa.select(vms.c.id, vms.c.name).where(vms.c.host == host_key)
    if vm_ids is not None:
        query = query.where(vms.c.id.in_(list(vm_ids)))
    owned = conn.execute(query).all()
    if not policies or not owned:
        return {}
    tags = load_tags(conn) if any(p.tags for p in policies) else {}
    wanted = {row.id: decide(policies, row.name, host_key, tags.get(row.id, {})).services
              for row in owned}
    wanted = {vm_id: services for vm_id, services in wanted.items() if services}
    if not wanted:
        return {}
    keys = {key for services in wanted.values() for key in services}
    present = {(r.vm_id, r.service): bool(r.enabled) for r in conn.execute(
        sa.select(service_settings).where(service_settings.c.service.in_(keys))
        .where(service_settings.c.vm_id.in_(list(wanted))))}
    changes: dict[str, dict[str, bool]] = {}
    for vm_id, services in wanted.items():
        for key, (enabled, _) in services.items():
            if present.get((vm_id, key)) != enabled:
                changes.setdefault(vm_id, {})[key] = enabled
    # the rows present are known here: set_enabled need not read every VM's of the fleet
    set_enabled(conn, [(v, k, e) for v, d in changes.items() for k, e in d.items()],
                present=set(present))
    return changes


def conflicts(conn: Connection, targets: Sequence[tuple[str, str, str | None]],
              keys: Sequence[str], enabled: bool) -> list[str]:
    """Why an explicit Enable-/Disable-VMIntegrationService may not change these VMs
    (``(id, name, host key)``): one line per VM and service a policy holds otherwise."""
    policies = load_policies(conn)
    if not policies:
        return []
    tags = load_tags(conn, [t[0] for t in targets])
    found = []
    for vm_id, name, host_key in targets:
        decision = decide(policies, name, host_key, tags.get(vm_id, {}))
        for key in keys:
            said = decision.services.get(key)
            if said is not None and said[0] != enabled:
                label = by_key(key).host_name
                found.append(f"{label} of {name} is {'enabled' if said[0] else 'disabled'} by "
                             f"policy {said[1]!r}")
    return found


def service_keys(names: Sequence[str]) -> tuple[str, ...]:
    """Service keys of host service names (wildcards allowed), in catalogue order."""
    from vmis.services.catalog import match_host_names

    return tuple(spec.key for spec in match_host_names(list(names))) if names else ()
