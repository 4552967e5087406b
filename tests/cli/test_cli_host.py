"""The ``vmis`` command line without a lab: dispatch, help, and what it imports."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

from vmis.cli.host import _all_commands, main
from vmis.services.timesync import DEFAULT_INTERVAL_MS


def test_help_lists_every_command_in_its_order(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    where = [out.index(f"\n  {c.name} ") for c in _all_commands()]
    assert where == sorted(where)
    assert [c.name for c in _all_commands()] == [
        "Get-VMIntegrationService", "Enable-VMIntegrationService",
        "Disable-VMIntegrationService", "Get-VM", "vm add", "vm list", "vm set", "vm remove",
        "Start-VM", "Insert-SetupDisk", "Eject-SetupDisk", "vm create",
        "Update-VMIntegrationServices", "Copy-VMFile", "Get-VMFileCopy", "Stop-VMFileCopy",
        "Get-VMKvp", "Set-VMKvp", "Remove-VMKvp",
        "Stop-VM", "Restart-VM", "Get-VMTimeSync", "Set-VMTimeSync", "Invoke-Command",
        "Checkpoint-VM", "Get-VMCheckpoint", "Get-VMVss", "vm set-snapshot-command",
        "host serve", "Get-VMIntegrationServicesUpdatePath", "Install-VMIntegrationServices",
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


#: what the host CLI's common path must not load: the manager, its database
#: and web server, QEMU's monitor, and the WebSocket stack of Invoke-Command
HEAVY = ("vmis.host.manager", "vmis.qemu", "sqlalchemy", "fastapi", "uvicorn", "qemu",
         "websockets")


def test_the_common_path_imports_nothing_heavy():
    code = ("import json, sys\n"
            "from vmis.cli.host import main\n"
            "main(['Get-VMIntegrationService', '-?'])\n"
            "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.startswith("Get-VMIntegrationService ")
    loaded = json.loads(done.stderr.splitlines()[-1])
    heavy = [m for m in loaded if m in HEAVY or m.startswith(tuple(f"{h}." for h in HEAVY))]
    assert heavy == []
