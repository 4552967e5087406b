"""The store's schema: its tables, and bringing a database up to them.

The tables are the registry's (vmis.host.store), the API accounts'
(vmis.host.accounts) and each catalogued host half's
(``HostService.tables``), all on vmis.services.host_half.metadata.
A database, SQLite or PostgreSQL, is brought to them by the Alembic
revisions in vmis.host.migrations, applied when a host manager opens its
store: a new database gets every table, an older one the revisions it
lacks, and a store made before migrations existed is taken over as it is.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

from vmis.host import migrations
from vmis.services.catalog import CATALOG
from vmis.services.host_half import metadata

__all__ = ["HEAD", "target_metadata", "upgrade"]

#: the newest revision: what a store is brought to
HEAD = "head"
#: PostgreSQL advisory lock key held while one manager migrates a shared store
_MIGRATION_LOCK = 0x766D6973  # "vmis"


def target_metadata() -> sa.MetaData:
    """Every table of the store, the host halves' included."""
    import vmis.host.accounts  # the API's tokens and audit log
    import vmis.host.fleet.tables
    import vmis.host.store  # noqa: F401  (the registry's tables, the fleet's)

    for spec in CATALOG:
        spec.half("host")  # a host half's module defines its tables
    return metadata


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config


def upgrade(engine: Engine, revision: str = HEAD) -> None:
    """Apply the revisions the database lacks, in one transaction.

    Managers sharing a PostgreSQL store take turns (an advisory lock), so a
    fleet's managers starting together migrate it once.
    """
    config = _config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
