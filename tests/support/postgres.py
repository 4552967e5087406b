"""A real PostgreSQL server for the tests: one cluster per test session, a database per test.

initdb and pg_ctl refuse to run as root, so the cluster belongs to the
``postgres`` user and listens only on a Unix socket in a private directory
(no TCP port). dev/setup --test installs Debian's ``postgresql``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]))
    if not found:
        pytest.fail("PostgreSQL is not installed: run dev/setup --test (Debian's postgresql)")
    return Path(found[-1]).parent


def _as_postgres(*argv: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)


class Cluster:
    """A running cluster; :meth:`database` makes an empty database on it."""

    def __init__(self, socket_dir: Path) -> None:
        self.socket_dir = socket_dir
        self._admin = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}"

    def database(self) -> str:
        name = f"vmis_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        return self.url(name)

    def dispose(self) -> None:
        self._admin.dispose()


@contextmanager
def running_cluster(options: str = "") -> Iterator[Cluster]:
    """A PostgreSQL cluster on a private socket directory, stopped and removed after
    (the tests' fixture below; bench/fleet_requests.py, bench/fleet_scale.py).

    :param options: more server options (``-c max_connections=400``).
    """
    bin_dir = _binaries()
    base = Path(tempfile.mkdtemp(prefix="vmis-pg-", dir="/tmp"))
    data, sockets = base / "data", base / "run"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
    os.chmod(sockets, 0o700)
    subprocess.run(_as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                                "-U", "postgres", "--no-sync"),
                   check=True, capture_output=True)
    subprocess.run(_as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-l",
                                str(base / "server.log"), "-o",
                                f"-k {sockets} -h '' -c fsync=off {options}", "-w", "start"),
                   check=True, capture_output=True)
    cluster = Cluster(sockets)
    try:
        yield cluster
    finally:
        cluster.dispose()
        subprocess.run(_as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                    "-w", "stop"), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster on a private socket directory, for the whole test session."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: Cluster) -> str:
    """The URL of a new, empty PostgreSQL database."""
    return postgres_cluster.database()
