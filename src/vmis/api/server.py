"""``vmis host serve``: the host manager with its API on a Unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from vmis.api.app import create_app
from vmis.errors import ConfigError
from vmis.host.manager import HostManager
from vmis.host.private import private_dir
from vmis.host.store import Store, safe_url
from vmis.qemu.hypervisor import QemuHypervisor

__all__ = ["bind_socket", "data_dir_for", "serve"]

#: the data directory of a manager whose database is not a local SQLite file
DEFAULT_DATA_DIR = Path("/var/lib/vmis")

_log = logging.getLogger("vmis.host")


class _Server(uvicorn.Server):
    # uvicorn captures SIGTERM/SIGINT and re-raises them once it has stopped,
    # which would end the process before the manager closes its sessions;
    # serve() handles the signals itself instead.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(path: Path) -> socket.socket:
    """Bind the API socket with mode 0600 from the start (uvicorn would make it 0666).

    :raise ConfigError: When another manager is answering there already.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise ConfigError(f"a host manager is already running on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(128)
    return sock


def raise_file_limit() -> None:
    """Raise the open-files soft limit to the hard limit: one channel per VM."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _sqlite_file(db_url: str) -> Path | None:
    if db_url.startswith("sqlite:///") and db_url != "sqlite:///:memory:":
        return Path(db_url.removeprefix("sqlite:///")).absolute()
    return None


def data_dir_for(db_url: str) -> Path:
    """Where the manager keeps its files: the SQLite database's directory, else
    ``$VMIS_DATA_DIR`` (default ``/var/lib/vmis``). The setup disk is built in
    ``<data dir>/setup``, VMs vmis launches live in ``<data dir>/machines/<name>``."""
    database = _sqlite_file(db_url)
    if database is not None:
        return database.parent
    return Path(os.environ.get("VMIS_DATA_DIR") or DEFAULT_DATA_DIR)


def _private_store_dir(db_url: str) -> None:
    # The store's directory holds the database and its WAL: the manager's user only
    # (vmis.host.private). Another database's data directory is made when needed.
    database = _sqlite_file(db_url)
    if database is None:
        return
    try:
        private_dir(database.parent)
    except OSError as exc:
        raise ConfigError(f"cannot create the data directory {database.parent}: "
                          f"{exc.strerror or exc}") from None


async def serve(db_url: str, socket_path: Path, ready: asyncio.Event | None = None,
                host_name: str | None = None) -> None:
    """Run the manager until SIGTERM/SIGINT, cancellation, or another manager taking
    its host name over (docs/fleet.md).

    :param host_name: this host's name in its fleet (default: the machine's).
    """
    raise_file_limit()
    _private_store_dir(db_url)
    store = Store(db_url)
    sock = bind_socket(socket_path)
    data_dir = data_dir_for(db_url)
    manager = HostManager(store, hypervisors=[QemuHypervisor(data_dir)], data_dir=data_dir,
                          host_name=host_name)
    try:
        await manager.start()
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        raise
    app = create_app(manager)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    _log.info("host manager %s listening on %s (database %s)", manager.fleet.me.name,
              socket_path, safe_url(db_url))

    async def stop_when_lost() -> None:
        await manager.fleet.lost.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_when_lost())
    try:
        serve_task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serve_task.done():
            await asyncio.sleep(0.02)
        if ready is not None:
            ready.set()
        await serve_task
    finally:
        watcher.cancel()
        await manager.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
