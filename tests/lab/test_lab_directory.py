"""One lab per user, found from any directory (vmis.api.client.default_lab_dir)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vmis.api import client
from vmis.lab.lab import Lab


def test_the_default_lab_is_the_users_state_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("VMIS_LAB_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert client.default_lab_dir() == tmp_path / "home/.local/state/vmis/lab"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")  # not absolute: ignored (XDG)
    assert client.default_lab_dir() == tmp_path / "home/.local/state/vmis/lab"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert client.default_lab_dir() == tmp_path / "state/vmis/lab"
    monkeypatch.setenv("VMIS_LAB_DIR", str(tmp_path / "elsewhere"))
    assert client.default_lab_dir() == tmp_path / "elsewhere"


def test_one_lab_serves_every_working_directory(short_tmp):
    env = {k: v for k, v in os.environ.items() if k not in ("VMIS_LAB_DIR", "VMIS_SOCKET")}
    env.update(HOME=str(short_tmp / "home"), XDG_STATE_HOME=str(short_tmp / "state"))
    here, there = short_tmp / "here", short_tmp / "there"
    here.mkdir()
    there.mkdir()

    def vmis(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vmis.cli.host", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    lab = Lab(short_tmp / "state/vmis/lab")
    try:
        up = vmis(here, "lab", "up")
        assert up.returncode == 0, up.stderr
        status = json.loads(vmis(there, "lab", "status", "--json").stdout)
        assert status["Directory"] == str(lab.dir) and status["HostPid"] == lab.host_pid()
        services = vmis(there, "Get-VMIntegrationService", "-VMName", "DemoVM")
        assert services.returncode == 0, services.stderr
        assert "DemoVM      Heartbeat               True    OK" in services.stdout
        again = vmis(there, "lab", "up")  # the same lab, not a second one
        assert again.returncode == 0, again.stderr
        after = json.loads(vmis(here, "lab", "status", "--json").stdout)
        assert (after["Directory"], after["HostPid"]) == (status["Directory"], status["HostPid"])
        assert [vm["Pid"] for vm in after["VMs"]] == [vm["Pid"] for vm in status["VMs"]]
        assert not (here / ".vmis-lab").exists() and not (there / ".vmis-lab").exists()
    finally:
        lab.down(None)
        for cwd in (here, there):  # what a failing run started where it ran
            Lab(cwd / ".vmis-lab").down(None)
