"""Offline install into a stopped VM's disk: a root directory, and a disk image via libguestfs."""

import json
import shutil
import subprocess

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


@pytest.mark.slow
def test_install_into_a_qcow2_image_through_libguestfs(short_tmp):
    if shutil.which("qemu-img") is None or shutil.which("debugfs") is None:
        pytest.fail("qemu-utils and e2fsprogs are needed: run dev/setup --test")
    from vmis.qemu.image.layers import ensure_agent_image

    # a stopped VM's disk: the test image, which already has an agent config
    image = ensure_agent_image()
    disk = short_tmp / "vm.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(image.rootfs), str(disk)],
                   check=True)
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
