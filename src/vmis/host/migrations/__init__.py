"""The store's schema migrations (Alembic), for SQLite and PostgreSQL alike.

``versions/`` holds one revision per schema change, oldest first; the host
manager applies what is missing when it opens its store
(:func:`vmis.host.schema.upgrade`). A change to a table (the registry's or a
host half's, vmis.services.host_half.metadata) is a new revision here: write
it with ``op`` calls (batch mode on SQLite), never by importing the live
tables, so a revision stays what it was. tests/host/test_schema.py checks
that the migrated schema is the tables' own, on both databases.
"""
