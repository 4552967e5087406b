"""The store's schema: Alembic revisions bring SQLite and PostgreSQL to the tables the code uses.

docs/architecture.md §5. The same revisions run on both databases; a store
made before migrations existed is taken over with its data; the host
managers of a fleet share one PostgreSQL store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from support.pair import eventually, host_guest_pair

from vmis.errors import ConfigError
from vmis.host import migrations
from vmis.host.migrations.versions.r0001_initial import _tables as initial_tables
from vmis.host.schema import target_metadata, upgrade
from vmis.host.store import Store
from vmis.services.kvp.host import KvpHost


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'host.db'}"
    return request.getfixturevalue("postgres_url")


def newest_revision() -> str:
    """The head of the revisions in vmis/host/migrations/versions/."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def schema_differences(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn)
        return compare_metadata(context, target_metadata())


def test_the_migrated_schema_is_the_codes_own(db_url):
    store = Store(db_url)
    assert schema_differences(store.engine) == []
    with store.engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    assert version == newest_revision()
    Store(db_url)  # opening it again changes nothing
    assert schema_differences(store.engine) == []


def test_a_store_made_before_migrations_is_taken_over_with_its_data(tmp_path):
    url = f"sqlite:///{tmp_path / 'host.db'}"
    engine = sa.create_engine(url)
    # what a manager of 0.1 made first: its tables as they were then (revision 0001's)
    old = sa.MetaData()
    for name, columns, options in initial_tables():
        if name in ("vms", "service_settings"):
            sa.Table(name, old, *columns, **options)
    old.create_all(engine)
    insert_old_vm(engine)
    store = Store(url)
    assert [vm.name for vm in store.list_vms()] == ["OldVM"]
    assert schema_differences(store.engine) == []


def insert_old_vm(engine: sa.Engine) -> None:
    """A VM row as vmis 0.1 wrote it (the columns of revision 0001 only)."""
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO vms (id, name, name_key, channel, kind, heartbeat_interval_ms, "
            "heartbeat_latency_ms, heartbeat_error_threshold, created) VALUES "
            "('id-1', 'OldVM', 'oldvm', 'unix:/x', 'external', 2000, 1000, 2, "
            "'2026-11-01 00:00:00')"))


def test_a_store_of_revision_0001_gets_the_libvirt_columns_and_keeps_its_vms(tmp_path):
    url = f"sqlite:///{tmp_path / 'host.db'}"
    engine = sa.create_engine(url)
    upgrade(engine, "0001")
    insert_old_vm(engine)
    store = Store(url)
    (old,) = store.list_vms()
    assert (old.name, old.libvirt_uri, old.libvirt_domain) == ("OldVM", None, None)
    new = store.add_vm("LvVM", "unix:/y", kind="libvirt", libvirt_uri="qemu:///system",
                       libvirt_domain="27479ace-c680-484f-90bd-43eb0462b9e3")
    assert store.get_vm("lvvm") == new and new.libvirt_uri == "qemu:///system"
    assert schema_differences(store.engine) == []


def test_a_store_of_revision_0001_gets_the_guest_agent_column_with_its_vms(db_url):
    engine = sa.create_engine(db_url)
    upgrade(engine, "0001")  # a store as vmis 0.1 left it
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO vms (id, name, name_key, channel, kind, heartbeat_interval_ms, "
            "heartbeat_latency_ms, heartbeat_error_threshold, created) VALUES "
            "('id-1', 'OldVM', 'oldvm', 'unix:/x', 'external', 2000, 1000, 2, "
            "'2026-11-01 00:00:00')"))
    store = Store(db_url)
    [vm] = store.list_vms()
    assert (vm.name, vm.guest_agent) == ("OldVM", "vmis")  # the only kind there was
    assert schema_differences(store.engine) == []
    assert store.add_vm("QgaVM", "unix:/y", guest_agent="qemu-ga").guest_agent == "qemu-ga"


async def test_a_host_manager_runs_on_postgresql(short_tmp, postgres_url):
    async with host_guest_pair(short_tmp, db_url=postgres_url) as pair:
        rows = (await pair.api.get("/v1/services", params={"vm": "DemoVM"})).json()
        assert {r["PrimaryStatusDescription"] for r in rows if r["Enabled"]} == {"OK"}
        await pair.manager.set_enabled(["DemoVM"], ["VSS"], False)
        result = await pair.manager.service(KvpHost).set(["DemoVM"], "role", "db")
        assert result[0]["Delivered"]
        await pair._stop_agent()
        await eventually(lambda: not pair.session.connected)
        pending = await pair.manager.service(KvpHost).set(["DemoVM"], "next", "1")
        assert pending[0]["Pending"]
    store = Store(postgres_url)  # what the manager wrote is in the database
    [vm] = store.list_vms()
    assert vm.enabled["vss"] is False
    with store.engine.connect() as conn:
        keys = conn.execute(sa.text("SELECT key FROM kvp_pending")).scalars().all()
    assert keys == ["next"]
    assert store.remove_vm("DemoVM").name == "DemoVM"
    with store.engine.connect() as conn:  # ON DELETE CASCADE took the VM's rows along
        assert conn.execute(sa.text("SELECT count(*) FROM kvp_pending")).scalar() == 0


def test_a_password_in_the_url_is_never_shown(postgres_cluster):
    url = postgres_cluster.url("nosuchdb").replace("postgres@", "postgres:s3cr3t@")
    with pytest.raises(ConfigError) as error:
        Store(url)
    assert "s3cr3t" not in str(error.value) and "***" in str(error.value)
