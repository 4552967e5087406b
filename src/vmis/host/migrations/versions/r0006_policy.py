"""Desired-state policy: VMs' tags and the integration service policies that select
VMs by host, name and tags (docs/fleet.md §5).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vm_tags",
        sa.Column("vm_id", sa.String(36), sa.ForeignKey("vms.id", ondelete="CASCADE"),
                  primary_key=True, nullable=False),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("value", sa.String(1024), nullable=False),
    )
    op.create_table(
        "service_policies",
        sa.Column("name_key", sa.String(255), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("computer", sa.String(255)),
        sa.Column("vm_name", sa.String(255)),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("enable", sa.Text, nullable=False),
        sa.Column("disable", sa.Text, nullable=False),
        sa.Column("minimum_version", sa.String(64)),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("service_policies")
    op.drop_table("vm_tags")
