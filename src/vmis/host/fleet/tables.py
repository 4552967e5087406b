"""The fleet's tables in the shared store: hosts and their leases, what owners
publish for the other hosts to read, and the requests one host leaves for another.

The VMs' owner is a column of the registry's own table (``vms.host``,
vmis.host.store); the revision that adds all of it is ``r0004_fleet``.
Times that decide a lease come from the database's clock (:func:`db_now`),
never from a host's own, so hosts whose clocks disagree still agree on
which lease has lapsed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from vmis.services.host_half import metadata

__all__ = ["db_now", "host_requests", "hosts", "service_policies", "vm_reports", "vm_tags"]

hosts = sa.Table(
    "hosts",
    metadata,
    #: lower-case name: host names are case-insensitive, as in Hyper-V
    sa.Column("name_key", sa.String(255), primary_key=True),
    #: as the host manager was given it (-ComputerName)
    sa.Column("name", sa.String(255), nullable=False),
    #: the machine it runs on (its host name)
    sa.Column("address", sa.String(1024), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    #: the machine and boot (vmis.host.fleet.hosts.machine_id): a restart on the same
    #: machine takes the name over at once when the pid below is gone
    sa.Column("machine", sa.String(128), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    #: one per run of a manager: a renewal by any other run is refused
    sa.Column("instance", sa.String(36), nullable=False),
    sa.Column("started", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    #: the host is Responding until then (the database's clock)
    sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
)

vm_reports = sa.Table(
    "vm_reports",
    metadata,
    sa.Column("vm_id", sa.String(36), sa.ForeignKey("vms.id", ondelete="CASCADE"),
              primary_key=True),
    #: ``vm`` (a Get-VM row), ``info`` (a ``vm list`` row), ``since`` (when each
    #: service's status last changed), ``services``
    #: (Get-VMIntegrationService rows), ``kvp`` (the guest's pools as last pushed)
    sa.Column("kind", sa.String(16), primary_key=True),
    #: JSON
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
)

host_requests = sa.Table(
    "host_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    #: the requests of one command (one per VM), so a caller collects them together
    sa.Column("batch", sa.String(36), nullable=False),
    #: the host that applies it: the VM's owner when it was made (name_key)
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("vm_id", sa.String(36), sa.ForeignKey("vms.id", ondelete="CASCADE"),
              nullable=False),
    #: an action of vmis.host.fleet.actions (``services``, ``kvp``, ``stop`` ...)
    sa.Column("action", sa.String(32), nullable=False),
    #: JSON
    sa.Column("params", sa.Text, nullable=False),
    #: ``pending`` -> ``running`` -> ``done``
    sa.Column("state", sa.String(16), nullable=False),
    #: the host whose command made it, told when it is done (name_key)
    sa.Column("requested_by", sa.String(255), nullable=False),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started", sa.DateTime(timezone=True)),
    sa.Column("finished", sa.DateTime(timezone=True)),
    #: JSON: the owner's entries, as its own command would have answered
    sa.Column("result", sa.Text),
    sa.Index("ix_host_requests_host_state", "host", "state"),
    # ids are never reused: a caller tells its own request's fate by id
    sqlite_autoincrement=True,
)


#: a VM's tags (Set-VM -Tag), which policies select VMs by
vm_tags = sa.Table(
    "vm_tags",
    metadata,
    sa.Column("vm_id", sa.String(36), sa.ForeignKey("vms.id", ondelete="CASCADE"),
              primary_key=True),
    #: lower-case: tag names are case-insensitive, as VM names are
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("value", sa.String(1024), nullable=False),
)

#: Set-VMIntegrationServicePolicy (vmis.host.fleet.policy): which services the VMs it
#: selects have, and the least agent version
service_policies = sa.Table(
    "service_policies",
    metadata,
    #: lower-case name
    sa.Column("name_key", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    #: the hosts it holds on (-ComputerName pattern), the VMs (-VMName pattern);
    #: NULL: every one
    sa.Column("computer", sa.String(255)),
    sa.Column("vm_name", sa.String(255)),
    #: JSON: {key: value} every one of which a VM's tags must have
    sa.Column("tags", sa.Text, nullable=False),
    #: JSON: service keys (vmis.services.catalog) it enables, and those it disables
    sa.Column("enable", sa.Text, nullable=False),
    sa.Column("disable", sa.Text, nullable=False),
    sa.Column("minimum_version", sa.String(64)),
    sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
)


def db_now(conn: Connection, after: float = 0.0) -> Any:
    """The database's time now (plus *after* seconds), as an SQL expression.

    PostgreSQL's clock on a shared store; on SQLite (one host) this
    process's, which is the only one that reads it.
    """
    if conn.dialect.name == "postgresql":
        now = sa.func.now()
        return now + timedelta(seconds=after) if after else now
    return sa.literal(datetime.now(UTC) + timedelta(seconds=after), sa.DateTime(timezone=True))
