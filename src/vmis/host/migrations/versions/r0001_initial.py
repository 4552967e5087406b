"""The schema of vmis 0.1: the registry and the services' tables.

A store made before migrations existed has some or all of these tables
already (each made by ``create_all`` as the code first used it): only the
missing ones are created, so such a store is taken over as it is.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _vm_id(primary_key: bool = False) -> sa.Column[str]:
    return sa.Column("vm_id", sa.String(36), sa.ForeignKey("vms.id", ondelete="CASCADE"),
                     primary_key=primary_key, nullable=False)


def _tables() -> list[tuple[str, list[sa.Column[Any]], dict[str, Any]]]:
    return [
        ("vms", [
            sa.Column("id", sa.String(36), primary_key=True),
            sa.Column("name", sa.String(255), nullable=False),
            sa.Column("name_key", sa.String(255), nullable=False, unique=True),
            sa.Column("channel", sa.String(1024), nullable=False),
            sa.Column("qmp", sa.String(1024)),
            sa.Column("kind", sa.String(16), nullable=False, server_default="external"),
            sa.Column("heartbeat_interval_ms", sa.Integer, nullable=False,
                      server_default="2000"),
            sa.Column("heartbeat_latency_ms", sa.Integer, nullable=False, server_default="1000"),
            sa.Column("heartbeat_error_threshold", sa.Integer, nullable=False,
                      server_default="2"),
            sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        ], {}),
        ("service_settings", [
            _vm_id(primary_key=True),
            sa.Column("service", sa.String(32), primary_key=True),
            sa.Column("enabled", sa.Boolean, nullable=False),
        ], {}),
        ("kvp_pending", [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            _vm_id(),
            sa.Column("pool", sa.Integer, nullable=False),
            sa.Column("key", sa.Text, nullable=False),
            sa.Column("value", sa.Text),
            sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        ], {"sqlite_autoincrement": True}),
        ("timesync_settings", [
            _vm_id(primary_key=True),
            sa.Column("interval_ms", sa.Integer, nullable=False),
        ], {}),
        ("vss_settings", [
            _vm_id(primary_key=True),
            sa.Column("snapshot_command", sa.Text),
            sa.Column("snapshot_timeout", sa.Float, nullable=False, server_default="600.0"),
        ], {}),
        ("vss_checkpoints", [
            sa.Column("id", sa.String(36), primary_key=True),
            _vm_id(),
            sa.Column("name", sa.String(255), nullable=False),
            sa.Column("snapshot_type", sa.String(16), nullable=False),
            sa.Column("taken", sa.String(16)),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("error", sa.Text),
            sa.Column("created", sa.DateTime(timezone=True), nullable=False),
            sa.Column("duration", sa.Float),
            sa.Column("report", sa.Text),
        ], {}),
    ]


#: table -> its indexes (name, columns)
_INDEXES = {"kvp_pending": [("ix_kvp_pending_vm_id", ["vm_id"])],
            "vss_checkpoints": [("ix_vss_checkpoints_vm_id", ["vm_id"])]}


def upgrade() -> None:
    present = set(sa.inspect(op.get_bind()).get_table_names())
    for name, columns, options in _tables():
        if name not in present:
            op.create_table(name, *columns, **options)
            for index, on in _INDEXES.get(name, []):
                op.create_index(index, name, on)


def downgrade() -> None:
    for name, _, _ in reversed(_tables()):
        op.drop_table(name)
