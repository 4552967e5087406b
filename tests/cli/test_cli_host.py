"""The ``vmis`` command line without a lab: dispatch, help, and what it imports."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest

from support.imports import HOST_HEAVY, heavy_modules_loaded
from vmis.cli.host import _FIRST_WORDS, _all_commands, _commands_for, _group, main
from vmis.psargs import find_verb
from vmis.services.timesync import DEFAULT_INTERVAL_MS

#: the bytes b"caf\xe9" as a command line's word: Latin-1, not UTF-8
BAD = b"caf\xe9"


def test_help_lists_every_command_in_its_order(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    where = [out.index(f"\n  {c.name} ") for c in _all_commands()]
    assert where == sorted(where)
    assert [c.name for c in _all_commands()] == [
        "Get-VMIntegrationService", "Enable-VMIntegrationService",
        "Disable-VMIntegrationService", "Get-VM", "vm add", "vm list", "vm set", "vm remove",
        "Get-VMHost", "Move-VM", "Set-VMIntegrationServicePolicy",
        "Get-VMIntegrationServicePolicy", "Remove-VMIntegrationServicePolicy", "Set-VM",
        "Get-VMIntegrationServiceCompliance", "Get-VMEvent", "Start-VM", "Insert-SetupDisk", "Eject-SetupDisk",
        "vm create", "Update-VMIntegrationServices", "Copy-VMFile", "Get-VMFileCopy",
        "Stop-VMFileCopy", "Get-VMKvp", "Set-VMKvp", "Remove-VMKvp",
        "Stop-VM", "Restart-VM", "Get-VMTimeSync", "Set-VMTimeSync", "Invoke-Command",
        "Checkpoint-VM", "Get-VMCheckpoint", "Get-VMVss", "vm set-snapshot-command",
        "token add", "token list", "token remove", "Get-VMAuditLog", "host serve", "Get-VMIntegrationServicesUpdatePath", "Install-VMIntegrationServices",
        "setup-disk build", "lab up", "lab down", "lab status", "lab guest",
    ]


def test_each_command_says_whether_it_needs_the_managers_api():
    # run(args) on this machine, or run(api, args) against the host manager
    for cmd in _all_commands():
        arity = len(inspect.signature(cmd.run).parameters)
        assert arity == (1 if cmd.local else 2), cmd.name
    local = {c.name for c in _all_commands() if c.local}
    assert local == {"host serve", "Get-VMIntegrationServicesUpdatePath",
                     "Install-VMIntegrationServices", "setup-disk build",
                     "lab up", "lab down", "lab status", "lab guest"}


def test_lab_guest_help_and_a_missing_name(capsys):
    assert main(["lab", "guest", "-?"]) == 0
    assert capsys.readouterr().out.startswith("lab guest [-Name <str>] [-- COMMAND ARGS...]")
    assert main(["lab", "guest"]) == 2
    assert capsys.readouterr().err == (
        "vmis: lab guest: name a lab VM: vmis lab guest NAME ARGS...\n")


def test_set_vmtimesync_help_tells_the_default_interval(capsys):
    assert main(["Set-VMTimeSync", "-?"]) == 0
    seconds = f"{DEFAULT_INTERVAL_MS / 1000:g}"
    assert f"-IntervalSec: seconds between sample bursts (default {seconds})" in (
        capsys.readouterr().out)


def test_a_local_command_runs_without_a_manager(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VMIS_SOCKET", str(tmp_path / "none.sock"))
    assert main(["update-path", "2016", "vmis", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)
    assert main(["vm", "list"]) == 1
    assert "host manager is not running" in capsys.readouterr().err


def test_each_group_lists_the_first_words_of_its_commands():
    for group, words in _FIRST_WORDS.items():
        firsts = {n.split()[0].lower() for c in _group(group) for n in (c.name, *c.aliases)}
        assert set(words.split()) == firsts, group


@pytest.mark.parametrize("name", sorted({n for c in _all_commands() for n in (c.name, *c.aliases)}))
def test_a_command_line_finds_the_same_command_among_its_groups_as_among_all(name):
    words = [*name.split(), "-?"]
    assert find_verb(_commands_for(words[0]), words) == find_verb(_all_commands(), words)
    shouted = [w.upper() for w in words]
    assert find_verb(_commands_for(shouted[0]), shouted)[0] == find_verb(_all_commands(), words)[0]


def test_an_unknown_command_is_looked_for_among_all_and_close_ones_are_named(capsys):
    assert _commands_for("Copy-VMFil") == _all_commands()
    assert main(["Copy-VMFil"]) == 2
    assert "Did you mean Copy-VMFile, Get-VMFileCopy, Stop-VMFileCopy?" in capsys.readouterr().err


def test_a_command_loads_its_own_commands_module_and_no_other():
    others = ("vmis.cli.accountcmd", "vmis.cli.eventcmd", "vmis.cli.hypervisorcmd",
              "vmis.cli.labcmd", "vmis.cli.policycmd", "vmis.cli.advisorcmd",
              "vmis.cli.updatecmd", "vmis.cli.host_commands.kvp",
              "vmis.cli.host_commands.vss", "vmis.services.kvp", "vmis.services.timesync")
    _, loaded = heavy_modules_loaded("host", ["Copy-VMFile", "-?"],
                                     (*others, "vmis.cli.host_commands.fcopy"))
    assert loaded == ["vmis.cli.host_commands.fcopy"]


def test_the_common_path_imports_nothing_heavy():
    # the parameters' help; the answered call, against a lab: tests/cli/test_cli_lab.py
    out, heavy = heavy_modules_loaded("host", ["Get-VMIntegrationService", "-?"], HOST_HEAVY)
    assert out.startswith("Get-VMIntegrationService ") and heavy == []


@pytest.mark.parametrize(("program", "words"), [
    ("host", ["Set-VMKvp", "DemoVM", BAD, "v"]),
    ("host", ["Set-VMKvp", "DemoVM", "k", BAD]),
    ("host", ["Copy-VMFile", "DemoVM", BAD, "/tmp/", "-FileSource", "Host"]),
    ("host", ["Checkpoint-VM", "DemoVM", "-SnapshotCommand", BAD]),
    ("host", ["vm", "set-snapshot-command", "DemoVM", BAD]),
    ("host", ["vm", "add", BAD, "-Channel", "unix:/x"]),
    ("host", ["Invoke-Command", "DemoVM", "--", "cat", BAD]),
    ("guest", ["kvp", "set", BAD, "v"]),
])
def test_an_argument_that_is_not_utf8_is_one_line(tmp_path, program, words):
    # no manager, no agent: the command line refuses before it asks anything
    env = dict(os.environ, VMIS_SOCKET=str(tmp_path / "none.sock"), VMIS_GUEST_ROOT=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", f"vmis.cli.{program}", *words],
                          capture_output=True, env=env, timeout=60, check=False)
    err = done.stderr.decode()
    assert done.returncode == 2 and done.stdout == b""
    assert len(err.splitlines()) == 1 and "is not UTF-8 text (byte 0xe9 at character 4)" in err
    assert "Traceback" not in err
