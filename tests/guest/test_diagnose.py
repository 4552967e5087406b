"""``vmis-guest diagnose`` on fixture trees (tests/fixtures/diagnose/*)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vmis
from vmis.guest.diagnose import diagnose, main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures/diagnose"
PATH = "/usr/local/bin:/usr/sbin:/usr/bin"


def run(capsys: pytest.CaptureFixture[str], tree: str, *extra: str) -> tuple[int, str]:
    code = main(["--root", str(FIXTURES / tree), "--path", PATH, *extra])
    return code, capsys.readouterr().out


def daemon_line(out: str, title: str) -> str:
    section = out.split("\nDaemons\n", 1)[1].split("\n\n", 1)[0]
    (line,) = [ln for ln in section.splitlines() if ln.strip().startswith(title)]
    return line


def driver_line(out: str, name: str) -> str:
    return next(ln for ln in out.splitlines() if ln.strip().startswith(name + " "))


def test_all_present_text(capsys):
    code, out = run(capsys, "all-present")
    assert code == 0
    assert out.splitlines()[0] == "Platform: Hyper-V"
    assert f"vmis {vmis.__version__}; Hyper-V kernel driver 3.1" in out
    for name, how in (("hv_vmbus", "loaded"), ("hv_utils", "loaded"),
                      ("virtio_console", "built-in"), ("vsock", "loaded")):
        assert f"present ({how})" in driver_line(out, name)
    assert "hv_kvp_daemon (pid 101)" in daemon_line(out, "Key-Value Pair Exchange")
    assert "vmis-hv-vss-daemon (pid 202)" in daemon_line(out, "VSS (Backup)")
    assert "vmis-guest hyperv fcopy (pid 303)" in daemon_line(out, "Guest Service Interface")
    assert "vmis-guest run (pid 404)" in daemon_line(out, "vmis guest agent")
    assert "  /usr/sbin/hv_kvp_daemon" in out.splitlines()
    assert out.rstrip().endswith("Nothing missing.")


def test_all_present_json(capsys):
    code, out = run(capsys, "all-present", "--json")
    data = json.loads(out)
    assert code == 0 and data["Ok"] is True and data["Missing"] == []
    assert data["Platform"] == "Hyper-V"
    assert data["Versions"] == {"Vmis": vmis.__version__, "HypervDriver": "3.1",
                                "Kernel": "6.8.0-1015-azure"}
    daemons = {d["Key"]: d for d in data["Daemons"]}
    assert daemons["kvp"]["State"] == "running"
    assert daemons["kvp"]["Processes"] == [{"Pid": 101, "Name": "hv_kvp_daemon"}]
    assert daemons["kvp"]["Installed"] == ["/usr/local/bin/vmis-hv-kvp-daemon",
                                           "/usr/sbin/hv_kvp_daemon"]
    assert daemons["agent"]["Processes"] == [{"Pid": 404, "Name": "vmis-guest run"}]
    assert {d["Name"]: d["Present"] for d in data["Drivers"]} == {
        "hv_vmbus": True, "hv_utils": True, "virtio_console": True, "vsock": True}


def test_hv_utils_missing(capsys):
    code, out = run(capsys, "hv-utils-missing")
    assert code == 1
    assert driver_line(out, "hv_utils").split()[1] == "absent"
    assert "Hyper-V kernel driver" not in out
    missing = out.split("Missing\n", 1)[1].splitlines()
    assert missing[0] == "  driver hv_utils: sudo modprobe hv_utils"
    assert "not running" in daemon_line(out, "Key-Value Pair Exchange")
    data = json.loads(run(capsys, "hv-utils-missing", "--json")[1])
    assert data["Ok"] is False
    assert data["Missing"][0] == {"What": "driver hv_utils", "Fix": "sudo modprobe hv_utils"}
    assert "HypervDriver" not in data["Versions"]


def test_kvp_daemon_not_running(capsys):
    code, out = run(capsys, "kvp-not-running")
    assert code == 1
    assert daemon_line(out, "Key-Value Pair Exchange").split()[-2:] == ["not", "running"]
    assert "running" in daemon_line(out, "VSS (Backup)")
    missing = out.split("Missing\n", 1)[1].splitlines()
    assert missing == ["  Key-Value Pair Exchange (Data Exchange) daemon not running: "
                       "sudo systemctl start vmis-hv-kvp (or: sudo vmis-hv-kvp-daemon)"]
    data = json.loads(run(capsys, "kvp-not-running", "--json")[1])
    assert [m["What"] for m in data["Missing"]] == [
        "Key-Value Pair Exchange (Data Exchange) daemon not running"]
    assert {d["Key"]: d["State"] for d in data["Daemons"]} == {
        "kvp": "not running", "vss": "running", "fcopy": "running", "agent": "running"}


def test_not_installed_gets_the_install_fix(tmp_path: Path):
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "kvp-not-running", root)
    (root / "usr/sbin/hv_kvp_daemon").unlink()
    (root / "usr/local/bin/vmis-hv-kvp-daemon").unlink()
    report = diagnose(root, PATH)
    (kvp,) = [m for m in report.missing if "Key-Value" in m.what]
    assert kvp.fix.startswith("pip install vmis")


def test_two_kvp_daemons_warn(tmp_path: Path):
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "all-present", root)
    (root / "proc/606").mkdir()
    (root / "proc/606/comm").write_text("python3\n")
    (root / "proc/606/cmdline").write_bytes(b"python3\0-m\0vmis.hyperv\0kvp\0")
    report = diagnose(root, PATH)
    assert report.ok
    (warning,) = report.warnings
    assert "hv_kvp_daemon pid 101" in warning and "vmis.hyperv kvp pid 606" in warning


def test_virtio_guest_hyperv_daemons_not_applicable(tmp_path: Path):
    root = tmp_path
    (root / "proc/77").mkdir(parents=True)
    (root / "proc/modules").write_text("virtio_console 40960 0 - Live 0x0\n")
    (root / "proc/77/comm").write_text("vmis-guest\n")
    (root / "proc/77/cmdline").write_bytes(b"/usr/bin/python3\0-m\0vmis.cli.guest\0run\0")
    report = diagnose(root, "/bin")
    assert report.platform == "virtio (KVM/QEMU)"
    states = {d.key: d.state for d in report.daemons}
    assert states == {"kvp": "not applicable", "vss": "not applicable",
                      "fcopy": "not applicable", "agent": "running"}
    assert report.ok


def test_bare_tree_needs_a_channel(tmp_path: Path, capsys):
    (tmp_path / "proc").mkdir()
    assert main(["--root", str(tmp_path), "--path", "/bin"]) == 1
    assert "a host-guest channel driver: sudo modprobe virtio_console" in capsys.readouterr().out


def test_bad_root_is_one_line(tmp_path: Path, capsys):
    assert main(["--root", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "is not a directory" in err


def test_runs_on_this_machine():
    done = subprocess.run([sys.executable, "-m", "vmis.guest.diagnose", "--json"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode in (0, 1), done.stderr
    data = json.loads(done.stdout)
    assert data["Versions"]["Vmis"] == vmis.__version__
    assert len(data["Drivers"]) == 4


def test_powershell_spellings_and_the_root_of_vmis_guest(capsys):
    code = main(["-Path", PATH, "-json"], root=FIXTURES / "all-present")
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["Platform"] == "Hyper-V"
    assert main(["-?"]) == 0
    assert capsys.readouterr().out.startswith("diagnose [-Root <str>]")
    assert main(["--frobnicate"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
