"""Fleets of real host managers (each a lab, a process of its own) on one real PostgreSQL.

docs/fleet.md. Every command here runs as an administrator runs it (``vmis``
in a subprocess, on one host's socket); the hosts reach each other only
through the store: published reports, requests, LISTEN/NOTIFY.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest
from support.lab import run_vmis

from vmis.host.fleet.hosts import LEASE_SECONDS, RENEW_SECONDS
from vmis.lab.lab import Lab

pytestmark = pytest.mark.slow

GSI = "Guest Service Interface"


def eventually(check, timeout: float = 30.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {check}")
        time.sleep(interval)


def until(fetch, ok, timeout: float = 30.0):
    """*fetch*'s value once *ok* holds for it."""
    seen = []

    def check():
        seen[:] = [fetch()]
        return ok(seen[0])

    eventually(check, timeout)
    return seen[0]


def vm_rows(host, *args):
    return {r["Name"]: r for r in host.json("Get-VM", *args)}


def guest_services(host, vm):
    listing = json.loads(host.vmis("lab", "guest", vm, "Get-Service", "--json").out)
    return {r["Name"]: r["Status"] for r in listing}


def kill_manager(host) -> None:
    """kill -9 of a host's manager: no chance to end its lease or its sessions."""
    pid = host.lab.host_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: host.lab.host_pid() is None, 10)


def test_hosts_show_each_others_vms_and_take_each_others_commands(fleet):
    hv1, hv2, hv3 = fleet("hv1", "VM1"), fleet("hv2", "VM2"), fleet("hv3", "VM3")

    # every host's VMs, with their host, from any host; the default is this host's own
    rows = until(lambda: vm_rows(hv1, "-ComputerName", "*"),
                 lambda r: {v["Heartbeat"] for v in r.values()} == {"OkApplicationsHealthy"})
    assert {n: (r["ComputerName"], r["HostState"]) for n, r in rows.items()} == {
        "VM1": ("hv1", "Responding"), "VM2": ("hv2", "Responding"),
        "VM3": ("hv3", "Responding")}
    assert set(vm_rows(hv1)) == {"VM1"}
    assert set(vm_rows(hv1, "-ComputerName", "hv2,HV3")) == {"VM2", "VM3"}
    assert set(vm_rows(hv2, "-ComputerName", "localhost")) == {"VM2"}
    table = hv3.vmis("Get-VM", "-ComputerName", "*")
    assert table.out.splitlines()[0].split()[-2:] == ["ComputerName", "HostState"]
    assert "VM1" in table.out and "hv1" in table.out

    # a change for another host's VM: saved, applied by its owner, the result reported back
    started = time.monotonic()
    [enabled] = hv1.json("Enable-VMIntegrationService", "-VMName", "VM3", "-Name", GSI,
                         "-ComputerName", "hv3")
    assert (enabled["Applied"], enabled["Error"], enabled["ComputerName"]) == (True, None, "hv3")
    # promptly: hv3 hears of it through NOTIFY (it polls for nothing; without the
    # notification the answer would be Pending after the pickup wait)
    assert time.monotonic() - started < 2 * RENEW_SECONDS
    assert guest_services(hv3, "VM3")["vmicguestinterface"] == "Running"
    eventually(lambda: {(r["Name"], r["Enabled"], r["PrimaryStatusDescription"])
                        for r in hv2.json("Get-VMIntegrationService", "VM3", "-Name", GSI,
                                          "-ComputerName", "hv3")} == {(GSI, True, "OK")})

    # KVP across hosts: delivered by the owner, the guest has it, any host reads it back
    [written] = hv2.json("Set-VMKvp", "-VMName", "VM1", "-Key", "role", "-Value", "db",
                         "-ComputerName", "hv1")
    assert (written["Delivered"], written["ComputerName"]) == (True, "hv1")
    got = hv1.vmis("lab", "guest", "VM1", "kvp", "get", "role", "--pool", "External")
    assert got.out.strip().endswith("db"), got.out + got.err
    auto = hv3.json("Get-VMKvp", "VM1", "-Pool", "Auto", "-ComputerName", "hv1")
    assert auto and {r["ComputerName"] for r in auto} == {"hv1"}

    # the update and Stop-VM, applied by the owner
    [update] = hv1.json("Update-VMIntegrationServices", "VM2", "-ComputerName", "hv2")
    assert (update["Result"], update["ComputerName"]) == ("current", "hv2")
    [stop] = hv1.json("Stop-VM", "VM2", "-ComputerName", "hv2", "-TimeoutSec", "60")
    assert (stop["State"], stop["Error"], stop["ComputerName"]) == ("Off", None, "hv2")
    eventually(lambda: vm_rows(hv3, "-ComputerName", "*")["VM2"]["State"] == "Off")

    # one line for what cannot be
    unknown = hv1.vmis("Get-VM", "-ComputerName", "nohost")
    assert unknown.code == 1
    assert unknown.err.strip().splitlines() == [
        "Get-VM: no host named 'nohost' in this fleet (see vmis Get-VMHost -ComputerName '*')"]
    elsewhere = hv1.vmis("Get-VMIntegrationService", "VM2")
    assert elsewhere.code == 1 and len(elsewhere.err.strip().splitlines()) == 1
    assert "VM 'VM2' is on host hv2" in elsewhere.err


def test_a_killed_host_is_not_responding_and_converges_when_it_returns(fleet):
    hv1, hv2 = fleet("hv1", "VM1"), fleet("hv2", "VM2")
    eventually(lambda: vm_rows(hv1, "-ComputerName", "*")["VM2"]["Heartbeat"]
               == "OkApplicationsHealthy")
    killed = time.monotonic()
    kill_manager(hv2)

    # within the lease, hv1 says so: the VM's rows never keep the last OK
    vm2 = until(lambda: vm_rows(hv1, "-ComputerName", "*")["VM2"],
                lambda r: r["HostState"] == "Not Responding", LEASE_SECONDS + 2 * RENEW_SECONDS)
    noticed = time.monotonic() - killed
    print(f"hv2 killed: Not Responding on hv1 after {noticed:.1f} s")
    assert noticed < LEASE_SECONDS + 2 * RENEW_SECONDS
    assert (vm2["State"], vm2["Status"], vm2["Heartbeat"]) == \
        ("Unknown", "Host Not Responding", "Unknown")
    hosts = {h["Name"]: h["State"] for h in hv1.json("Get-VMHost", "-ComputerName", "*")}
    assert hosts == {"hv1": "Responding", "hv2": "Not Responding"}
    services = hv1.vmis("Get-VMIntegrationService", "VM2", "-ComputerName", "hv2")
    assert "OK" not in services.out
    assert "host hv2 is not responding" in services.err

    # desired state written while it is down: kept, and the caller told so at once
    asked = time.monotonic()
    disabled = hv1.json("Disable-VMIntegrationService", "VM2", "-Name", "VSS",
                        "-ComputerName", "hv2")
    assert time.monotonic() - asked < 10
    assert {(r["Pending"], r["Applied"]) for r in disabled} == {(True, False)}
    assert "host hv2 is not responding" in disabled[0]["PendingReason"]
    warned = hv1.vmis("Set-VMKvp", "VM2", "-Key", "while", "-Value", "down",
                      "-ComputerName", "hv2")
    assert warned.code == 0 and "host hv2 is not responding" in warned.err
    pending = hv1.json("Get-VMKvp", "VM2", "-Pool", "External", "-ComputerName", "hv2")
    assert [(r["Key"], r["Pending"]) for r in pending] == [("while", "set")]
    vss = hv1.json("Get-VMIntegrationService", "VM2", "-Name", "VSS", "-ComputerName", "hv2")
    assert vss[0]["Enabled"] is False and vss[0]["PrimaryStatusDescription"] is None

    # it comes back: takes its VMs up again and applies what waited
    assert hv2.up("VM2").code == 0
    until(lambda: vm_rows(hv1, "-ComputerName", "*")["VM2"],
          lambda r: (r["HostState"], r["Heartbeat"]) == ("Responding", "OkApplicationsHealthy"))
    assert guest_services(hv2, "VM2")["vmicvss"] == "Stopped"
    got = hv2.vmis("lab", "guest", "VM2", "kvp", "get", "while", "--pool", "External")
    assert got.out.strip().endswith("down"), got.out + got.err
    # delivered, so no longer pending: the guest's External pool as hv2 reports it
    eventually(lambda: [(r["Key"], r["Value"], r["Pending"]) for r in hv1.json(
        "Get-VMKvp", "VM2", "-Pool", "External", "-ComputerName", "hv2")]
        == [("while", "down", None)])
    assert set(vm_rows(hv2)) == {"VM2"} and set(vm_rows(hv1)) == {"VM1"}
    # the VM2 pending rows were applied once: nothing is left for hv2 to do
    again = hv1.json("Enable-VMIntegrationService", "VM2", "-Name", "VSS",
                     "-ComputerName", "hv2")
    assert [(r["Applied"], r.get("Pending")) for r in again] == [(True, None)]


def test_two_managers_racing_for_one_vm_one_wins_the_other_says_why(fleet, short_tmp):
    hv1, hv2, hv3 = fleet("hv1", "VM1"), fleet("hv2", "VM2"), fleet("hv3", "VM3")

    def both(first, second):
        results = {}
        threads = [threading.Thread(target=lambda h=h, a=a: results.setdefault(h.name, h.vmis(*a)))
                   for h, a in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    # two hosts register one new VM at once
    channel = f"unix:{short_tmp}/contested.sock"
    added = both((hv1, ("vm", "add", "Contested", "-Channel", channel)),
                 (hv2, ("vm", "add", "Contested", "-Channel", channel)))
    assert sorted(r.code for r in added.values()) == [0, 1]
    [loser] = [(name, r) for name, r in added.items() if r.code]
    winner = "hv2" if loser[0] == "hv1" else "hv1"
    assert loser[1].err.strip().splitlines() == [
        f"vm: a VM named 'Contested' is already registered (on host {winner})"]

    # a host that is gone: two others claim its VM at once
    kill_manager(hv3)
    eventually(lambda: vm_rows(hv1, "-ComputerName", "hv3")["VM3"]["HostState"]
               == "Not Responding", LEASE_SECONDS + 2 * RENEW_SECONDS)
    moved = both((hv1, ("Move-VM", "VM3", "-DestinationHost", "hv1", "-ComputerName", "hv3")),
                 (hv2, ("Move-VM", "VM3", "-DestinationHost", "hv2", "-ComputerName", "hv3")))
    assert sorted(r.code for r in moved.values()) == [0, 1]
    [(won, result)] = [(n, r) for n, r in moved.items() if r.code == 0]
    [(lost, refused)] = [(n, r) for n, r in moved.items() if r.code]
    assert {won, lost} == {"hv1", "hv2"}
    assert f"VM VM3 moved from host hv3 to host {won}" in result.out
    assert "host hv3 is not responding" in result.err  # taken without its part in it
    # (at the same moment: the claim lost; a moment later: the VM was gone already)
    assert refused.err.strip().splitlines() in (
        [f"Move-VM: VM3 is on host {won}, not on host hv3, now: another command moved it "
         "meanwhile; nothing was changed"],
        [f"Move-VM: VM 'VM3' is on host {won}, not on host hv3"])
    # the winner runs it: the lab VM's agent still runs, and answers its new host
    owner = hv1 if won == "hv1" else hv2
    eventually(lambda: vm_rows(owner)["VM3"]["Heartbeat"] == "OkApplicationsHealthy")
    assert "VM3" not in vm_rows(hv1 if won == "hv2" else hv2)

    # a second manager under a name that runs is refused, with one line
    try:
        impostor = run_vmis(short_tmp / "twin", "lab", "up", "Twin", "-Db", hv1.db,
                            "-ComputerName", "HV1")
    finally:
        Lab(short_tmp / "twin").down(None)
    assert impostor.code == 1
    assert "a host manager named hv1 is running" in impostor.err
    assert len(impostor.err.strip().splitlines()) == 1
    assert vm_rows(hv1)  # the first one is unharmed


def test_move_vm_hands_a_vm_over_with_its_new_channel(fleet, short_tmp):
    hv1, hv2 = fleet("hv1", "VM1"), fleet("hv2", "VM2")
    eventually(lambda: vm_rows(hv1)["VM1"]["Heartbeat"] == "OkApplicationsHealthy")
    # the address the destination reaches the VM's channel by (here: another path to it)
    socket = hv1.lab.vm("VM1").channel_path
    alias = short_tmp / "vm1.sock"
    alias.symlink_to(socket)

    moved = hv1.json("Move-VM", "VM1", "-DestinationHost", "hv2", "-Channel", f"unix:{alias}")
    assert (moved["SourceHost"], moved["DestinationHost"], moved["Channel"]) == \
        ("hv1", "hv2", f"unix:{alias}")
    assert "VM1" not in {v["Name"] for v in hv1.json("vm", "list")}
    listed = eventually(lambda: {v["Name"]: v for v in hv2.json("vm", "list")}.get("VM1"))
    assert listed["Channel"] == f"unix:{alias}"
    eventually(lambda: vm_rows(hv2)["VM1"]["Heartbeat"] == "OkApplicationsHealthy")
    assert vm_rows(hv1, "-ComputerName", "*")["VM1"]["ComputerName"] == "hv2"
    elsewhere = hv1.vmis("Stop-VM", "VM1")
    assert "VM 'VM1' is on host hv2" in elsewhere.err

    # moved back from hv1: its owner (hv2, -ComputerName) hands it over on request
    back = hv1.json("Move-VM", "VM1", "hv1", "-ComputerName", "hv2", "-Channel",
                    f"unix:{socket}")
    assert (back["Moved"], back["SourceHost"], back["ComputerName"]) == (True, "hv2", "hv2")
    eventually(lambda: vm_rows(hv1).get("VM1", {}).get("Heartbeat") == "OkApplicationsHealthy")
    assert "VM1" not in {v["Name"] for v in hv2.json("vm", "list")}
    again = hv1.vmis("Move-VM", "VM1", "hv1")  # -ComputerName: this host, hv1
    assert again.code == 1 and again.err.strip() == "Move-VM: VM1 is already on host hv1"


def test_the_password_is_in_no_file_and_no_command_line(short_tmp, postgres_url):
    secret = "s3cr3t-pw"
    url = postgres_url.replace("postgres@", f"postgres:{secret}@")  # trust: any password does
    lab_dir = short_tmp / "hv1"
    try:
        up = run_vmis(lab_dir, "lab", "up", "VM1", "-Db", url, "-ComputerName", "hv1")
        assert up.code == 0, up.err
        pid = run_vmis(lab_dir, "lab", "status", "--json")
        manager = json.loads(pid.out)["HostPid"]
        assert secret.encode() not in Path(f"/proc/{manager}/cmdline").read_bytes()
        for path in lab_dir.rglob("*"):
            if path.is_file() and not path.is_symlink() and "root" not in path.parts:
                assert secret.encode() not in path.read_bytes(), path
        fleet_file = lab_dir / "fleet.json"
        assert stat.S_IMODE(fleet_file.stat().st_mode) == 0o600
        assert json.loads(fleet_file.read_text())["ComputerName"] == "hv1"
        status = json.loads(run_vmis(lab_dir, "lab", "status", "--json").out)
        assert status["ComputerName"] == "hv1" and secret not in status["Database"]
        # the lab's manager comes back from the file alone (the password is not needed:
        # this test database trusts its socket; ~/.pgpass would give it otherwise)
        os.kill(manager, signal.SIGKILL)
        again = run_vmis(lab_dir, "lab", "up", "VM1")
        assert again.code == 0, again.err
        assert json.loads(run_vmis(lab_dir, "Get-VMHost", "--json").out)[0]["Name"] == "hv1"
    finally:
        Lab(lab_dir).down(None)


def test_on_sqlite_the_computer_name_is_this_hosts_alone(lab, lab_dir):
    import socket

    me = socket.gethostname().split(".")[0]
    for name in ("localhost", ".", "*", me, me.upper()):
        rows = json.loads(run_vmis(lab_dir, "Get-VM", "-ComputerName", name, "--json").out)
        assert [(r["Name"], r["ComputerName"]) for r in rows] == [("DemoVM", me)], name
    other = run_vmis(lab_dir, "Get-VMIntegrationService", "DemoVM", "-ComputerName", "hv9")
    assert other.code == 1
    assert other.err.strip().splitlines() == [
        f"Get-VMIntegrationService: -ComputerName hv9: this host manager's store is SQLite, "
        f"host {me}'s alone; reaching other hosts needs a fleet on a shared PostgreSQL store "
        "(vmis host serve -Db postgresql+psycopg://...)"]
    move = run_vmis(lab_dir, "Move-VM", "DemoVM", "hv9")
    assert move.code == 1 and "needs a fleet" in move.err
    [host] = json.loads(run_vmis(lab_dir, "Get-VMHost", "--json").out)
    assert (host["Name"], host["State"], host["VMs"]) == (me, "Responding", 1)
