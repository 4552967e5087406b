"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator
import shutil
import tempfile
from pathlib import Path

import pytest

from support.lab import start_lab
from vmis.lab.lab import Lab

pytest_plugins = ["support.postgres", "support.qga_sandbox"]


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
