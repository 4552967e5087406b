"""Fixtures of the libvirt backend's tests: a private libvirtd, and a host manager using it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.hostserve import Manager, serve, stop
from support.libvirtd import PrivateLibvirtd, libvirtd_missing, start_libvirtd


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


@pytest.fixture
def manager(libvirtd: PrivateLibvirtd, short_tmp: Path) -> Iterator[Manager]:
    """A host manager connected to the private libvirtd."""
    running = serve(short_tmp / "host", libvirtd.uri)
    try:
        yield running
    finally:
        stop(running)
