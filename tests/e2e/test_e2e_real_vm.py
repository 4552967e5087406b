"""End to end on a real QEMU virtual machine: the host manager and the guest agent, for real.

One VM for the whole module (it takes about a minute to boot under TCG):
``vmis lab up RealVM -Qemu`` boots the project's Debian guest image with the
agent installed as a user installs it, plus a test configuration that turns
VM Session on (tests/support/vmimage.py), so the tests can look inside the
guest with Invoke-Command. The guest's clock starts one hour ahead. The
tests then run in order against it, each through the ``vmis`` command line
as an administrator would type it, and check from outside the guest
wherever the real adapters act: the clock against this host's, the frozen
file system in the snapshot image, the QEMU process after a poweroff.

Bounded everywhere: every command has a timeout, the module's fixture
kills whatever QEMU is left, and the tests in all take a few minutes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.lab import Result, run_vmis
from support.vmchecks import ext4_of, guest_file, until
from support.vmimage import build_test_image

import vmis
from vmis.api.client import ApiClient
from vmis.lab.lab import Lab
from vmis.qemu.image.guest_image import GuestImage
from vmis.qemu.machine import QemuMachine
from vmis.qemu.monitor import QmpMonitor

pytestmark = [pytest.mark.vm, pytest.mark.timeout(600)]

VM = "RealVM"
#: seconds the guest's clock starts ahead of the host's
CLOCK_OFFSET = 3600
#: the acceptance's copy size, each way
COPY_MIB = 100
MIB = 1024 * 1024

SEED_TABLE = """\
VMName      Name                    Enabled PrimaryStatusDescription SecondaryStatusDescription
------      ----                    ------- ------------------------ --------------------------
RealVM      Guest Service Interface False   OK
RealVM      Heartbeat               True    OK                       OK
RealVM      Key-Value Pair Exchange True    OK
RealVM      Shutdown                True    OK
RealVM      Time Synchronization    True    OK
RealVM      VSS                     True    OK
"""


@dataclass
class RealVm:
    lab_dir: Path
    workdir: Path
    image: GuestImage
    qemu_pid: int

    def vmis(self, *args: str, timeout: float = 120) -> Result:
        return run_vmis(self.lab_dir, *args, timeout=timeout)

    def ok(self, *args: str, timeout: float = 120) -> str:
        """Run a command that must succeed; return its stdout."""
        result = self.vmis(*args, timeout=timeout)
        assert result.code == 0, f"vmis {' '.join(args)}: {result.err}"
        return result.out

    def json(self, *args: str, timeout: float = 120) -> Any:
        return json.loads(self.ok(*args, "--json", timeout=timeout))

    def guest(self, *argv: str, timeout: float = 60) -> str:
        """Run a command inside the guest (VM Session); return its stdout."""
        return self.ok("Invoke-Command", "-VMName", VM, "-NoStdin", "--", *argv, timeout=timeout)

    def api(self) -> ApiClient:
        return ApiClient(self.lab_dir / "host.sock")

    @property
    def qmp(self) -> QmpMonitor:
        return QmpMonitor(self.workdir / "qmp.sock")


def kill_machines(lab_dir: Path) -> None:
    for base in (lab_dir / "vms", lab_dir / "machines"):
        for workdir in base.glob("*") if base.is_dir() else []:
            if (workdir / "machine.json").is_file():
                QemuMachine.attach(workdir).kill()


@pytest.fixture(scope="module")
def real_vm() -> Iterator[RealVm]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    image = GuestImage.load(build_test_image())
    top = Path(tempfile.mkdtemp(prefix="vmis-e2e-", dir="/tmp"))
    lab_dir = top / "lab"
    try:
        begin = time.monotonic()
        up = run_vmis(lab_dir, "lab", "up", VM, "-Qemu", "-Image", str(image.directory),
                      "-ClockOffset", str(CLOCK_OFFSET), "--json", timeout=420)
        assert up.code == 0, up.err
        status = json.loads(up.out)[0]
        workdir = Path(status["Root"])
        marker = re.search(r"VMIS-MULTI-USER uptime=(\S+)",
                           (workdir / "console.log").read_text(errors="replace"))
        print(f"\n{VM}: heartbeat OK {time.monotonic() - begin:.1f} s after 'lab up' "
              f"(multi-user.target at guest uptime {marker.group(1) if marker else '?'} s)")
        yield RealVm(lab_dir, workdir, image, status["QemuPid"])
    finally:
        Lab(lab_dir).down(None)
        kill_machines(lab_dir)
        shutil.rmtree(top, ignore_errors=True)


def test_lab_status_shows_the_qemu_process(real_vm):
    status = real_vm.json("lab", "status")
    (vm,) = status["VMs"]
    assert vm["Name"] == VM and vm["Kind"] == "qemu" and vm["Running"] is True
    assert vm["QemuPid"] == real_vm.qemu_pid
    cmdline = Path(f"/proc/{vm['QemuPid']}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0].endswith(b"qemu-system-x86_64") and f"guest={VM}".encode() in cmdline
    (row,) = real_vm.json("vm", "list")
    assert row["Qmp"] == str(real_vm.workdir / "qmp.sock") and row["Kind"] == "lab"


def test_seed_scenario_with_copies_in_and_out(real_vm, tmp_path):
    # docs/hyperv.md §3: the table, from a real guest
    assert real_vm.ok("Get-VMIntegrationService", "-VMName", VM) == SEED_TABLE

    real_vm.ok("Enable-VMIntegrationService", "-VMName", VM, "-Name", "Guest Service Interface")
    row = real_vm.json("Get-VMIntegrationService", VM, "Guest Service Interface")[0]
    assert (row["Enabled"], row["PrimaryStatusDescription"]) == (True, "OK")

    source = tmp_path / "in.bin"
    with source.open("wb") as f:
        for _ in range(COPY_MIB):
            f.write(os.urandom(MIB))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()

    into = real_vm.json("Copy-VMFile", VM, str(source), "/root/big.bin", "-FileSource", "Host",
                        timeout=300)
    assert into["Bytes"] == COPY_MIB * MIB
    # the guest's own sha256sum over the file the agent wrote
    assert real_vm.guest("sha256sum", "/root/big.bin").split()[0] == digest

    back = tmp_path / "out.bin"
    out_of = real_vm.json("Copy-VMFile", VM, "/root/big.bin", str(back), "-FileSource", "Guest",
                          timeout=300)
    assert out_of["Bytes"] == COPY_MIB * MIB
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    print(f"\nCopy-VMFile {COPY_MIB} MiB: into the guest {into['Seconds']:.1f} s "
          f"({COPY_MIB / into['Seconds']:.1f} MiB/s), out {out_of['Seconds']:.1f} s "
          f"({COPY_MIB / out_of['Seconds']:.1f} MiB/s)")
    real_vm.guest("rm", "-f", "/root/big.bin")

    real_vm.ok("Disable-VMIntegrationService", "-VMName", VM, "-Name", "Guest Service Interface")
    assert real_vm.ok("Get-VMIntegrationService", "-VMName", VM) == SEED_TABLE
    refused = real_vm.vmis("Copy-VMFile", VM, str(source), "/root/again.bin", "-FileSource",
                           "Host")
    assert refused.code == 1 and len(refused.err.splitlines()) == 1
    assert "Guest Service Interface integration service is disabled on the host" in refused.err


def test_kvp_reports_the_real_os_and_address(real_vm):
    items = {r["Key"]: r["Value"] for r in real_vm.json("Get-VMKvp", VM, "-Pool", "Auto")}
    assert items["OSName"] == "Debian GNU/Linux"
    assert items["OSMajorVersion"] == "12"
    # the kernel the image boots, as recorded when it was built on this host
    assert items["OSBuildNumber"] == real_vm.image.kernel_release
    # QEMU's user-mode network hands the guest 10.0.2.15 by DHCP
    assert "10.0.2.15" in items["NetworkAddressIPv4"].split(";")
    assert items["IntegrationServicesVersion"] == vmis.__version__
    assert items["FullyQualifiedDomainName"] == "vmis-guest"


def test_time_sync_corrected_a_clock_an_hour_ahead(real_vm):
    # The guest booted an hour ahead (its RTC, read by the kernel); on contact the host's
    # SYNC stepped the real clock, as root, by about an hour back. The host saw it...
    host_log = (real_vm.lab_dir / "host.log").read_text()
    steps = [float(s) for s in re.findall(rf"{VM}: time sync \(sync\): guest stepped by (\S+) s",
                                          host_log)]
    assert any(-CLOCK_OFFSET - 60 < s < -CLOCK_OFFSET + 60 for s in steps), steps
    # ... the guest's own log says so ...
    journal = real_vm.guest("journalctl", "-b", "-o", "cat", "--no-pager", "-u", "vmis-guest")
    guest_steps = [float(s) for s in re.findall(r"stepped the clock by (\S+) s", journal)]
    assert any(-CLOCK_OFFSET - 60 < s < -CLOCK_OFFSET + 60 for s in guest_steps), journal
    # The host's last sample: in step, give or take the sample's own uncertainty (half its
    # round trip, which a loaded TCG guest stretches; such offsets are left alone by design).
    row = real_vm.json("Get-VMTimeSync", VM)[0]
    assert abs(row["OffsetNs"]) <= max(500_000_000, row["RoundTripNs"] // 2 + 100_000_000), row
    # ... and the guest's clock now reads this host's time, within the same uncertainty.
    slack = max(1.0, row["RoundTripNs"] / 2e9 + 0.1)
    before = time.time()
    guest_now = float(real_vm.guest("date", "+%s.%N"))
    after = time.time()
    assert before - slack < guest_now < after + slack


def test_production_checkpoint_freezes_snapshots_and_thaws(real_vm, tmp_path):
    real_vm.guest("sh", "-c", "echo before-checkpoint > /root/mark && sync")
    report = real_vm.json("Checkpoint-VM", "-Name", VM, "-SnapshotType", "ProductionOnly")
    assert report["Status"] == "Completed", report
    assert report["Taken"] == "Production" and report["Consistency"] == "application"
    assert report["FrozenFilesystems"] == ["/"] and report["SnapshotStep"] == "qmp"
    assert [s["Step"] for s in report["Steps"]] == ["freeze", "snapshot", "thaw"]
    (disk,) = report["Snapshot"]["Data"]["Disks"]
    frozen, active = Path(disk["Frozen"]), Path(disk["Active"])
    assert frozen.parent == active.parent == real_vm.workdir
    assert asyncio.run(real_vm.qmp.active_image()) == str(active)

    # From outside: the point-in-time image is an ext4 that FIFREEZE left consistent
    # (ext4's freeze flushes the journal and clears needs_recovery; a mounted, unfrozen
    # ext4 always has it set), and it holds what the guest wrote before the checkpoint.
    superblock, raw = ext4_of(frozen, tmp_path)
    assert "needs_recovery" not in superblock
    assert guest_file(raw, "/root/mark") == "before-checkpoint\n"
    raw.unlink()

    # The guest thawed: it writes again, into the new overlay.
    real_vm.guest("sh", "-c", "echo after-checkpoint > /root/mark && sync")
    assert real_vm.json("Get-VMVss", VM)["Guest"]["state"] == "thawed"

    # Contrast: a Standard (crash-consistent) checkpoint does not freeze, and its image
    # is a mounted ext4 with its journal in use.
    standard = real_vm.json("Checkpoint-VM", "-Name", VM, "-SnapshotType", "Standard")
    assert standard["Status"] == "Completed" and standard["FrozenFilesystems"] == []
    superblock, raw = ext4_of(Path(standard["Snapshot"]["Data"]["Disks"][0]["Frozen"]), tmp_path)
    assert "needs_recovery" in superblock
    assert guest_file(raw, "/root/mark") == "after-checkpoint\n"


def test_setup_disk_is_inserted_and_readable_in_the_guest(real_vm):
    out = real_vm.ok("Insert-SetupDisk", "-VMName", VM)
    iso = Path(out.split(": ", 1)[1].split(" is in drive")[0])
    assert iso.parent == real_vm.lab_dir / "setup" and iso.is_file()
    # the guest's kernel sees the disc (the mount may need a moment after the media change)
    listing = real_vm.guest("sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do "
                            "mount -o ro /dev/sr0 /mnt 2>/dev/null && break; sleep 1; done; "
                            "cd /mnt && sha256sum -c SHA256SUMS && cat MANIFEST.json; "
                            "cd / && umount /mnt")
    assert "vmis-guest.pyz: OK" in listing and "install.sh: OK" in listing
    manifest = json.loads(listing[listing.index("{"):])
    assert manifest["version"] == vmis.__version__
    assert real_vm.ok("Eject-SetupDisk", VM) == f"{VM}: drive cdrom0 is empty\n"
    assert asyncio.run(real_vm.qmp.cdrom_media()) is None


def test_agent_restart_in_the_guest_shows_lost_communication_then_ok(real_vm):
    def main_pid() -> str:
        return real_vm.guest("systemctl", "show", "-p", "MainPID", "--value", "vmis-guest")

    old_pid = main_pid()
    # In 2 s, so this command's own session ends cleanly first.
    real_vm.guest("systemd-run", "--on-active=2", "--timer-property=AccuracySec=100ms",
                  "systemctl", "restart", "vmis-guest.service")
    seen: list[str] = []

    def heartbeat() -> str:
        with real_vm.api() as api:
            row = api.call("GET", "/services", params={"vm": VM, "name": "Heartbeat"})[0]
        status = str(row["PrimaryStatusDescription"])
        if not seen or seen[-1] != status:
            seen.append(status)
        return status

    until(lambda: heartbeat() == "Lost Communication", 60, "Lost Communication")
    until(lambda: heartbeat() == "OK", 120, "OK again after the restart")
    assert seen[-2:] == ["Lost Communication", "OK"], seen
    assert main_pid() != old_pid
    assert real_vm.ok("Get-VMIntegrationService", "-VMName", VM) == SEED_TABLE


def test_restart_vm_reboots_the_guest(real_vm):
    boot_id = real_vm.guest("cat", "/proc/sys/kernel/random/boot_id")
    console = real_vm.workdir / "console.log"
    boots = console.read_text(errors="replace").count("VMIS-MULTI-USER")
    result = real_vm.json("Restart-VM", "-Name", VM, timeout=400)[0]
    assert result["Error"] is None and result["State"] == "Running", result
    # a new kernel (boot id), a second boot on the console, the same QEMU process
    assert real_vm.guest("cat", "/proc/sys/kernel/random/boot_id") != boot_id
    # the marker is printed after multi-user.target, which the agent need not wait for
    until(lambda: console.read_text(errors="replace").count("VMIS-MULTI-USER") == boots + 1,
          60, "the second boot's marker on the console")
    assert QemuMachine.attach(real_vm.workdir).pid == real_vm.qemu_pid
    assert real_vm.ok("Get-VMIntegrationService", "-VMName", VM) == SEED_TABLE


def test_stop_vm_powers_the_guest_off(real_vm):
    machine = QemuMachine.attach(real_vm.workdir)
    assert machine.pid == real_vm.qemu_pid
    result = real_vm.json("Stop-VM", "-Name", VM, timeout=200)[0]
    assert result["Error"] is None and result["PoweredOff"] is True, result
    # the guest's kernel powered the machine down, and QEMU exited
    assert "reboot: Power down" in (real_vm.workdir / "console.log").read_text(errors="replace")
    assert not QemuMachine.attach(real_vm.workdir).is_running()
    assert real_vm.json("Get-VM", VM)[0]["State"] == "Off"
    assert real_vm.json("lab", "status")["VMs"][0]["QemuPid"] is None


def test_start_pause_resume_and_turn_off_through_qmp(real_vm):
    started = real_vm.json("Start-VM", VM)[0]
    assert started["Action"] == "Started" and started["State"] == "Running"
    machine = QemuMachine.attach(real_vm.workdir)
    assert machine.pid == started["Pid"] != real_vm.qemu_pid
    asyncio.run(real_vm.qmp.pause())
    assert real_vm.json("Get-VM", VM)[0]["State"] == "Paused"
    assert real_vm.ok("Start-VM", VM) == f"{VM}: resumed\n"
    assert asyncio.run(real_vm.qmp.status()) == "running"
    off = real_vm.json("Stop-VM", VM, "-TurnOff")[0]
    assert off["Action"] == "TurnOff" and off["Error"] is None
    assert not machine.is_running()
    assert real_vm.json("Get-VM", VM)[0]["State"] == "Off"


def test_vm_create_start_and_turn_off(real_vm):
    created = real_vm.json("vm", "create", "E2ENew", "-Memory", "256", timeout=900)
    workdir = real_vm.lab_dir / "machines" / "E2ENew"
    assert created["WorkDir"] == str(workdir) and created["State"] == "Off"
    assert created["Channel"] == f"unix:{workdir}/agent.sock"
    assert real_vm.json("Get-VM", "E2ENew")[0]["State"] == "Off"
    started = real_vm.json("Start-VM", "E2ENew")[0]
    assert started["Action"] == "Started" and started["State"] == "Running"
    assert QemuMachine.attach(workdir).config.memory_mib == 256
    real_vm.ok("Stop-VM", "E2ENew", "-TurnOff")
    assert real_vm.json("Get-VM", "E2ENew")[0]["State"] == "Off"
    assert not QemuMachine.attach(workdir).is_running()
