"""Fixtures of the libvirt backend's tests: a private libvirtd, and a host manager using it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.libvirtd import PrivateLibvirtd, libvirtd_missing, start_libvirtd
from vmis.api.client import ApiClient


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[PrivateLibvirtd]:
    """One private libvirtd for the whole run (tests/support/libvirtd.py)."""
    why = libvirtd_missing()
    if why is not None:
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="vmis-lv-", dir="/tmp"))
    daemon = start_libvirtd(root)
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Manager:
    """A host manager (``vmis host serve -Hypervisor URI``) in its own directory."""

    dir: Path
    process: subprocess.Popen[bytes]
    uris: tuple[str, ...]

    @property
    def uri(self) -> str:
        return self.uris[0]

    @property
    def log(self) -> str:
        return (self.dir / "host.log").read_text(errors="replace")

    def restart(self, *uris: str) -> Path:
        """Stop this manager and serve the same store again with *uris*; its directory."""
        stop(self)
        again = serve(self.dir, *uris)
        self.process, self.uris = again.process, again.uris
        return self.dir


def serve(directory: Path, *uris: str) -> Manager:
    """Start ``vmis host serve`` on *directory*'s host.db and host.sock (where
    support.lab.run_vmis looks), with a ``-Hypervisor`` for each of *uris*."""
    directory.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "vmis.cli.host", "host", "serve",
            "-Db", f"sqlite:///{directory / 'host.db'}", "-Socket", str(directory / "host.sock")]
    for uri in uris:
        argv += ["-Hypervisor", uri]
    with (directory / "host.log").open("ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    manager = Manager(directory, process, uris)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"host serve exited: {manager.log}"
        try:
            ApiClient(directory / "host.sock").call("GET", "/ping")
            return manager
        except Exception:
            assert time.monotonic() < deadline, f"host serve did not answer: {manager.log}"
            time.sleep(0.1)


def stop(manager: Manager) -> None:
    manager.process.terminate()
    try:
        manager.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        manager.process.kill()
        manager.process.wait(timeout=10)


@pytest.fixture
def manager(libvirtd: PrivateLibvirtd, short_tmp: Path) -> Iterator[Manager]:
    """A host manager connected to the private libvirtd."""
    running = serve(short_tmp / "host", libvirtd.uri)
    try:
        yield running
    finally:
        stop(running)
