"""``python -m vmis.qemu.image``'s command line (no image is built)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vmis.qemu.image.__main__ import main


@pytest.mark.parametrize("words", [
    ["--cache-dir", "{cache}", "-v", "show"],
    ["show", "-CacheDir", "{cache}"],
    ["--CACHE-DIR={cache}", "show", "--verbose"],
])
def test_options_before_or_after_the_command(words: list[str], tmp_path: Path, capsys):
    (tmp_path / "images/base-1").mkdir(parents=True)
    assert main([w.format(cache=tmp_path) for w in words]) == 0
    (shown,) = json.loads(capsys.readouterr().out)
    assert shown["directory"] == str(tmp_path / "images/base-1") and "error" in shown


def test_help_and_usage_errors(capsys):
    assert main(["-h"]) == 0
    assert "build|show|boot" in capsys.readouterr().out
    assert main(["build", "-?"]) == 0
    assert "-BaseOnly" in capsys.readouterr().out
    assert main([]) == 2
    capsys.readouterr()
    assert main(["build", "--frobnicate"]) == 2
    assert capsys.readouterr().err == ("python -m vmis.qemu.image: build: a parameter cannot be "
                                       "found that matches parameter name 'frobnicate'.\n")


def test_as_a_module():
    done = subprocess.run([sys.executable, "-m", "vmis.qemu.image", "bogus"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
