"""Offline install into a stopped VM's disk: a root directory, and a disk image via libguestfs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vmis
from support.lab import run_vmis


def test_install_into_a_guest_root_directory_keeps_its_config(short_tmp):
    root = short_tmp / "guest"
    (root / "etc/vmis").mkdir(parents=True)
    (root / "etc/vmis/agent.conf").write_text("[agent]\nchannel = vsock:7460\n")
    result = run_vmis(short_tmp, "Install-VMIntegrationServices", str(root), "--json")
    assert result.code == 0, result.err
    row = json.loads(result.out)
    assert (row["Kind"], row["Installed"], row["Previous"]) == ("directory", vmis.__version__,
                                                                None)
    assert (root / "usr/lib/vmis/vmis-guest.pyz").is_file()
    assert (root / "etc/vmis/agent.conf").read_text() == "[agent]\nchannel = vsock:7460\n"
    again = json.loads(run_vmis(short_tmp, "install-offline", str(root), "--json").out)
    assert again["Previous"] == vmis.__version__


def test_bad_targets_are_one_line_errors(short_tmp):
    missing = run_vmis(short_tmp, "Install-VMIntegrationServices", str(short_tmp / "nope.qcow2"))
    assert missing.code == 1 and "no such disk image" in missing.err
    assert len(missing.err.strip().splitlines()) == 1


def stopped_vm_disk(directory: Path) -> Path:
    """A stopped VM's disk: the test image, which already has an agent config, as qcow2."""
    if shutil.which("qemu-img") is None or shutil.which("debugfs") is None:
        pytest.fail("qemu-utils and e2fsprogs are needed: run dev/setup --test")
    from vmis.qemu.image.layers import ensure_agent_image

    image = ensure_agent_image()
    disk = directory / "vm.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(image.rootfs), str(disk)],
                   check=True)
    return disk


@pytest.mark.slow
def test_install_into_a_qcow2_image_through_libguestfs(short_tmp):
    disk = stopped_vm_disk(short_tmp)
    result = run_vmis(short_tmp, "Install-VMIntegrationServices", str(disk), "--json",
                      timeout=900)
    assert result.code == 0, result.err
    row = json.loads(result.out)
    assert row["Kind"] == "image (qcow2)" and row["KeptConfig"] is True and row["Written"] >= 5
    raw = short_tmp / "vm.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True)

    def debugfs(request):
        return subprocess.run(["debugfs", "-R", request, str(raw)], capture_output=True,
                              text=True, check=True).stdout

    assert debugfs("cat /usr/lib/vmis/VERSION").strip() == vmis.__version__
    assert "Type: symlink" in debugfs(
        "stat /etc/systemd/system/multi-user.target.wants/vmis-guest.service")
    assert "Type: regular" in debugfs("stat /usr/lib/vmis/vmis-guest.pyz")


@pytest.mark.slow
def test_a_kernel_is_lent_where_tmp_is_an_overlay_and_there_is_no_kernel(short_tmp):
    # A container's /tmp is on its overlayfs root and it has no /boot kernel: the
    # lent kernel's writable layer cannot be in /tmp there (mount(8) said "... failed
    # mount system call"). Here /tmp is made an overlay and /boot hidden, in a
    # private mount namespace of the command only.
    if os.geteuid() != 0:
        pytest.skip("lending a kernel, and this test's mounts, need root")
    disk = stopped_vm_disk(short_tmp)
    layers = short_tmp / "tmp-layers"
    for name in ("lower", "upper", "work", "tmp"):
        (layers / name).mkdir(parents=True)
    script = ('mount -t overlay vmis-test -o "lowerdir=$1/lower,upperdir=$1/upper,'
              'workdir=$1/work" "$1/tmp" && mount -t tmpfs vmis-test /boot && '
              'TMPDIR="$1/tmp"; export TMPDIR; shift; exec "$@"')
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(layers), sys.executable, "-m", "vmis.cli.host", "Install-VMIntegrationServices",
            str(disk), "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["Kind"] == "image (qcow2)"


def test_a_host_without_the_appliance_is_told_what_to_install(short_tmp, monkeypatch):
    if subprocess.run(["/usr/bin/python3", "-c", "import guestfs"], check=False).returncode:
        pytest.fail("python3-guestfs is needed: run dev/setup --test")
    disk = short_tmp / "vm.raw"
    disk.write_bytes(bytes(1 << 20))
    (short_tmp / "empty").mkdir()
    monkeypatch.setenv("LIBGUESTFS_PATH", str(short_tmp / "empty"))
    result = run_vmis(short_tmp, "Install-VMIntegrationServices", str(disk), "-Format", "raw")
    assert result.code == 1 and "Traceback" not in result.err
    [line] = result.err.strip().splitlines()
    assert f"libguestfs finds no appliance on its path ({short_tmp / 'empty'}" in line
    assert line.endswith("unset LIBGUESTFS_PATH, or apt-get install --reinstall libguestfs0")
