"""QemuMachine without booting a guest: records, attach, errors, process identity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmis.errors import MachineNotRunning, MachineStartError, NotFoundError, QemuNotInstalled
from vmis.qemu.cmdline import BootSpec, DiskMode, MachineConfig
from vmis.qemu.machine import QemuMachine
from vmis.qemu.process import (
    _config_from_json,
    _config_to_json,
    _proc_identity,
    default_vsock_cid,
)


def spec(tmp: Path) -> BootSpec:
    return BootSpec(
        kernel=tmp / "vmlinux", initrd=None, append="console=ttyS0", firmware=None,
        disk=tmp / "disk.raw",
    )  # fmt: skip


def test_config_survives_the_json_record(tmp_path: Path) -> None:
    config = MachineConfig(
        name="vm1", boot=spec(tmp_path), disk_mode=DiskMode.OVERLAY, clock_offset=-3600.0,
        vsock_cid=9, extra_append=("quiet",), extra_args=("-no-hpet",),
    )  # fmt: skip
    assert _config_from_json(json.loads(json.dumps(_config_to_json(config)))) == config


def test_attach_to_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no vmis machine in"):
        QemuMachine.attach(tmp_path)
    (tmp_path / "machine.json").write_text("{not json")
    with pytest.raises(NotFoundError, match="unreadable machine record"):
        QemuMachine.attach(tmp_path)


async def test_attach_to_a_machine_whose_process_is_gone(tmp_path: Path) -> None:
    # A real process that has exited stands in for a QEMU that stopped.
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = _proc_identity(proc.pid)
    proc.wait()
    config = MachineConfig(name="vm1", boot=spec(tmp_path))
    record = {
        "version": 1, "qemu": "qemu-system-x86_64", "pid": proc.pid, "identity": identity,
        "started_at": 1.0, "argv": [], "config": _config_to_json(config), "disk_chain": [],
    }  # fmt: skip
    (tmp_path / "machine.json").write_text(json.dumps(record))
    machine = QemuMachine.attach(tmp_path)
    assert machine.config == config
    assert not machine.is_running() and machine.pid is None
    assert await machine.status() == "off"
    with pytest.raises(MachineNotRunning):
        await machine.pause()
    machine.kill()  # nothing to kill: no error


def test_identity_tells_a_recycled_pid_apart() -> None:
    mine = _proc_identity(os.getpid())
    assert mine is not None and mine == _proc_identity(os.getpid())
    assert _proc_identity(2**22 + 12345) is None  # beyond pid_max


def test_start_without_qemu_is_one_clear_error(tmp_path: Path) -> None:
    machine = QemuMachine("vm1", tmp_path / "w", spec(tmp_path), qemu="/nonexistent/qemu-system")
    with pytest.raises(QemuNotInstalled, match="install the Debian package qemu-system-x86"):
        machine.start()
    assert not machine.is_running()


def test_vsock_device_only_when_asked_or_available(tmp_path: Path) -> None:
    never = QemuMachine("vm1", tmp_path, spec(tmp_path), vsock_cid=None)
    assert "vhost-vsock-pci" not in " ".join(never.command())
    forced = QemuMachine("vm1", tmp_path, spec(tmp_path), vsock_cid=77)
    assert "vhost-vsock-pci,guest-cid=77,id=vsock0" in forced.command()
    auto = QemuMachine("vm1", tmp_path, spec(tmp_path))
    expected = default_vsock_cid(tmp_path) if Path("/dev/vhost-vsock").exists() else None
    assert auto.config.vsock_cid == expected
    assert 3 <= default_vsock_cid(tmp_path) < 3 + 2**30


@pytest.mark.skipif(
    shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) is not installed"
)
def test_a_persistent_disk_is_created_once_and_then_reused(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    workdir = tmp_path / "vm"
    workdir.mkdir()
    first = QemuMachine("vm1", workdir, spec(tmp_path), disk_mode=DiskMode.OVERLAY, vsock_cid=None)
    first._prepare_overlay()
    overlay = workdir / "disk.qcow2"
    assert first.disk_chain == [overlay]
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(overlay)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(info)["backing-filename"] == str(disk)
    inode = overlay.stat().st_ino

    # A new object for the same directory (a restart) keeps the disk it finds.
    second = QemuMachine("vm1", workdir, spec(tmp_path), disk_mode=DiskMode.OVERLAY, vsock_cid=None)
    second._prepare_overlay()
    assert second.disk_chain == [overlay] and overlay.stat().st_ino == inode

    overlay.unlink()
    (workdir / "disk-1.qcow2").write_bytes(b"")
    (workdir / "machine.json").write_text(
        json.dumps({"disk_chain": [str(overlay), str(workdir / "disk-1.qcow2")]})
    )
    third = QemuMachine("vm1", workdir, spec(tmp_path), disk_mode=DiskMode.OVERLAY, vsock_cid=None)
    third._prepare_overlay()
    assert third.disk_chain[-1] == workdir / "disk-1.qcow2"
    (workdir / "disk-1.qcow2").unlink()
    fourth = QemuMachine("vm1", workdir, spec(tmp_path), disk_mode=DiskMode.OVERLAY, vsock_cid=None)
    with pytest.raises(MachineStartError, match=r"disk-1\.qcow2 is missing"):
        fourth._prepare_overlay()
