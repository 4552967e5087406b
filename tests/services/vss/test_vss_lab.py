"""VSS through the real command lines against a real lab (host manager and agent processes).

The lab VM freezes through the lab freezer, which shows what it holds frozen
in ``<root>/run/vmis/freezer.json``: that file is the "kernel" these tests
read, independently of what the agent says about itself.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.lab import run_vmis, start_lab
from vss_support import add_hook, hook_log

from vmis.lab.lab import Lab

#: [vss] freeze_timeout of the lab VM: short, so the watchdog test is quick
FREEZE_TIMEOUT = 4


def configure_vm(lab_dir: Path) -> Path:
    """Give DemoVM (before it starts) a short freeze timeout and two hooks; return its root."""
    root = lab_dir / "vms/DemoVM/root"
    conf = root / "etc/vmis/agent.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[agent]\nchannel = unix:/run/vmis/channel.sock\nadapters = fake\n"
                    "[heartbeat]\nhealth_interval = 1\n"
                    f"[vss]\nfreeze_timeout = {FREEZE_TIMEOUT}\nhook_timeout = 5\n")
    add_hook(root, "10-db")
    add_hook(root, "20-app")
    return root


def kernel_frozen(root: Path) -> list[str] | None:
    """The lab freezer's frozen set, or None before its first call."""
    try:
        return json.loads((root / "run/vmis/freezer.json").read_text())["frozen"]
    except (FileNotFoundError, ValueError):
        return None


def wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.02)
    raise AssertionError(f"{what} within {timeout} s")


def guest_status(lab_dir: Path) -> dict:
    result = run_vmis(lab_dir, "--root", str(lab_dir / "vms/DemoVM/root"), "vss", "status",
                      "--json", guest=True)
    assert result.code == 0, result.err
    return json.loads(result.out)


@pytest.mark.slow
def test_checkpoint_vm_from_the_command_line(lab_dir):
    root = configure_vm(lab_dir)
    start_lab(lab_dir)
    marker = lab_dir / "snapshot.out"
    command = f'echo "$VMIS_CHECKPOINT_NAME $VMIS_CONSISTENCY" >> {marker}'
    assert run_vmis(lab_dir, "vm", "set-snapshot-command", "DemoVM", command).code == 0

    result = run_vmis(lab_dir, "Checkpoint-VM", "-Name", "DemoVM", "-SnapshotName",
                      "before-upgrade", "-SnapshotType", "Production")
    assert result.code == 0, result.err
    assert result.err == ""
    assert "Production (application-consistent)" in result.out
    lines = result.out.splitlines()
    timeline = [line.split()[:3] for line in lines[lines.index(next(
        line for line in lines if line.startswith("Step"))) + 2:]]
    assert timeline == [["freeze", "hook", "10-db"], ["freeze", "hook", "20-app"],
                        ["freeze", "/var,", "/"], ["snapshot", "command", "ok"],
                        ["thaw", "/,", "/var"], ["thaw", "hook", "20-app"],
                        ["thaw", "hook", "10-db"]]
    assert marker.read_text() == "before-upgrade application\n"
    assert [e for e, _ in hook_log(root)] == ["10-db freeze", "20-app freeze",
                                              "20-app thaw host", "10-db thaw host"]
    assert kernel_frozen(root) == []

    # VSS disabled: ProductionOnly fails with one clear line, Production falls back and says so
    assert run_vmis(lab_dir, "Disable-VMIntegrationService", "-VMName", "DemoVM",
                    "-Name", "VSS").code == 0
    only = run_vmis(lab_dir, "checkpoint", "DemoVM", "strict", "-SnapshotType", "ProductionOnly")
    assert only.code == 1
    assert only.err.splitlines() == [
        "Checkpoint-VM: cannot take a production checkpoint of DemoVM: the VSS integration "
        "service is disabled on the host (Enable-VMIntegrationService -VMName DemoVM -Name "
        "\"VSS\"); -SnapshotType ProductionOnly does not fall back to a standard checkpoint"]
    assert "Traceback" not in only.err
    fallback = run_vmis(lab_dir, "checkpoint", "DemoVM", "lenient", "--json")
    assert fallback.code == 0
    report = json.loads(fallback.out)
    assert (report["Status"], report["Taken"], report["Consistency"]) == \
        ("Completed", "Standard", "crash")
    # under --json the warnings are the report's, and stderr holds only JSON errors
    assert fallback.err == ""
    assert report["Warnings"][0].startswith("a production checkpoint of DemoVM could not be "
                                            "taken: the VSS integration service is disabled "
                                            "on the host")
    assert marker.read_text().splitlines()[-1] == "lenient crash"

    history = json.loads(run_vmis(lab_dir, "Get-VMCheckpoint", "DemoVM", "--json").out)
    assert [(h["Name"], h["Status"], h["Taken"]) for h in history] == [
        ("before-upgrade", "Completed", "Production"), ("strict", "Failed", None),
        ("lenient", "Completed", "Standard")]


@pytest.mark.slow
def test_killing_the_host_mid_freeze_still_thaws_within_the_timeout(lab_dir):
    root = configure_vm(lab_dir)
    lab = start_lab(lab_dir)
    pidfile = lab_dir / "snapshot.pid"
    # the snapshot step outlives the host; its pid lets the test clean it up
    assert run_vmis(lab_dir, "vm", "set-snapshot-command", "DemoVM",
                    f"echo $$ > {pidfile}; exec sleep 60").code == 0
    env = dict(os.environ, VMIS_LAB_DIR=str(lab_dir), VMIS_SOCKET=str(lab.socket))
    cli = subprocess.Popen([sys.executable, "-m", "vmis.cli.host", "Checkpoint-VM", "DemoVM"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait(lambda: kernel_frozen(root) == ["/", "/var"], 30, "the guest did not freeze")
        frozen_at = time.monotonic()
        wait(pidfile.exists, 30, "the snapshot command did not start")
        host = lab.host_pid()
        assert host is not None
        os.kill(host, signal.SIGKILL)  # the host vanishes mid-backup

        wait(lambda: kernel_frozen(root) == [], FREEZE_TIMEOUT + 30,
             "the guest did not thaw by itself")
        thawed_after = time.monotonic() - frozen_at
        # the watchdog thawed it, not a host: it took the freeze timeout, not less
        assert thawed_after > FREEZE_TIMEOUT - 1.0
        status = guest_status(lab_dir)
        assert status["State"] == "timed-out"
        assert status["Cycle"]["Reason"] == "timeout"
        wait(lambda: len(hook_log(root)) == 4, 10, "the thaw hooks did not run")
        assert [e for e, _ in hook_log(root)][2:] == ["20-app thaw timeout",
                                                      "10-db thaw timeout"]
        assert cli.wait(30) == 1  # the command line says the manager went away
        assert "Traceback" not in cli.stderr.read()
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.wait()
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)

    # a new manager records that the checkpoint was interrupted
    assert run_vmis(lab_dir, "lab", "up").code == 0
    history = json.loads(run_vmis(lab_dir, "Get-VMCheckpoint", "DemoVM", "--json").out)
    assert [h["Status"] for h in history] == ["Interrupted"]
    assert Lab(lab_dir).host_pid() is not None
