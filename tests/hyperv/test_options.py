"""The daemons' command lines: the C daemons' -n/--no-daemon and -h, vmis's parameters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vmis.hyperv.cli import main

WAIT = 30.0


@pytest.mark.parametrize("word", ["-h", "--help", "-?"])
def test_help(word: str, capsys):
    assert main(["kvp", word], prog="vmis-hv-kvp-daemon") == 0
    out = capsys.readouterr().out
    assert out.startswith("kvp [-Device <str>]") and "-NoDaemon" in out


def test_help_without_a_service(capsys):
    assert main(["-h"]) == 0
    assert "kvp|vss|fcopy" in capsys.readouterr().out
    assert main([]) == 2


@pytest.mark.parametrize("spelling", [["-n"], ["--no-daemon"], ["-NoDaemon"]])
def test_no_daemon_is_accepted_and_the_daemon_stays_in_the_foreground(tmp_path: Path,
                                                                        spelling: list[str]):
    # The device is missing: the daemon gets as far as opening it, in this process.
    done = subprocess.run(
        [sys.executable, "-m", "vmis.hyperv", "fcopy", *spelling, "-Device",
         str(tmp_path / "nope"), "--NO-PID-FILE"],
        capture_output=True, text=True, timeout=WAIT, check=False)
    assert done.returncode == 1 and "cannot open" in done.stderr, done.stderr


def test_an_unknown_option_is_one_line_and_exit_2(capsys):
    assert main(["vss", "--frobnicate"], prog="vmis-hv-vss-daemon") == 2
    err = capsys.readouterr().err
    assert err == ("vmis-hv-vss-daemon: vss: a parameter cannot be found that matches "
                   "parameter name 'frobnicate'.\n")
