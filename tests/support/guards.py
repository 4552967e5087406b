"""Fixtures that keep tests from touching this machine's clock or power."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmis.guest.adapters import LabPower, SystemClock, SystemPower

#: a sitecustomize that refuses clock setters in every Python process it reaches
GUARD_DIR = Path(__file__).parents[1] / "services" / "timesync" / "guard"


@pytest.fixture(autouse=True)
def real_clock_setters_refused(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every real clock setter (and power switch) in this process refuses and is recorded."""
    calls: list[str] = []

    def refuse(name: str):
        def call(*args, **kwargs):
            calls.append(name)
            raise PermissionError(f"test guard: {name} would touch this machine")
        return call

    monkeypatch.setattr(time, "clock_settime", refuse("time.clock_settime"))
    monkeypatch.setattr(time, "clock_settime_ns", refuse("time.clock_settime_ns"))
    for cls, names in ((SystemClock, ("step", "slew")), (SystemPower, ("poweroff", "reboot")),
                       (LabPower, ("poweroff", "reboot"))):
        for name in names:
            monkeypatch.setattr(cls, name, refuse(f"{cls.__name__}.{name}"))
    yield calls
    assert calls == [], f"a real clock or power setter was called: {calls}"


@pytest.fixture
def guarded_processes(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Python processes started from now on on this machine load the clock guard (not a lab
    VM's agent: its sandbox clears the environment and has no capabilities); returns
    its log file."""
    log = short_tmp / "clock-guard.log"
    monkeypatch.setenv("VMIS_TEST_CLOCK_GUARD", str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(GUARD_DIR), os.environ.get("PYTHONPATH", "")) if p))
    return log
