"""Fleets: hosts and their leases, each VM's owner, what owners publish, requests
between hosts (docs/fleet.md).

``vms.host`` is added with ALTER TABLE ADD COLUMN on both databases, never
by copying the table (SQLite's batch mode): dropping the old ``vms`` would
cascade into every table that refers to it. VMs registered before it have
no owner; the first host manager to start on the store adopts them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _vm_id(primary_key: bool = False) -> sa.Column[str]:
    return sa.Column("vm_id", sa.String(36), sa.ForeignKey("vms.id", ondelete="CASCADE"),
                     primary_key=primary_key, nullable=False)


def upgrade() -> None:
    op.add_column("vms", sa.Column("host", sa.String(255)))
    op.create_index("ix_vms_host", "vms", ["host"])
    op.create_table(
        "hosts",
        sa.Column("name_key", sa.String(255), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("address", sa.String(1024), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("machine", sa.String(128), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("instance", sa.String(36), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "vm_reports",
        _vm_id(primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "host_requests",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("batch", sa.String(36), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        _vm_id(),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(255), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True)),
        sa.Column("finished", sa.DateTime(timezone=True)),
        sa.Column("result", sa.Text),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_host_requests_host_state", "host_requests", ["host", "state"])


def downgrade() -> None:
    op.drop_index("ix_host_requests_host_state", "host_requests")
    op.drop_table("host_requests")
    op.drop_table("vm_reports")
    op.drop_table("hosts")
    op.drop_index("ix_vms_host", "vms")
    # SQLite has had DROP COLUMN since 3.35; no copy of the table either way
    op.drop_column("vms", "host")
