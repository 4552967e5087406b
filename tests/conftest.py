"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from support.lab import start_lab
from vmis.lab.lab import Lab

pytest_plugins = ["support.postgres", "support.qga_sandbox"]

# A suite started in the background by a shell without job control (`cmd &` in a
# script, as CI runners may) inherits SIGINT ignored, and so would every command
# the tests start: the Ctrl-C tests' commands would never stop. A handler of our
# own is reset to the default at exec, so the children get Python's usual one.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: Unix socket paths hold at most 107 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="vmis-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def lab_dir(short_tmp: Path) -> Iterator[Path]:
    """A lab directory torn down (processes stopped) after the test."""
    directory = short_tmp / "lab"
    yield directory
    Lab(directory).down(None)


@pytest.fixture
def lab(lab_dir: Path) -> Lab:
    """A running lab with DemoVM up and its heartbeat OK."""
    return start_lab(lab_dir)
