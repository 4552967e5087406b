"""The setup disk: a real ISO 9660 image a standard tool lists, that installs a working agent."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import vmis
from vmis.host.setupdisk import build_setup_disk

FILES = {"60-vmis.rules", "install.sh", "MANIFEST.json", "README.TXT", "SHA256SUMS",
         "vmis-guest.pyz", "vmis-guest.service"}


@pytest.fixture
def disk(tmp_path):
    return build_setup_disk(tmp_path / "vmis-setup.iso"), tmp_path / "vmis-setup.iso"


def isoinfo():
    path = shutil.which("isoinfo")
    if path is None:
        pytest.fail("isoinfo (Debian's genisoimage) is missing: run dev/setup --test")
    return path


def test_a_standard_tool_lists_the_files_with_their_names_and_modes(disk):
    manifest, path = disk
    listing = subprocess.run([isoinfo(), "-l", "-R", "-i", str(path)], capture_output=True,
                             text=True, check=True).stdout
    names = {line.split()[-1] for line in listing.splitlines() if line.startswith(("-", "d"))}
    assert FILES <= names
    assert any(line.startswith("-rwxr-xr-x") and line.endswith("install.sh")
               for line in map(str.rstrip, listing.splitlines()))
    info = subprocess.run([isoinfo(), "-d", "-i", str(path)], capture_output=True, text=True,
                          check=True).stdout
    assert f"Volume id: {manifest['label']}" in info and "Joliet" in info
    assert manifest["version"] == vmis.__version__
    assert set(manifest["files"]) == FILES - {"MANIFEST.json", "SHA256SUMS"}


def test_installing_from_the_disk_into_an_empty_root_gives_a_working_agent(disk, short_tmp):
    _, path = disk
    mnt = short_tmp / "mnt"
    mnt.mkdir()
    for name in FILES:  # what `mount /dev/sr0 /mnt` would show
        data = subprocess.run([isoinfo(), "-R", "-i", str(path), "-x", f"/{name}"],
                              capture_output=True, check=True).stdout
        (mnt / name).write_bytes(data)
    subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=mnt, check=True, capture_output=True)
    root = short_tmp / "root"
    root.mkdir()
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    done = subprocess.run(["sh", str(mnt / "install.sh"), "--root", str(root), "--json"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["Installed"] == vmis.__version__
    unit = root / "etc/systemd/system/multi-user.target.wants/vmis-guest.service"
    assert unit.is_symlink() and (root / "etc/udev/rules.d/60-vmis.rules").is_file()
    (root / "etc/vmis/agent.conf").write_text(
        "[agent]\nchannel = unix:/run/vmis/channel.sock\nadapters = fake\n")
    pyz = root / "usr/lib/vmis/vmis-guest.pyz"
    agent = subprocess.Popen([sys.executable, str(pyz), "--root", str(root), "run"],
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            out = subprocess.run([sys.executable, str(pyz), "--root", str(root), "Get-Service"],
                                 capture_output=True, text=True)
            if out.returncode == 0:
                break
            assert time.monotonic() < deadline, out.stderr
            time.sleep(0.2)
        assert "Running  vmicheartbeat      Hyper-V Heartbeat Service" in out.stdout
        # installing again is an upgrade that keeps the configuration
        again = subprocess.run(["sh", str(mnt / "install.sh"), "--root", str(root)],
                               capture_output=True, text=True, env=env)
        assert again.returncode == 0 and "upgraded" in again.stdout
        assert "adapters = fake" in (root / "etc/vmis/agent.conf").read_text()
    finally:
        agent.terminate()
        agent.wait(20)


def test_a_damaged_disk_is_refused_by_its_checksums(disk, short_tmp):
    _, path = disk
    mnt = short_tmp / "mnt"
    mnt.mkdir()
    for name in FILES:
        data = subprocess.run([isoinfo(), "-R", "-i", str(path), "-x", f"/{name}"],
                              capture_output=True, check=True).stdout
        (mnt / name).write_bytes(data)
    pyz = mnt / "vmis-guest.pyz"
    pyz.write_bytes(pyz.read_bytes()[:-100])
    done = subprocess.run(["sh", str(mnt / "install.sh"), "--root", str(short_tmp)],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "FAILED" in done.stdout + done.stderr
    assert not (short_tmp / "usr").exists()
