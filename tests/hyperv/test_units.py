"""The systemd units of the Hyper-V daemons name our console scripts."""

from __future__ import annotations

import configparser
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "src/vmis/data/systemd"


@pytest.mark.parametrize("service", ["kvp", "vss", "fcopy"])
def test_unit(service: str) -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNITS / f"vmis-hv-{service}.service")
    assert unit["Unit"]["ConditionVirtualization"] == "microsoft"
    assert unit["Unit"]["ConditionPathExists"] == f"/dev/vmbus/hv_{service}"
    assert unit["Service"]["Type"] == "simple"
    assert unit["Service"]["KillSignal"] == "SIGTERM"
    script = f"vmis-hv-{service}-daemon"
    assert unit["Service"]["ExecStart"].split()[:2] == ["/usr/bin/env", script]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[script] == f"vmis.hyperv.cli:{service}_main"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("service", ["kvp", "vss", "fcopy"])
def test_the_units_options_are_the_daemons_parameters(service: str) -> None:
    # Installed unit files keep their GNU spellings (--pid-file ...).
    from vmis.hyperv.cli import COMMANDS
    from vmis.psargs import find_verb, parse

    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read(UNITS / f"vmis-hv-{service}.service")
    options = unit["Service"]["ExecStart"].split()[2:]
    cmd, rest = find_verb(COMMANDS, [service, *options])
    assert parse(cmd, rest)["PidFile"] == f"/run/vmis-hv-{service}.pid"
