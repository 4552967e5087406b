"""``vmis host serve``: the host manager with its API on a Unix socket, and on TCP if asked.

The Unix socket (mode 0600) is always there and needs no token: whoever can
open it is the manager's user. ``-Listen HOST:PORT`` serves the same API
over TCP, where every call needs a token (vmis.api.access): with TLS
(``-CertificatePath``/``-KeyPath``, or ``-SelfSignedCertificate``), or as
plain HTTP on a loopback address only, since a token sent in clear over a
network is a token given away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from vmis.api.access import local_user, on_unix_socket
from vmis.api.app import create_app
from vmis.api.certs import TlsFiles, fingerprint, self_signed
from vmis.api.remote import DEFAULT_PORT
from vmis.errors import ConfigError
from vmis.host.manager import HostManager
from vmis.host.private import private_dir
from vmis.host.store import Store, safe_url
from vmis.qemu.hypervisor import QemuHypervisor
from vmis.services.hypervisor import Hypervisor

__all__ = ["Listen", "bind_socket", "data_dir_for", "serve"]

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


@dataclass(frozen=True, slots=True)
class Listen:
    """What ``-Listen`` and the TLS parameters ask for.

    :param address: ``HOST:PORT``, ``[IPv6]:PORT``, or ``HOST`` (port 8443).
    :param cert: with *key*: the administrator's certificate (PEM, chain after it).
    :param self_signed: make (once) and use a self-signed pair in the data directory.
    """

    address: str
    cert: Path | None = None
    key: Path | None = None
    self_signed: bool = False

    def host_port(self) -> tuple[str, int]:
        """:raise ConfigError: For an address that is not one."""
        text = self.address.strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port_text = rest.removeprefix(":")
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        else:
            host, port_text = text, ""
        try:
            port = int(port_text) if port_text else DEFAULT_PORT
        except ValueError:
            port = -1
        if not host or not 0 <= port <= 65535:
            raise ConfigError(f"-Listen {self.address}: give HOST:PORT (127.0.0.1:8443, "
                              "[::1]:8443, 0.0.0.0:8443)")
        return host, port

    def tls(self, data_dir: Path) -> TlsFiles | None:
        """The certificate to serve, made now if asked and missing.

        :raise ConfigError: For a certificate without its key, or both ways at once,
            or plain HTTP on an address that is not loopback.
        """
        if (self.cert is None) != (self.key is None):
            raise ConfigError("-CertificatePath and -KeyPath go together")
        if self.cert is not None and self.self_signed:
            raise ConfigError("-SelfSignedCertificate or -CertificatePath/-KeyPath, not both")
        host, _ = self.host_port()
        if self.cert is not None and self.key is not None:
            files = TlsFiles(self.cert.absolute(), self.key.absolute())
        elif self.self_signed:
            files = self_signed(data_dir, host)
        elif not _is_loopback(host):
            raise ConfigError(f"-Listen {self.address} is not a loopback address: tokens would "
                              "cross the network in clear; add -SelfSignedCertificate or "
                              "-CertificatePath and -KeyPath")
        else:
            return None
        files.check()
        return files


def _is_loopback(host: str) -> bool:
    """Whether every address *host* names is a loopback one."""
    import ipaddress

    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback
               for info in infos)


def bind_tcp(host: str, port: int) -> socket.socket:
    """The listening TCP socket of ``-Listen``.

    :raise ConfigError: When the address cannot be bound (in use, not this machine's).
    """
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


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


def hypervisors_for(libvirt_uris: Sequence[str], data_dir: Path) -> list[Hypervisor]:
    """The manager's backends: one per libvirt connection, asked first (a libvirt
    domain may also have a QMP socket of its own), then QEMU's for every VM with QMP.

    :raise ConfigError: When libvirt URIs are given and libvirt-python is missing.
    """
    backends: list[Hypervisor] = []
    if libvirt_uris:
        from vmis.libvirt.connection import load_libvirt
        from vmis.libvirt.hypervisor import LibvirtHypervisor

        load_libvirt()
        backends += [LibvirtHypervisor(uri, data_dir) for uri in dict.fromkeys(libvirt_uris)]
    return [*backends, QemuHypervisor(data_dir)]


def _server(app: ASGIApp, tls: TlsFiles | None = None) -> _Server:
    # proxy_headers off: the audit log's client address is the peer's, not a header's
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                            proxy_headers=False,
                            ssl_certfile=tls.cert if tls else None,
                            ssl_keyfile=tls.key if tls else None)
    return _Server(config)


def _stop(servers: list[_Server]) -> None:
    for server in servers:
        server.should_exit = True


async def serve(db_url: str, socket_path: Path, ready: asyncio.Event | None = None, *,
                listen: Listen | None = None, libvirt_uris: Sequence[str] = (),
                host_name: str | None = None) -> None:
    """Run the manager until SIGTERM/SIGINT, cancellation, or another manager taking
    its host name over (docs/fleet.md).

    :param host_name: this host's name in its fleet (default: the machine's).

    :param libvirt_uris: libvirt connections whose domains the manager drives
        (``host serve -Hypervisor``).
    :raise ConfigError: For a bad -Listen or certificate, before anything starts.
    """
    raise_file_limit()
    _private_store_dir(db_url)
    data_dir = data_dir_for(db_url)
    hypervisors = hypervisors_for(libvirt_uris, data_dir)
    tls = listen.tls(data_dir) if listen is not None else None
    tcp = bind_tcp(*listen.host_port()) if listen is not None else None
    store = Store(db_url)
    sock = bind_socket(socket_path)
    manager = HostManager(store, hypervisors=hypervisors, data_dir=data_dir,
                          host_name=host_name)
    try:
        await manager.start()
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        raise
    app = create_app(manager)
    servers = [_server(on_unix_socket(app, local_user()))]
    if tcp is not None:
        servers.append(_server(app, tls))
    loop = asyncio.get_running_loop()

    def stop() -> None:
        # The event streams end first: the server waits for open responses.
        manager.end_events()
        _stop(servers)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    _log.info("host manager %s listening on %s (database %s)", manager.fleet.me.name,
              socket_path, safe_url(db_url))
    tasks = [asyncio.create_task(servers[0].serve(sockets=[sock]))]
    if tcp is not None:
        tasks.append(asyncio.create_task(servers[1].serve(sockets=[tcp])))
        _log_tcp(tcp, tls)

    async def stop_when_lost() -> None:
        await manager.fleet.lost.wait()
        stop()

    watcher = asyncio.create_task(stop_when_lost())
    try:
        while not all(s.started for s in servers) and not any(t.done() for t in tasks):
            await asyncio.sleep(0.02)
        if ready is not None:
            ready.set()
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        _stop(servers)  # one ended (a failure): end the other too
        await asyncio.gather(*tasks)
    finally:
        watcher.cancel()
        await manager.close()
        for backend in hypervisors:
            close = getattr(backend, "close", None)
            if close is not None:
                close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()


def _log_tcp(tcp: socket.socket, tls: TlsFiles | None) -> None:
    host, port = tcp.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if tls is None:
        _log.info("API on http://%s:%d (plain HTTP: loopback only)", shown, port)
    else:
        _log.info("API on https://%s:%d (certificate %s, SHA-256 fingerprint %s)", shown, port,
                  tls.cert, fingerprint(tls.cert))
