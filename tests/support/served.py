"""A real ``vmis host serve -Listen 127.0.0.1:0`` in a subprocess, and clients of it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vmis.api.client import ApiClient
from vmis.api.remote import Remote

_URL = re.compile(r"API on (https?://\S+)")
_FINGERPRINT = re.compile(r"SHA-256 fingerprint ([0-9A-F:]+)")


@dataclass
class Served:
    url: str
    socket: Path
    directory: Path
    log: Path
    fingerprint: str | None

    def local(self) -> ApiClient:
        """A client on the manager's Unix socket (no token)."""
        return ApiClient(self.socket)

    def token(self, name: str, role: str) -> str:
        with self.local() as api:
            return str(api.call("POST", "/tokens", json={"name": name, "role": role})["Token"])

    def remote(self, token: str | None, **trust: str) -> ApiClient:
        """A client over TCP; *trust*: ``ca`` or ``pin``."""
        return ApiClient(remote=Remote.parse(self.url, token, trust.get("ca"), trust.get("pin")))

    def env(self, token: str | None = None, **extra: str) -> dict[str, str]:
        """The environment of a ``vmis`` command line that talks to this manager over TCP."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("VMIS_") or k == "VMIS_DEBUG"}
        env.update(VMIS_URL=self.url, VMIS_SOCKET=str(self.directory / "none.sock"), **extra)
        if token:
            env["VMIS_TOKEN"] = token
        return env


@contextmanager
def served_manager(directory: Path, *args: str, env: dict[str, str] | None = None,
                   timeout: float = 90) -> Iterator[Served]:
    """``vmis host serve`` on a store in *directory*, its API on a free loopback port too.

    :param args: more parameters of host serve (``-SelfSignedCertificate`` ...).
    """
    log = directory / "host.log"
    socket = directory / "host.sock"
    argv = [sys.executable, "-m", "vmis.cli.host", "host", "serve", "-Db",
            f"sqlite:///{directory / 'host.db'}", "-Socket", str(socket),
            "-Listen", "127.0.0.1:0", *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + timeout
        while not (found := _URL.search(log.read_text(errors="replace"))):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"host serve did not start:\n{log.read_text()}")
            time.sleep(0.05)
        fingerprint = _FINGERPRINT.search(log.read_text())
        while not socket.exists():
            time.sleep(0.02)
        yield Served(found[1], socket, directory, log, fingerprint and fingerprint[1])
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
