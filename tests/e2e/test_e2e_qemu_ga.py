"""End to end with the real qemu-ga in a real QEMU guest, and no vmis agent in the way.

One VM for the module, started as an administrator runs their own QEMU
(vmis.qemu.machine.QemuMachine, the project's test image, whose Debian has
qemu-guest-agent installed and started by its udev rule on the machine's
``org.qemu.guest_agent.0`` port), its clock an hour ahead. A lab's host
manager (``vmis host serve``) gets it with ``vmis vm add QgaVM -Channel
unix:.../qga.sock -Qmp .../qmp.sock -GuestAgent qemu-ga``; the image's vmis
agent also runs in the guest, on its own port, which nobody dials here.
The tests then run the seed scenario through the ``vmis`` command line, in
order: the table, enable and disable, time, KVP, copies both ways, a
production checkpoint (qemu-ga's freeze, QMP's snapshot, the thaw), and
Stop-VM through guest-shutdown; they check from outside the guest where
they can (the frozen image, the host's clock, QEMU's exit).
"""

from __future__ import annotations

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

from vmis.lab.lab import Lab
from vmis.qemu.cmdline import DiskMode
from vmis.qemu.image.guest_image import GuestImage
from vmis.qemu.machine import QemuMachine
from vmis.services.fcopy import resume_token

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]

VM = "QgaVM"
#: seconds the guest's clock starts ahead of the host's
CLOCK_OFFSET = 3600
MIB = 1024 * 1024
#: each way: qemu-ga's JSON parser takes base64 a character at a time, and
#: the guest's emulated CPU runs it (docs/guest-links.md §4)
COPY_MIB = 8

SEED_TABLE = """\
VMName      Name                    Enabled PrimaryStatusDescription SecondaryStatusDescription
------      ----                    ------- ------------------------ --------------------------
QgaVM       Guest Service Interface False   OK
QgaVM       Heartbeat               True    OK                       OK
QgaVM       Key-Value Pair Exchange True    OK
QgaVM       Shutdown                True    OK
QgaVM       Time Synchronization    True    OK
QgaVM       VSS                     True    OK
"""


@dataclass
class QgaGuest:
    lab_dir: Path
    machine: QemuMachine
    image: GuestImage

    def vmis(self, *args: str, timeout: float = 120, input: str | None = None) -> Result:
        return run_vmis(self.lab_dir, *args, timeout=timeout, input=input)

    def ok(self, *args: str, timeout: float = 120, input: str | None = None) -> str:
        result = self.vmis(*args, timeout=timeout, input=input)
        assert result.code == 0, f"vmis {' '.join(args)}: {result.err}"
        return result.out

    def json(self, *args: str, timeout: float = 120) -> Any:
        return json.loads(self.ok(*args, "--json", timeout=timeout))

    def guest(self, *argv: str, timeout: float = 120) -> str:
        """A command in the guest through VM Session, which here is qemu-ga's guest-exec."""
        return self.ok("Invoke-Command", "-VMName", VM, "-NoStdin", "--", *argv, timeout=timeout)


@pytest.fixture(scope="module")
def qga_guest() -> Iterator[QgaGuest]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    image = GuestImage.load(build_test_image())
    top = Path(tempfile.mkdtemp(prefix="vmis-qga-", dir="/tmp"))
    machine = QemuMachine(VM, top / "vm", image, disk_mode=DiskMode.OVERLAY,
                          clock_offset=CLOCK_OFFSET)
    lab_dir = top / "lab"
    try:
        machine.start()
        Lab(lab_dir).ensure_host()
        added = run_vmis(lab_dir, "vm", "add", VM, "-Channel", f"unix:{machine.paths.qga}",
                         "-Qmp", str(machine.paths.qmp), "-GuestAgent", "qemu-ga")
        assert added.code == 0, added.err
        begin = time.monotonic()
        guest = QgaGuest(lab_dir, machine, image)
        until(lambda: guest.json("Get-VM", VM)[0]["Heartbeat"] == "OkApplicationsHealthy",
              420, "the qemu-ga guest's heartbeat", every=2)
        print(f"\n{VM}: qemu-ga answers {time.monotonic() - begin:.1f} s after 'vm add'")
        yield guest
    finally:
        Lab(lab_dir).down(None)
        machine.kill()
        shutil.rmtree(top, ignore_errors=True)


def test_the_seed_table_and_enable_disable(qga_guest):
    assert qga_guest.ok("Get-VMIntegrationService", "-VMName", VM) == SEED_TABLE
    [vm] = qga_guest.json("Get-VM", VM)
    assert vm["IntegrationServicesVersion"].startswith("qemu-ga 7.2")
    assert vm["GuestAgent"] == "qemu-ga" and vm["State"] == "Running"
    # qemu-ga reports no uptime: Get-VM's is the VM's, since its QEMU started
    since_start = time.time() - qga_guest.machine.started_at
    assert abs(vm["Uptime"] - since_start) < 5, (vm["Uptime"], since_start)

    qga_guest.ok("Disable-VMIntegrationService", "-VMName", VM, "-Name", "Heartbeat")
    assert qga_guest.json("Get-VM", VM)[0]["Heartbeat"] == "Disabled"
    row = qga_guest.json("Get-VMIntegrationService", VM, "Heartbeat")[0]
    assert (row["Enabled"], row["PrimaryStatusDescription"]) == (False, "OK")
    qga_guest.ok("Enable-VMIntegrationService", "-VMName", VM, "-Name", "Heartbeat")
    until(lambda: qga_guest.json("Get-VM", VM)[0]["Heartbeat"] == "OkApplicationsHealthy", 60,
          "the heartbeat back")
    assert qga_guest.ok("Get-VMIntegrationService", "-VMName", VM) == SEED_TABLE


def steps_logged(lab_dir: Path) -> list[float]:
    """The steps of the guest's clock the lab's host manager logged, in seconds."""
    host_log = (lab_dir / "host.log").read_text()
    return [float(s) for s in re.findall(rf"{VM}: qemu-ga: stepped the guest's clock by (\S+) s",
                                         host_log)]


def test_time_sync_stepped_a_clock_an_hour_ahead(qga_guest):
    # The heartbeat that made the guest ready comes first; the session's SYNC
    # (a burst of eight samples, qemu-ga's look for an NTP daemon, then
    # guest-set-time with its hwclock) follows seconds later on an emulated CPU.
    steps = until(lambda: steps_logged(qga_guest.lab_dir), 120,
                  "the step of the guest's clock in host.log", every=1)
    assert any(-CLOCK_OFFSET - 60 < s < -CLOCK_OFFSET + 60 for s in steps), steps
    row = qga_guest.json("Get-VMTimeSync", VM)[0]
    assert row["Mode"] == "own" and row["Error"] == "", row
    # the guest's clock reads this host's time, within the sample's uncertainty
    slack = max(1.0, (row["RoundTripNs"] or 0) / 2e9 + 0.5)
    before = time.time()
    guest_now = float(qga_guest.guest("date", "+%s.%N"))
    after = time.time()
    assert before - slack < guest_now < after + slack


def test_kvp_reports_the_guests_facts(qga_guest):
    items = {r["Key"]: r["Value"] for r in qga_guest.json("Get-VMKvp", VM, "-Pool", "Auto")}
    assert items["OSName"] == "Debian GNU/Linux" and items["OSMajorVersion"] == "12"
    assert items["OSBuildNumber"] == qga_guest.image.kernel_release
    # qemu-ga starts before the guest's network: its DHCP address shows at a
    # refresh of the facts after it came up (vmis.links.qemu_ga.kvp.REFRESH)
    items = until(lambda: (found := {r["Key"]: r["Value"] for r in qga_guest.json(
        "Get-VMKvp", VM, "-Pool", "Auto")})["NetworkAddressIPv4"] and found, 120,
        "the guest's IPv4 address in the Auto pool", every=2)
    assert "10.0.2.15" in items["NetworkAddressIPv4"].split(";")
    assert items["FullyQualifiedDomainName"] == "vmis-guest"
    assert items["IntegrationServicesVersion"].startswith("qemu-ga 7.2")
    refused = qga_guest.vmis("Set-VMKvp", VM, "role", "db")
    assert refused.code == 1 and "keeps no key-value pools" in refused.err


def test_copy_vm_file_in_and_out_and_trees(qga_guest, tmp_path):
    qga_guest.ok("Enable-VMIntegrationService", "-VMName", VM, "-Name", "Guest Service Interface")
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(COPY_MIB * MIB))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    into = qga_guest.json("Copy-VMFile", VM, str(source), "/root/in/", "-FileSource", "Host",
                          "-CreateFullPath", timeout=600)
    assert (into["Destination"], into["Sha256"]) == ("/root/in/in.bin", digest)
    # the guest's own sha256sum, and no partial file left beside it
    assert qga_guest.guest("sha256sum", "/root/in/in.bin").split()[0] == digest
    assert qga_guest.guest("ls", "-a", "/root/in").split() == [".", "..", "in.bin"]
    back = tmp_path / "back.bin"
    out = qga_guest.json("Copy-VMFile", VM, "/root/in/in.bin", str(back), "-FileSource",
                         "Guest", timeout=600)
    assert out["Sha256"] == digest and back.read_bytes() == source.read_bytes()
    print(f"\nCopy-VMFile {COPY_MIB} MiB over qemu-ga: into the guest "
          f"{COPY_MIB / into['Seconds']:.2f} MiB/s, out {COPY_MIB / out['Seconds']:.2f} MiB/s")

    # an interrupted copy's partial file (the first MiB) is resumed: its prefix
    # hashes the same in the guest
    name = resume_token("to-guest", str(source), source.stat().st_size,
                        source.stat().st_mtime_ns, "/root/in2/\0in.bin")[:16]
    qga_guest.guest("sh", "-c", f"mkdir -p /root/in2 && head -c {MIB} /root/in/in.bin > "
                                f"/root/in2/.in.bin.{name}.vmis-part")
    resumed = qga_guest.json("Copy-VMFile", VM, str(source), "/root/in2/", "-FileSource", "Host",
                             timeout=600)
    assert (resumed["BytesResumed"], resumed["Sha256"]) == (MIB, digest)
    assert qga_guest.guest("sha256sum", "/root/in2/in.bin").split()[0] == digest

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.txt").write_text("beta\n")
    qga_guest.json("Copy-VMFile", VM, str(tree), "/srv/", "-FileSource", "Host", "-Recurse",
                   timeout=300)
    assert qga_guest.guest("cat", "/srv/tree/sub/b.txt") == "beta\n"
    again = tmp_path / "again"
    copied = qga_guest.json("Copy-VMFile", VM, "/srv/tree", str(again), "-FileSource", "Guest",
                            "-Recurse", timeout=300)
    assert copied["Files"] == 2 and (again / "a.txt").read_text() == "alpha\n"
    exists = qga_guest.vmis("Copy-VMFile", VM, str(source), "/root/in/in.bin", "-FileSource",
                            "Host")
    assert exists.code == 1 and "-Force overwrites it" in exists.err
    qga_guest.ok("Disable-VMIntegrationService", "-VMName", VM, "-Name",
                 "Guest Service Interface")


def test_invoke_command_runs_through_guest_exec(qga_guest):
    assert qga_guest.guest("uname", "-n") == "vmis-guest\n"
    failed = qga_guest.vmis("Invoke-Command", "-VMName", VM, "-NoStdin", "--", "sh", "-c",
                            "echo out; echo err >&2; exit 7")
    assert (failed.code, failed.out, failed.err) == (7, "out\n", "err\n")
    piped = qga_guest.ok("Invoke-Command", "-VMName", VM, "--", "tr", "a-z", "A-Z",
                         input="given when it starts\n")
    assert piped == "GIVEN WHEN IT STARTS\n"


def test_production_checkpoint_freezes_snapshots_and_thaws(qga_guest, tmp_path):
    qga_guest.guest("sh", "-c", "echo before-checkpoint > /root/mark && sync")
    report = qga_guest.json("Checkpoint-VM", "-Name", VM, "-SnapshotType", "ProductionOnly",
                            timeout=300)
    assert report["Status"] == "Completed", report
    assert report["Taken"] == "Production" and report["Consistency"] == "application"
    assert report["FrozenFilesystems"] == ["/"] and report["SnapshotStep"] == "qmp"
    assert [s["Step"] for s in report["Steps"]] == ["freeze", "snapshot", "thaw"]
    (disk,) = report["Snapshot"]["Data"]["Disks"]
    # qemu-ga's FIFREEZE left the point-in-time image consistent (no journal to replay)
    superblock, raw = ext4_of(Path(disk["Frozen"]), tmp_path)
    assert "needs_recovery" not in superblock
    assert guest_file(raw, "/root/mark") == "before-checkpoint\n"
    raw.unlink()
    qga_guest.guest("sh", "-c", "echo after-checkpoint > /root/mark && sync")  # thawed
    assert qga_guest.json("Get-VMVss", VM)["Guest"]["state"] == "thawed"


def test_stop_vm_through_guest_shutdown(qga_guest):
    result = qga_guest.json("Stop-VM", "-Name", VM, timeout=300)[0]
    assert result["Error"] is None and result["PoweredOff"] is True, result
    assert "reboot: Power down" in qga_guest.machine.paths.console.read_text(errors="replace")
    # the manager saw QMP's socket go, which QEMU closes before its process has exited
    deadline = time.monotonic() + 30
    while qga_guest.machine.is_running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not qga_guest.machine.is_running()
    assert qga_guest.json("Get-VM", VM)[0]["State"] == "Off"
