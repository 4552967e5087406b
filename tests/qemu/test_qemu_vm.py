"""Real QEMU virtual machines booted from the project's guest image (marker ``vm``).

Two boots in all, each checked for many things, to keep the run within a
couple of minutes under TCG. Every machine is started with
``die_with_parent`` and cleaned up in ``finally``, so a failed or timed-out
test leaves no QEMU behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qemu_probe import ProbeClient

from vmis.errors import MachineStartError
from vmis.qemu.cmdline import BootSpec, DiskMode
from vmis.qemu.image.guest_image import GuestImage
from vmis.qemu.machine import QemuMachine

pytestmark = [pytest.mark.vm, pytest.mark.timeout(400)]

BOOT_TIMEOUT = 240.0

#: In-guest AF_VSOCK round trip through vsock_loopback (CID 1 is VMADDR_CID_LOCAL).
VSOCK_LOOPBACK = (
    "import socket; a = socket.AF_VSOCK; "
    "srv = socket.socket(a, socket.SOCK_STREAM); srv.bind((socket.VMADDR_CID_ANY, 5000)); "
    "srv.listen(); cli = socket.socket(a, socket.SOCK_STREAM); cli.connect((1, 5000)); "
    'conn, peer = srv.accept(); cli.sendall(b"vsock-ok"); print(conn.recv(16).decode(), peer[0])'
)


async def until(probe: ProbeClient, cmd: str, pattern: str, timeout: float) -> str:
    """Run a guest command until its output matches (the guest may still be settling)."""
    deadline = time.monotonic() + timeout
    while True:
        _, out = await probe.sh(cmd)
        if re.search(pattern, out):
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"{cmd!r} never matched {pattern!r}; last output: {out!r}")
        await asyncio.sleep(0.5)


def read_guest_file(image: Path, path: str, tmp: Path) -> str:
    """Read a file from a qcow2 disk chain with qemu-img and debugfs (no mounting)."""
    raw = tmp / "flat.raw"
    subprocess.run(
        ["qemu-img", "convert", "-U", "-O", "raw", str(image), str(raw)], check=True, timeout=120
    )
    debugfs = shutil.which("debugfs", path="/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    assert debugfs is not None, "debugfs (e2fsprogs) is needed"
    out = subprocess.run(
        [debugfs, "-R", f"cat {path}", str(raw)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    raw.unlink()
    return out.stdout


async def test_guest_boots_and_serves_channel_network_clock_cdrom_snapshot(
    probe_image: GuestImage, tmp_path: Path
) -> None:
    machine = QemuMachine(
        "vmtest1", tmp_path / "vm", probe_image,
        disk_mode=DiskMode.OVERLAY, clock_offset=-3600.0, vsock_cid=None,
    )  # fmt: skip
    machine.start(die_with_parent=True)
    try:
        # systemd reaches multi-user.target with nothing failed
        report = await machine.wait_for_boot(timeout=BOOT_TIMEOUT)
        print(f"\nboot to multi-user.target: {report.seconds:.1f} s", end=" ")
        print(f"(guest uptime {report.guest_uptime:.1f} s)")
        assert report.failed_units == ()
        assert await machine.status() == "running"

        # the probe service answers over the virtio-serial channel
        await machine.wait_for_channel(timeout=60)
        probe = await ProbeClient.connect(machine.paths.channel)
        rtts = []
        for i in range(50):
            begin = time.perf_counter()
            reply = await probe.request("echo", data=f"ping-{i}")
            rtts.append(time.perf_counter() - begin)
            assert reply["data"] == f"ping-{i}"
        median, worst = statistics.median(rtts) * 1000, max(rtts) * 1000
        print(f"echo round trip: median {median:.2f} ms, max {worst:.2f} ms")
        _, active = await probe.sh("systemctl is-active multi-user.target vmis-probe.service")
        assert active.split() == ["active", "active"]

        # an IPv4 address from QEMU's user-mode DHCP
        out = await until(probe, "ip -4 -o addr show scope global", r"inet \d+\.\d+\.\d+\.\d+/", 30)
        assert "inet 10.0.2.15/24" in out

        # the modules udev and modules-load.d should have loaded; AF_VSOCK over vsock_loopback
        _, modules = await probe.sh("cut -d' ' -f1 /proc/modules")
        for module in ("virtio_console", "virtio_net", "vsock_loopback", "sr_mod", "button"):
            assert module in modules.split(), f"{module} is not loaded"
        _, out = await probe.sh(f"python3 -c '{VSOCK_LOOPBACK}'")
        assert out.split() == ["vsock-ok", "1"]

        # the clock started one hour behind the host's
        reply = await probe.request("time")
        offset = reply["time"] - time.time()
        print(f"guest clock offset: {offset:.1f} s")
        assert -3600 - 15 < offset < -3600 + 15

        # a disc inserted through QMP is readable in the guest
        disc = tmp_path / "setup.iso"
        payload = os.urandom(32 * 2048)
        disc.write_bytes(payload)
        assert await machine.monitor.cdrom_media() is None
        await machine.insert_cdrom(disc)
        assert await machine.monitor.cdrom_media() == str(disc)
        digest = hashlib.sha256(payload).hexdigest()
        await until(probe, "dd if=/dev/sr0 bs=2048 count=32 2>/dev/null | sha256sum", digest, 30)
        await machine.eject_cdrom()
        assert await machine.monitor.cdrom_media() is None

        # a block snapshot taken while the file system is frozen keeps that state
        await probe.sh("echo before > /root/mark")
        await probe.request("freeze", path="/")
        try:
            snap = await machine.snapshot()
        finally:
            await probe.request("thaw", path="/")
        await probe.sh("echo after > /root/mark && sync")
        assert snap.frozen == str(machine.paths.overlay)
        assert machine.disk_chain == [machine.paths.overlay, snap.active]
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "-U", "--output=json", str(snap.active)],
                capture_output=True, text=True, check=True, timeout=30,
            ).stdout
        )  # fmt: skip
        assert info["format"] == "qcow2" and info["backing-filename"] == str(machine.paths.overlay)
        assert read_guest_file(machine.paths.overlay, "/root/mark", tmp_path) == "before\n"

        # pause and resume
        await machine.pause()
        assert await machine.status() == "paused"
        await machine.resume()
        assert await machine.status() == "running"

        # the ACPI power button powers the guest off and QEMU exits
        await probe.close()
        await machine.powerdown()
        assert await machine.wait_exit(timeout=90), "the guest ignored the power button"
        assert await machine.status() == "off"
    finally:
        machine.cleanup()


ATTACH_AND_REPORT = """
import asyncio, sys
from pathlib import Path
from vmis.qemu.machine import QemuMachine
machine = QemuMachine.attach(Path(sys.argv[1]))
print(machine.pid, asyncio.run(machine.status()))
"""


async def test_another_process_attaches_and_the_machine_quits(
    probe_image: GuestImage, tmp_path: Path
) -> None:
    workdir = tmp_path / "vm"
    machine = QemuMachine("vmtest2", workdir, probe_image, network=False, vsock_cid=None)
    machine.start(die_with_parent=True)
    try:
        # The host manager runs in another process than the one that started QEMU.
        seen = subprocess.run(
            [sys.executable, "-c", ATTACH_AND_REPORT, str(workdir)],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.split()  # fmt: skip
        assert seen == [str(machine.pid), "running"]
        attached = QemuMachine.attach(workdir)
        assert attached.pid == machine.pid and attached.config == machine.config
        await attached.quit(timeout=20)
        assert not machine.is_running()
        assert await attached.status() == "off"
    finally:
        machine.cleanup()
    assert not (workdir / "machine.json").exists() and not (workdir / "qmp.sock").exists()


def test_qemu_refusing_to_start_is_one_clear_error(tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 1024 * 1024)
    spec = BootSpec(
        kernel=tmp_path / "no-such-kernel", initrd=None, append="", firmware=None, disk=disk
    )
    machine = QemuMachine("broken", tmp_path / "vm", spec, vsock_cid=None)
    with pytest.raises(MachineStartError, match=r"QEMU exited with status 1 .*no-such-kernel"):
        machine.start(die_with_parent=True)
    assert not machine.is_running()
