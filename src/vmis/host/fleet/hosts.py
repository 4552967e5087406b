"""This host in its fleet: who it is, its registration and lease, and which VMs it owns.

A host manager registers under its name (``-ComputerName``, by default the
machine's host name) and then renews a lease every :data:`RENEW_SECONDS`;
a host whose lease (:data:`LEASE_SECONDS`) has lapsed is *Not Responding*.
The lease's times are the database's (vmis.host.fleet.tables.db_now).

A name belongs to one running manager: a second one is refused while the
first one's lease holds, unless the first ran on this same machine and its
process is gone (a restart after a crash takes over at once).

Ownership is a VM's ``vms.host``; it changes only through conditional
updates (``... WHERE host = <the owner it had>``), so of two managers that
claim one VM at once exactly one wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

import vmis
from vmis.errors import ConfigError, StateError
from vmis.host.fleet.tables import db_now, hosts
from vmis.host.store import vms

__all__ = [
    "LEASE_SECONDS",
    "LOCAL_NAMES",
    "RENEW_SECONDS",
    "HostIdentity",
    "HostRegistry",
    "HostRow",
    "RemoteVm",
    "check_host_name",
    "default_host_name",
    "machine_id",
]

#: seconds a host's lease lasts: a host not renewing it for that long is Not Responding
LEASE_SECONDS = 15.0
#: seconds between two renewals: two may fail before the lease lapses
RENEW_SECONDS = 5.0
#: what a command line may call this host, whatever its name (Hyper-V's, and PowerShell's ``.``)
LOCAL_NAMES = ("localhost", ".")

_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")


def check_host_name(name: str) -> str:
    """Return *name* if a host may be called so: 1 to 253 letters, digits, ``-``,
    ``_`` and ``.``, a letter or digit first, and not a name that means this host.

    :raise ConfigError: Saying why not.
    """
    if not _HOST_NAME.fullmatch(name):
        raise ConfigError(f"invalid host name {name!r}: 1 to 253 letters, digits, '-', '_' or "
                          "'.', beginning with a letter or digit")
    if name.lower() in LOCAL_NAMES:
        raise ConfigError(f"invalid host name {name!r}: on a command line it means whichever "
                          "host runs the command")
    return name


def default_host_name() -> str:
    """The machine's short host name, as Hyper-V's ``$env:COMPUTERNAME``; for a machine
    called what no host may be (``localhost``, as some containers are) a name made of
    its machine id, the same at every start."""
    name = socket.gethostname().split(".")[0]
    try:
        return check_host_name(name)
    except ConfigError:
        return "host-" + hashlib.sha256(machine_id().split("/")[0].encode()).hexdigest()[:12]


def machine_id() -> str:
    """This machine and boot: ``/etc/machine-id`` (else the host name) and the kernel's
    boot id. A pid recorded under the same value names a process of this machine now."""
    try:
        machine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine = ""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{machine or socket.gethostname()}/{boot}"[:128]


def _vmis_process(pid: int) -> bool:
    """Whether *pid* runs a vmis command on this machine (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return b"vmis" in cmdline and not stat.rsplit(") ", 1)[-1].startswith("Z")


@dataclass(frozen=True)
class HostIdentity:
    """Who this host manager is, for the hosts table."""

    name: str
    address: str = field(default_factory=socket.gethostname)
    version: str = vmis.__version__
    machine: str = field(default_factory=machine_id)
    pid: int = field(default_factory=os.getpid)
    instance: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def key(self) -> str:
        """The name as the store keys it (host names are case-insensitive)."""
        return self.name.lower()

    @classmethod
    def named(cls, name: str | None) -> HostIdentity:
        """This process under *name*, by default the machine's (:func:`default_host_name`).

        :raise ConfigError: For a name a host may not have.
        """
        return cls(check_host_name(name) if name else default_host_name())


@dataclass(frozen=True)
class HostRow:
    """A registered host as Get-VMHost shows it."""

    key: str
    name: str
    address: str
    version: str
    started: datetime
    last_seen: datetime
    lease_until: datetime
    responding: bool

    @property
    def state(self) -> str:
        """``Responding`` or ``Not Responding`` (SCVMM's words)."""
        return "Responding" if self.responding else "Not Responding"


@dataclass(frozen=True)
class RemoteVm:
    """Another host's VM, as the store knows it."""

    id: str
    name: str
    #: its owner's key and name
    host_key: str
    host_name: str
    #: whether the owner's lease holds
    responding: bool
    last_seen: datetime | None


class HostRegistry:
    """The hosts table and ownership of VMs, for one host manager.

    :param engine: the store's database.
    :param me: this host manager.
    """

    def __init__(self, engine: Engine, me: HostIdentity) -> None:
        self.engine = engine
        self.me = me
        #: a shared store (PostgreSQL): the fleet's; else (SQLite) this host's alone
        self.shared = engine.dialect.name == "postgresql"

    # Section: this host

    def register(self) -> None:
        """Enter this host in the hosts table with a fresh lease.

        On SQLite the store is one host's: other names there are this machine's
        earlier names, and their VMs become this host's.

        :raise StateError: When a manager of this name runs (its lease holds).
        """
        for attempt in range(2):
            try:
                with self.engine.begin() as conn:
                    self._register(conn)
                return
            except IntegrityError:
                if attempt:  # two managers of one new name at once: the other won
                    raise StateError(f"a host manager named {self.me.name} is starting at the "
                                     "same moment; give this one another -ComputerName") from None

    def _register(self, conn: Connection) -> None:
        c = hosts.c
        query = sa.select(hosts, (c.lease_until >= db_now(conn)).label("live"))
        if self.shared:  # on SQLite every registered host is this one under another name
            query = query.where(c.name_key == self.me.key)
        rows = conn.execute(query.with_for_update()).all()
        old = next((r for r in rows if r.name_key == self.me.key), None)
        for row in rows:
            if self._still_running(row):
                seen = row.last_seen.isoformat(timespec="seconds")
                where = "" if self.shared else " on this store"
                raise StateError(
                    f"a host manager named {row.name} is running{where} (on {row.address}, "
                    f"pid {row.pid}, last seen {seen}); give this one another -ComputerName, "
                    f"or stop that one (its lease lapses {LEASE_SECONDS:g} s after its last "
                    "renewal)")
        values = dict(name=self.me.name, address=self.me.address, version=self.me.version,
                      machine=self.me.machine, pid=self.me.pid, instance=self.me.instance,
                      started=db_now(conn), last_seen=db_now(conn),
                      lease_until=db_now(conn, LEASE_SECONDS))
        if old is None:
            conn.execute(hosts.insert().values(name_key=self.me.key, **values))
        else:
            conn.execute(hosts.update().where(c.name_key == self.me.key).values(**values))
        if not self.shared:
            conn.execute(hosts.delete().where(c.name_key != self.me.key))
            conn.execute(vms.update().where(sa.or_(vms.c.host.is_(None),
                                                   vms.c.host != self.me.key))
                         .values(host=self.me.key))

    def _still_running(self, old: Any) -> bool:
        """Whether the manager that registered *old* still runs: its lease holds (on
        SQLite, which keeps none: its process runs), and on this machine its process
        too (a manager killed a moment ago leaves a lease that holds still)."""
        if old.instance == self.me.instance:
            return False
        if old.machine == self.me.machine:
            alive = old.pid != self.me.pid and _vmis_process(old.pid)
            return alive and (bool(old.live) or not self.shared)
        return self.shared and bool(old.live)

    def renew(self) -> bool:
        """Renew the lease; False when another run of this host took the name over."""
        with self.engine.begin() as conn:
            renewed = conn.execute(
                hosts.update().where(hosts.c.name_key == self.me.key)
                .where(hosts.c.instance == self.me.instance)
                .values(last_seen=db_now(conn), lease_until=db_now(conn, LEASE_SECONDS)))
        return renewed.rowcount == 1

    def release(self) -> None:
        """End the lease now (a clean stop): the other hosts show this one Not Responding
        at once rather than when the lease would have lapsed."""
        with contextlib.suppress(sa.exc.SQLAlchemyError), self.engine.begin() as conn:
            conn.execute(hosts.update().where(hosts.c.name_key == self.me.key)
                         .where(hosts.c.instance == self.me.instance)
                         .values(last_seen=db_now(conn), lease_until=db_now(conn)))

    # Section: the fleet's hosts

    def hosts(self) -> list[HostRow]:
        """Every registered host, by name; this one always Responding."""
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(hosts, (hosts.c.lease_until >= db_now(conn))
                                          .label("live")).order_by(hosts.c.name_key)).all()
        return [HostRow(r.name_key, r.name, r.address, r.version, r.started, r.last_seen,
                        r.lease_until, bool(r.live) or r.name_key == self.me.key)
                for r in rows]

    # Section: ownership

    def vms_on(self, host_keys: Iterable[str]) -> list[RemoteVm]:
        """The VMs these hosts own, by name, with their owners' state."""
        keys = list(host_keys)
        if not keys:
            return []
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(vms.c.id, vms.c.name, hosts.c.name_key, hosts.c.name.label("host"),
                          (hosts.c.lease_until >= db_now(conn)).label("live"),
                          hosts.c.last_seen)
                .join(hosts, hosts.c.name_key == vms.c.host)
                .where(vms.c.host.in_(keys)).order_by(vms.c.name_key)).all()
        return [RemoteVm(r.id, r.name, r.name_key, r.host, bool(r.live), r.last_seen)
                for r in rows]

    def where_is(self, name: str) -> str | None:
        """The name of the host that owns the VM called *name*, if any."""
        with self.engine.begin() as conn:
            found: str | None = conn.execute(
                sa.select(hosts.c.name).join(vms, vms.c.host == hosts.c.name_key)
                .where(vms.c.name_key == name.lower())).scalar()
        return found

    def owned(self) -> set[str]:
        """The ids of the VMs this host owns."""
        with self.engine.begin() as conn:
            return set(conn.execute(sa.select(vms.c.id).where(vms.c.host == self.me.key))
                       .scalars())

    def adopt_unowned(self) -> int:
        """Take the VMs no host owns (registered before fleets); how many were taken."""
        with self.engine.begin() as conn:
            taken = conn.execute(vms.update().where(vms.c.host.is_(None))
                                 .values(host=self.me.key))
        return taken.rowcount

    def owner(self, vm_id: str) -> str | None:
        """The key of the host that owns a VM now (None: none, or no such VM)."""
        with self.engine.begin() as conn:
            owner: str | None = conn.execute(
                sa.select(vms.c.host).where(vms.c.id == vm_id)).scalar()
        return owner

    def move(self, conn: Connection, vm_id: str, source: str | None, destination: str,
             changes: dict[str, Any], *, only_if_lapsed: bool = False) -> bool:
        """Give a VM to *destination* if *source* still owns it; True if this call did.

        :param changes: other columns to set with it (a channel valid on the destination).
        :param only_if_lapsed: and only while *source*'s lease has lapsed (a move
            without the source's part in it).
        """
        query = vms.update().where(vms.c.id == vm_id)
        query = query.where(vms.c.host.is_(None) if source is None else vms.c.host == source)
        if only_if_lapsed and source is not None:
            query = query.where(~sa.exists().where(hosts.c.name_key == source)
                                .where(hosts.c.lease_until >= db_now(conn)))
        return conn.execute(query.values(host=destination, **changes)).rowcount == 1
