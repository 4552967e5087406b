"""A host manager in a process of its own, started as an administrator starts one:
``vmis host serve`` with the parameters given (``-Hypervisor URI`` for libvirt)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vmis.api.client import ApiClient

__all__ = ["Manager", "serve", "stop"]


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
