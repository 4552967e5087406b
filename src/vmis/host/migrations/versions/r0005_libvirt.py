"""VMs libvirt runs: the connection URI and domain UUID on the registry's row.

A store whose ``vms`` table already has the columns (made by ``create_all``
from this code before it was migrated, as revision 0001 allows) keeps them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_COLUMNS = (("libvirt_uri", 1024), ("libvirt_domain", 36))


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("vms")}
    for name, length in _COLUMNS:
        if name not in present:
            op.add_column("vms", sa.Column(name, sa.String(length)))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
