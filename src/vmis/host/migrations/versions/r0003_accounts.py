"""API accounts: tokens with roles, and the audit log of state-changing calls.

vmis.host.accounts holds the live tables; docs/api.md §2 what they are for.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("name_key", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("account", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("client", sa.String(255), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("route", sa.String(255), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("vms", sa.Text, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_log_time", "audit_log", ["time"])
    op.create_table(
        "audit_vms",
        sa.Column("audit_id", sa.Integer, sa.ForeignKey("audit_log.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("vm_key", sa.String(255), primary_key=True),
    )
    op.create_index("ix_audit_vms_vm_key", "audit_vms", ["vm_key"])


def downgrade() -> None:
    op.drop_table("audit_vms")
    op.drop_table("audit_log")
    op.drop_table("api_tokens")
