"""Each VM names the kind of guest agent it runs: ``vms.guest_agent`` (vmis or qemu-ga).

A VM registered before this revision runs the vmis agent, the only kind
there was: the column's default says so. As revision 0001 does for tables,
a store that has the column already (its tables made by this code's
``create_all``) is taken over as it is.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("vms")}
    if "guest_agent" in columns:
        return
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("guest_agent", sa.String(16), nullable=False,
                                   server_default="vmis"))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("guest_agent")
