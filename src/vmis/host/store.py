"""The host manager's persistent state, through SQLAlchemy Core.

SQLite by default (``sqlite:///path``); PostgreSQL through psycopg 3
(``postgresql+psycopg://...``). Opening a store brings its schema up to
date (vmis.host.schema: Alembic revisions, the same for both).

Only plain values cross this module's boundary (:class:`VmRecord` and dicts);
no SQLAlchemy object leaks into the manager.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from vmis.errors import ConfigError, NotFoundError, StateError
from vmis.host.fleet.tables import hosts
from vmis.host.private import private_sqlite
from vmis.host.schema import upgrade
from vmis.services.catalog import CATALOG
from vmis.services.heartbeat import (
    DEFAULT_ERROR_THRESHOLD,
    DEFAULT_INTERVAL_MS,
    DEFAULT_LATENCY_MS,
)
from vmis.services.host_half import VmRecord, metadata

__all__ = ["Store", "safe_url", "service_settings", "set_enabled", "vms"]

vms = sa.Table(
    "vms",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    #: lower-case name: VM names are case-insensitive, as in Hyper-V
    sa.Column("name_key", sa.String(255), nullable=False, unique=True),
    sa.Column("channel", sa.String(1024), nullable=False),
    #: QMP socket of a QEMU VM (hypervisor operations), if any
    sa.Column("qmp", sa.String(1024)),
    #: "external", "lab", "qemu" or "libvirt": who starts and stops the VM
    sa.Column("kind", sa.String(16), nullable=False, server_default="external"),
    #: the guest agent the VM runs: "vmis" or "qemu-ga" (a GuestKind's name)
    sa.Column("guest_agent", sa.String(16), nullable=False, server_default="vmis"),
    sa.Column("heartbeat_interval_ms", sa.Integer, nullable=False,
              server_default=str(DEFAULT_INTERVAL_MS)),
    sa.Column("heartbeat_latency_ms", sa.Integer, nullable=False,
              server_default=str(DEFAULT_LATENCY_MS)),
    sa.Column("heartbeat_error_threshold", sa.Integer, nullable=False,
              server_default=str(DEFAULT_ERROR_THRESHOLD)),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    #: a VM libvirt runs: its connection URI and domain UUID (vmis.libvirt)
    sa.Column("libvirt_uri", sa.String(1024)),
    sa.Column("libvirt_domain", sa.String(36)),
    #: the host manager that owns it (``hosts.name_key``, docs/fleet.md): only it runs
    #: the VM's session; NULL for a VM from before fleets, adopted by the first to start
    sa.Column("host", sa.String(255), index=True),
)

service_settings = sa.Table(
    "service_settings",
    metadata,
    sa.Column("vm_id", sa.String(36), sa.ForeignKey("vms.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("service", sa.String(32), primary_key=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
)


class Store:
    """Registry of VMs and their desired service state.

    :param url: an SQLAlchemy database URL.
    :raise ConfigError: When the database cannot be opened.
    """

    def __init__(self, url: str) -> None:
        try:
            self.engine: Engine = sa.create_engine(url)
            if self.engine.dialect.name == "sqlite":
                _keep_private(self.engine.url.database)
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            upgrade(self.engine)
        except (SQLAlchemyError, ValueError) as exc:
            raise ConfigError(f"cannot open the database {safe_url(url)}: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise StateError(f"database error: {exc.orig}") from exc

    # Section: VMs

    def add_vm(self, name: str, channel: str, *, qmp: str | None = None,
               kind: str = "external", guest_agent: str = "vmis",
               heartbeat_interval_ms: int | None = None, host: str | None = None,
               libvirt_uri: str | None = None, libvirt_domain: str | None = None) -> VmRecord:
        """Register a VM with the default service settings (docs/services/README.md).

        :param host: the host that owns it (docs/fleet.md), by key.
        :raise StateError: When a VM of that name exists (in a fleet: on any host).
        """
        vm_id = str(uuid.uuid4())
        values: dict[str, Any] = dict(
            id=vm_id, name=name, name_key=name.lower(), channel=channel, qmp=qmp, kind=kind,
            guest_agent=guest_agent, created=datetime.now(UTC), host=host,
            libvirt_uri=libvirt_uri, libvirt_domain=libvirt_domain,
        )
        if heartbeat_interval_ms is not None:
            values["heartbeat_interval_ms"] = heartbeat_interval_ms
        try:
            with self._tx() as conn:
                conn.execute(vms.insert().values(**values))
                conn.execute(service_settings.insert(), [
                    {"vm_id": vm_id, "service": s.key, "enabled": s.default_enabled}
                    for s in CATALOG.host_services
                ])
        except IntegrityError:
            owner = self._owner_name(name)
            where = f" (on host {owner})" if owner and host and owner.lower() != host else ""
            raise StateError(f"a VM named {name!r} is already registered{where}") from None
        return self.get_vm_by_id(vm_id)

    def _owner_name(self, name: str) -> str | None:
        """The name of the host that owns the VM called *name* (docs/fleet.md), if any."""
        with self._tx() as conn:
            owner: str | None = conn.execute(
                sa.select(sa.func.coalesce(hosts.c.name, vms.c.host))
                .select_from(vms.outerjoin(hosts, hosts.c.name_key == vms.c.host))
                .where(vms.c.name_key == name.lower())).scalar()
        return owner

    def update_vm(self, name: str, *, host: str | None = None, **values: Any) -> VmRecord:
        """Change a VM's channel, QMP socket or heartbeat settings.

        :param host: change it only while this host owns it.
        :raise StateError: When another host owns it.
        """
        vm = self.get_vm(name)
        query = vms.update().where(vms.c.id == vm.id)
        if host is not None:
            query = query.where(vms.c.host == host)
        with self._tx() as conn:
            if conn.execute(query.values(**values)).rowcount == 0:
                raise StateError(f"VM {vm.name} is on host {self._owner_name(name)}: change "
                                 "it there")
        return self.get_vm_by_id(vm.id)

    def remove_vm(self, name: str) -> VmRecord:
        """Unregister a VM.

        :raise NotFoundError: When there is no such VM.
        """
        return self.remove_vm_by_id(self.get_vm(name).id)

    def remove_vm_by_id(self, vm_id: str) -> VmRecord:
        """Unregister a VM by its id, whatever its name.

        :raise NotFoundError: When there is no such VM.
        """
        found = self._load(vms.c.id == vm_id)
        if not found:
            raise NotFoundError(f"no VM with id {vm_id!r} is registered (see 'vmis vm list')")
        with self._tx() as conn:
            conn.execute(service_settings.delete().where(service_settings.c.vm_id == vm_id))
            conn.execute(vms.delete().where(vms.c.id == vm_id))
        return found[0]

    def get_vm(self, name: str) -> VmRecord:
        """Look a VM up by name, case-insensitively.

        :raise NotFoundError: When there is no such VM.
        """
        found = self._load(vms.c.name_key == name.lower())
        if not found:
            raise NotFoundError(f"no VM named {name!r} is registered (see 'vmis vm list')")
        return found[0]

    def get_vm_by_id(self, vm_id: str) -> VmRecord:
        """Look a VM up by id.

        :raise NotFoundError: When there is no such VM.
        """
        found = self._load(vms.c.id == vm_id)
        if not found:
            raise NotFoundError(f"no VM with id {vm_id!r} is registered (see 'vmis vm list')")
        return found[0]

    def list_vms(self, host: str | None = None) -> list[VmRecord]:
        """Every registered VM, by name; with *host*, those that host owns."""
        return self._load(None if host is None else vms.c.host == host)

    def _load(self, where: Any) -> list[VmRecord]:
        query = sa.select(vms).order_by(vms.c.name_key)
        if where is not None:
            query = query.where(where)
        with self._tx() as conn:
            rows = conn.execute(query).mappings().all()
            ids = [r["id"] for r in rows]
            settings: dict[str, dict[str, bool]] = {i: {} for i in ids}
            if ids:
                for s in conn.execute(
                    sa.select(service_settings).where(service_settings.c.vm_id.in_(ids))
                ).mappings():
                    settings[s["vm_id"]][s["service"]] = bool(s["enabled"])
        return [
            VmRecord(
                id=r["id"], name=r["name"], channel=r["channel"], qmp=r["qmp"], kind=r["kind"],
                guest_agent=r["guest_agent"],
                heartbeat_interval_ms=r["heartbeat_interval_ms"],
                heartbeat_latency_ms=r["heartbeat_latency_ms"],
                heartbeat_error_threshold=r["heartbeat_error_threshold"],
                enabled={s.key: settings[r["id"]].get(s.key, s.default_enabled)
                         for s in CATALOG.host_services},
                libvirt_uri=r["libvirt_uri"], libvirt_domain=r["libvirt_domain"],
            )
            for r in rows
        ]

    # Section: services

    def set_enabled(self, changes: Iterable[tuple[str, str, bool]]) -> None:
        """Record ``(vm_id, service key, enabled)`` changes in one transaction."""
        with self._tx() as conn:
            set_enabled(conn, changes)


def set_enabled(conn: Connection, changes: Iterable[tuple[str, str, bool]],
                present: set[tuple[str, str]] | None = None) -> None:
    """Record ``(vm_id, service key, enabled)`` changes in *conn*'s transaction.

    :param present: the ``(vm_id, service key)`` rows that exist, when the caller
        read them already (at least those of *changes*).
    """
    # One statement per kind of change, run with many parameter sets: a
    # statement built and compiled per VM made Enable-VMIntegrationService
    # on a thousand VMs spend most of its time here (bench/heartbeat_scale.py).
    wanted = {(v, s): e for v, s, e in changes}  # the last word per VM and service
    if not wanted:
        return
    c = service_settings.c
    if present is None:
        present = {(row.vm_id, row.service) for row in conn.execute(
            sa.select(c.vm_id, c.service)
            .where(c.service.in_({service for _, service in wanted})))}
    updates = [{"b_vm": v, "b_service": s, "b_enabled": e}
               for (v, s), e in wanted.items() if (v, s) in present]
    inserts = [{"vm_id": v, "service": s, "enabled": e}
               for (v, s), e in wanted.items() if (v, s) not in present]
    if updates:
        conn.execute(service_settings.update()
                     .where(c.vm_id == sa.bindparam("b_vm"))
                     .where(c.service == sa.bindparam("b_service"))
                     .values(enabled=sa.bindparam("b_enabled")), updates)
    if inserts:
        conn.execute(service_settings.insert(), inserts)


def _keep_private(database: str | None) -> None:
    # Pending KVP values and every VM's channel are in here: the manager's user only.
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        private_sqlite(Path(database))
    except OSError as exc:
        raise ConfigError(f"cannot open the database {database}: {exc.strerror or exc}") \
            from exc


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the CLI read while the manager writes; foreign keys for CASCADE.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def safe_url(url: str) -> str:
    """*url* with any password masked, for messages and logs."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "(an invalid database URL)"
