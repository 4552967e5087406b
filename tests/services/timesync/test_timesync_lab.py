"""Time sync in a real lab: a host manager and a lab VM in their own processes, the real CLI.

The host manager runs with the clock guard (guard/sitecustomize.py): any real
clock setter it calls fails and is logged, and the test checks the log. The
agent runs in the lab VM's sandbox (vmis.lab.sandbox), which the guard does
not reach, and without capabilities: a real clock setter fails there with
EPERM, and the test checks that the agent has none.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from support.lab import run_vmis, start_lab
from vmis.api.client import ApiClient
from vmis.guest.adapters import VirtualClock
from vmis.services.timesync import DEFAULT_INTERVAL_MS

S = 1_000_000_000
MS = 1_000_000
INTERVAL_S = DEFAULT_INTERVAL_MS / 1000  # the host's default


def timesync_row(lab) -> dict:
    with ApiClient(lab.socket) as api:
        [row] = api.call("GET", "/timesync", params={"vm": "DemoVM"})
    return row


def wait_for(check, timeout: float):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"not met within {timeout} s"
        time.sleep(0.05)
    return result


def test_an_hour_off_lab_guest_is_within_a_millisecond_after_one_interval(
        lab_dir, guarded_processes):
    lab = start_lab(lab_dir, clock_offset=3600)
    clock = lab.vm("DemoVM").root / "var/lib/vmis/clock.json"
    first = wait_for(lambda: (r := timesync_row(lab))["Syncs"] >= 1 and r, 15)
    assert first["Flag"] == "sync" and first["State"] == "Stepped"
    assert abs(first["OffsetNs"] - 3600 * S) < 50 * MS
    # one sync interval later: stepped, then the residue slewed
    second = wait_for(lambda: (r := timesync_row(lab))["Syncs"] >= 2 and r,
                      INTERVAL_S * 3)
    offset = VirtualClock(clock).offset_ns()  # the lab VM's clock minus this machine's
    assert abs(offset) < MS, f"guest is {offset / 1e6:.3f} ms off after one interval"
    assert second["State"] == "Synchronized" and abs(second["OffsetNs"]) < MS

    result = run_vmis(lab_dir, "Get-VMTimeSync", "-VMName", "DemoVM")
    assert result.code == 0, result.err
    header, rule, line = result.out.splitlines()
    assert header.split() == ["VMName", "State", "OffsetMs", "RoundTripMs", "LastSample",
                              "LastStep", "IntervalSec"]
    assert line.split()[:2] == ["DemoVM", "Synchronized"]
    assert line.split()[-1] == str(DEFAULT_INTERVAL_MS // 1000)
    [row] = json.loads(run_vmis(lab_dir, "Get-VMTimeSync", "DemoVM", "--json").out)
    assert row["LastStep"] is not None and row["Mode"] == "own"

    # the machine's clock was never touched: the host manager carried the guard and
    # nothing was refused; the agent has no capability (CAP_SYS_TIME among them)
    log = guarded_processes.read_text().splitlines()
    assert any("host serve" in line for line in log), log
    assert not [line for line in log if line.startswith("refused")], log
    agent = lab.vm("DemoVM").pid
    assert "CapEff:\t0000000000000000" in Path(f"/proc/{agent}/status").read_text()


def test_set_vm_time_sync_changes_the_cadence_and_bad_values_fail(lab_dir):
    lab = start_lab(lab_dir)
    result = run_vmis(lab_dir, "Set-VMTimeSync", "DemoVM", "-IntervalSec", "0.5", "-Passthru")
    assert result.code == 0, result.err
    assert result.out.splitlines()[2].split()[-1] == "0.5"
    before = timesync_row(lab)["Syncs"]
    # every 0.5 s, stretched 1 s, 2 s... while the guest stays in step (NTP-style), or
    # until a slew is done: two more bursts come within seconds, not the default 10 s
    deadline = time.monotonic() + 12
    while (row := timesync_row(lab))["Syncs"] < before + 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert row["Syncs"] >= before + 2 and row["NextWaitMs"] <= 8 * 500
    bad = run_vmis(lab_dir, "Set-VMTimeSync", "DemoVM", "-IntervalSec", "0")
    assert bad.code == 2 and bad.err.strip() == (
        "vmis: Set-VMTimeSync: -IntervalSec must be between 0.2 and 3600.")
    missing = run_vmis(lab_dir, "Get-VMTimeSync", "NoSuchVM")
    assert missing.code == 1 and "Traceback" not in missing.err
    assert missing.err.strip() == ("Get-VMTimeSync: no VM named 'NoSuchVM' is registered "
                                   "(see 'vmis vm list')")


def test_guest_tool_shows_the_guest_side(lab_dir):
    lab_vm = start_lab(lab_dir, clock_offset=-7).vm("DemoVM")
    status = wait_for(lambda: (s := json.loads(run_vmis(
        lab_dir, "--root", str(lab_vm.root), "timesync", "status", "--json", guest=True).out))
        ["last_sample_ns"] and s, 20)
    assert status["mode"] == "own" and status["last_step_delta_ns"] > 6 * S
    text = run_vmis(lab_dir, "--root", str(lab_vm.root), "timesync", "status", guest=True)
    assert text.code == 0, text.err
    assert "ChronyRefclock : refclock SOCK /run/chrony.vmis.sock refid VMIS" in text.out


def test_the_guard_refuses_and_records_clock_setters(guarded_processes):
    # Harmless calls only, should the guard ever fail to load: an invalid clock
    # id, and adjtime's read-only query.
    script = (
        "import time\n"
        "from vmis.guest.adapters import SystemClock\n"
        "for call in (lambda: time.clock_settime_ns(12345, 0),\n"
        "             lambda: SystemClock().slew_remaining_ns()):\n"
        "    try:\n"
        "        call()\n"
        "    except PermissionError as exc:\n"
        "        print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.count("test guard:") == 2, result
    log = guarded_processes.read_text().splitlines()
    assert log[0].startswith("loaded ")
    assert [line.split()[2] for line in log[1:]] == ["clock_settime_ns", "libc.adjtime"]
