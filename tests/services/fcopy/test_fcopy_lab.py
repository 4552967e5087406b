"""Copy-VMFile end to end: the real ``vmis`` command line, host manager and agent processes.

Issue 3's acceptance: a 200 MiB file both ways with matching SHA-256; a
guest agent killed mid-copy leaves no destination file, and the rerun
resumes.
"""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support.lab import run_vmis, start_lab

from vmis.lab.lab import Lab
from vmis.lab.processes import pid_alive
from vmis.services.fcopy.receiver import PART_SUFFIX

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
SIZE = 200 * MIB


def make_file(path, size):
    h = hashlib.sha256()
    block = os.urandom(MIB)
    with path.open("wb") as f:
        for i in range(size // MIB):
            chunk = block[i % 7 :] + block[: i % 7]  # every MiB different
            f.write(chunk)
            h.update(chunk)
    return h.hexdigest()


def sha_file(path):
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


def env_of(lab_dir):
    return dict(os.environ, VMIS_LAB_DIR=str(lab_dir), VMIS_SOCKET=str(lab_dir / "host.sock"))


def vmis(lab_dir, *args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "vmis.cli.host", *args], capture_output=True,
                          text=True, env=env_of(lab_dir), cwd=cwd, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def module_dir():
    directory = Path(tempfile.mkdtemp(prefix="vmis-", dir="/tmp"))
    yield directory
    Lab(directory / "lab").down(None)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def lab_dir(module_dir):
    """One lab for this module (starting one costs seconds); the tests leave it running."""
    directory = module_dir / "lab"
    start_lab(directory)
    return directory


@pytest.fixture
def gsi_lab(lab_dir):
    result = run_vmis(lab_dir, "Enable-VMIntegrationService", "-VMName", "DemoVM", "-Name",
                      "Guest Service Interface")
    assert result.code == 0, result.err
    return Lab(lab_dir)


def test_200_mib_both_ways_match_sha256(gsi_lab, lab_dir, short_tmp):
    src = short_tmp / "big.bin"
    digest = make_file(src, SIZE)
    root = gsi_lab.vm("DemoVM").root
    # A relative host path is taken from the command's current directory.
    to = vmis(lab_dir, "Copy-VMFile", "-Name", "DemoVM", "-SourcePath", "big.bin",
              "-DestinationPath", "/srv/data/", "-FileSource", "Host", "-CreateFullPath",
              "--json", cwd=short_tmp)
    assert to.returncode == 0, to.stderr
    result = json.loads(to.stdout)
    assert result["Sha256"] == digest == sha_file(root / "srv/data/big.bin")
    assert (result["Bytes"], result["Files"], result["Destination"]) == \
        (SIZE, 1, "/srv/data/big.bin")
    assert result["Seconds"] > 0 and result["BytesPerSecond"] > 0
    back = run_vmis(lab_dir, "Copy-VMFile", "DemoVM", "/srv/data/big.bin",
                    str(short_tmp / "back.bin"), "-FileSource", "Guest", "--json")
    assert back.code == 0, back.err
    assert json.loads(back.out)["Sha256"] == digest == sha_file(short_tmp / "back.bin")
    assert back.err == ""


def test_cli_errors_are_one_line(gsi_lab, lab_dir, short_tmp):
    (short_tmp / "f.txt").write_text("x")
    cases = [
        (("Copy-VMFile", "DemoVM", str(short_tmp / "f.txt"), "/etc/f.txt", "-FileSource",
          "Host"), "outside the guest's allowed roots"),
        (("Copy-VMFile", "DemoVM", str(short_tmp / "f.txt"), "/tmp/../etc/f", "-FileSource",
          "Host"), "'..' is not allowed"),
        (("Copy-VMFile", "DemoVM", str(short_tmp / "nope"), "/tmp/", "-FileSource", "Host"),
         "does not exist on the host"),
        (("Copy-VMFile", "DemoVM", str(short_tmp / "f.txt"), "tmp/x", "-FileSource", "Host"),
         "must be absolute"),
        (("Copy-VMFile", "DemoVM", str(short_tmp), "/tmp/", "-FileSource", "Host"),
         "-Recurse"),
    ]
    for args, text in cases:
        result = run_vmis(lab_dir, *args)
        assert result.code != 0
        assert text in result.err and result.err.count("\n") == 1, result.err
        assert "Traceback" not in result.err
    ok = run_vmis(lab_dir, "Copy-VMFile", "DemoVM", str(short_tmp / "f.txt"), "/tmp/",
                  "-FileSource", "Host")
    assert (ok.code, ok.out, ok.err) == (0, "", "")
    again = run_vmis(lab_dir, "Copy-VMFile", "DemoVM", str(short_tmp / "f.txt"), "/tmp/",
                     "-FileSource", "Host")
    assert again.code == 1 and "-Force" in again.err
    disabled = run_vmis(lab_dir, "Disable-VMIntegrationService", "-VMName", "DemoVM", "-Name",
                        "Guest Service Interface")
    assert disabled.code == 0
    off = run_vmis(lab_dir, "Copy-VMFile", "DemoVM", str(short_tmp / "f.txt"), "/tmp/",
                   "-FileSource", "Host", "-Force")
    assert off.code == 1 and "Enable-VMIntegrationService" in off.err


def _recorded(directory: Path) -> int:
    """The bytes a resume record in *directory* vouches for (0 without one)."""
    for record in directory.glob("*.vmis-resume"):
        with contextlib.suppress(OSError, ValueError):
            return int(json.loads(record.read_bytes()).get("verified", 0))
    return 0


def test_killed_agent_leaves_no_destination_and_the_rerun_resumes(gsi_lab, lab_dir, short_tmp):
    src = short_tmp / "big.bin"
    digest = make_file(src, SIZE)
    vm = gsi_lab.vm("DemoVM")
    dest = vm.root / "tmp/big.bin"
    copying = subprocess.Popen(
        [sys.executable, "-m", "vmis.cli.host", "Copy-VMFile", "DemoVM", str(src), "/tmp/",
         "-FileSource", "Host"], env=env_of(lab_dir), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        part = None
        while time.monotonic() < deadline:
            parts = [p for p in (vm.root / "tmp").iterdir() if p.name.endswith(PART_SUFFIX)]
            # and its resume record, written behind the data, vouches for 40 MiB
            if parts and parts[0].stat().st_size >= 64 * MIB \
                    and _recorded(vm.root / "tmp") >= 40 * MIB:
                part = parts[0]
                break
            assert copying.poll() is None, copying.communicate()
            time.sleep(0.002)
        assert part is not None, "the copy never got going"
        pid = vm.pid
        os.kill(pid, signal.SIGKILL)
        _, err = copying.communicate(timeout=120)
    finally:
        if copying.poll() is None:
            copying.kill()
    while pid_alive(pid):
        time.sleep(0.05)
    assert copying.returncode != 0
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not dest.exists()
    assert part.exists() and part.stat().st_size < SIZE

    Lab(lab_dir).start_vm("DemoVM")
    Lab(lab_dir).wait_ready(["DemoVM"])
    rerun = None
    for _ in range(100):  # the host re-enables the service once the session is up
        rerun = run_vmis(lab_dir, "Copy-VMFile", "DemoVM", str(src), "/tmp/", "-FileSource",
                         "Host", "--json")
        if rerun.code == 0 or "not running" not in rerun.err:
            break
        time.sleep(0.1)
    assert rerun.code == 0, rerun.err
    result = json.loads(rerun.out)
    # The record lags the file by what was written but not yet hashed and
    # checkpointed (at most the window, 16 MiB, plus one checkpoint, 8 MiB).
    assert result["BytesResumed"] >= 64 * MIB - 24 * MIB
    assert result["BytesSent"] == SIZE - result["BytesResumed"] < SIZE
    assert result["Sha256"] == digest == sha_file(dest)
    assert not any(p.name.endswith(PART_SUFFIX) for p in (vm.root / "tmp").iterdir())


def _start_copy(lab_dir, *args):
    return subprocess.Popen([sys.executable, "-m", "vmis.cli.host", "Copy-VMFile", *args],
                            env=env_of(lab_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_part(directory, at_least, copying):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        parts = [p for p in directory.iterdir() if p.name.endswith(PART_SUFFIX)]
        if parts and parts[0].stat().st_size >= at_least:
            return parts[0]
        assert copying.poll() is None, copying.communicate()
        time.sleep(0.002)
    raise AssertionError("the copy never got going")


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_a_copy_whose_client_goes_away_resumes_at_once(gsi_lab, lab_dir, short_tmp, how):
    # Issue 16: Ctrl-C (or a killed client) and the same command again: it
    # resumes at once, where it stopped, and the guest holds nothing after.
    src = short_tmp / "resume.bin"
    digest = make_file(src, SIZE)
    tmp = gsi_lab.vm("DemoVM").root / "tmp"
    agent = gsi_lab.vm("DemoVM").pid
    assert agent is not None
    copying = _start_copy(lab_dir, "DemoVM", str(src), "/tmp/", "-FileSource", "Host")
    stopped = False
    try:
        _wait_for_part(tmp, 64 * MIB, copying)
        # The agent held still while the client goes away: on a loaded machine the
        # rest of the copy could otherwise end before the client's signal is handled.
        os.kill(agent, signal.SIGSTOP)
        stopped = True
        assert any(PART_SUFFIX in p.name for p in tmp.iterdir()), "the copy ended first"
        copying.send_signal(how)
        _, err = copying.communicate(timeout=60)
    finally:
        if stopped:
            os.kill(agent, signal.SIGCONT)
        if copying.poll() is None:
            copying.kill()
    if how == signal.SIGINT:
        assert copying.returncode == 130 and "the same command resumes" in err, err
    rerun = run_vmis(lab_dir, "Copy-VMFile", "DemoVM", str(src), "/tmp/", "-FileSource", "Host",
                     "--json")
    assert rerun.code == 0, rerun.err
    result = json.loads(rerun.out)
    assert result["BytesResumed"] >= 32 * MIB
    assert result["Sha256"] == digest == sha_file(tmp / "resume.bin")
    status = run_vmis(lab_dir, "lab", "guest", "DemoVM", "fcopy", "status", "--json")
    assert json.loads(status.out)["Copies"] == []
    assert not [p for p in tmp.iterdir() if PART_SUFFIX in p.name]
    (tmp / "resume.bin").unlink()


def test_what_a_tree_copy_skips_is_named_and_the_exit_status_says_so(gsi_lab, lab_dir,
                                                                    short_tmp):
    tree = short_tmp / "site"
    tree.mkdir()
    (tree / "index.html").write_text("x")
    os.symlink("index.html", tree / "link")
    os.mkfifo(tree / "fifo")
    result = run_vmis(lab_dir, "Copy-VMFile", "DemoVM", str(tree), "/tmp/site", "-FileSource",
                      "Host", "-Recurse")
    assert result.code == 3, result.err
    assert result.err.splitlines() == [
        f"Copy-VMFile: skipped {tree}/fifo: a FIFO",
        f"Copy-VMFile: skipped {tree}/link: a symbolic link",
        "Copy-VMFile: 2 entries not copied; -CopySymlinks copies symbolic links as links, "
        "-FollowSymlinks what they point to"]
    again = run_vmis(lab_dir, "Copy-VMFile", "DemoVM", str(tree), "/tmp/site2", "-FileSource",
                     "Host", "-Recurse", "-CopySymlinks", "--json")
    assert again.code == 3 and json.loads(again.out)["Skipped"] == [
        {"Path": f"{tree}/fifo", "Reason": "a FIFO"}]
    root = gsi_lab.vm("DemoVM").root
    assert os.readlink(root / "tmp/site2/link") == "index.html"


def test_two_copies_to_one_target_the_loser_says_busy_and_exits_75(gsi_lab, lab_dir,
                                                                  short_tmp):
    a, b = short_tmp / "a.bin", short_tmp / "b.bin"
    make_file(a, SIZE)
    b.write_bytes(b"other")
    tmp = gsi_lab.vm("DemoVM").root / "tmp"
    first = _start_copy(lab_dir, "DemoVM", str(a), "/tmp/target", "-FileSource", "Host")
    try:
        _wait_for_part(tmp, 16 * MIB, first)
        second = run_vmis(lab_dir, "Copy-VMFile", "DemoVM", str(b), "/tmp/target",
                          "-FileSource", "Host", "-Force")
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert (second.code, second.err.count("\n")) == (75, 1), second.err
    assert "/tmp/target is being written by another copy" in second.err
    assert first.returncode == 0, err
    assert sha_file(tmp / "target") == sha_file(a)
    (tmp / "target").unlink()


def test_get_and_stop_vmfilecopy(gsi_lab, lab_dir, short_tmp):
    src = short_tmp / "listed.bin"
    make_file(src, 1024 * MIB)  # big enough to be listed and stopped while it runs
    tmp = gsi_lab.vm("DemoVM").root / "tmp"
    copying = _start_copy(lab_dir, "DemoVM", str(src), "/tmp/", "-FileSource", "Host")
    try:
        _wait_for_part(tmp, 32 * MIB, copying)
        listed = run_vmis(lab_dir, "Get-VMFileCopy", "-VMName", "DemoVM")
        lines = listed.out.splitlines()
        assert lines[0].split() == ["VMName", "Id", "State", "FileSource", "Done", "Path"]
        vm, copy_id, state, source = lines[2].split()[:4]
        assert (vm, state, source) == ("DemoVM", "Running", "Host"), listed.out
        stopped = run_vmis(lab_dir, "Stop-VMFileCopy", "DemoVM", "-Id", copy_id)
        assert stopped.code == 0, stopped.err
        _, err = copying.communicate(timeout=60)
    finally:
        if copying.poll() is None:
            copying.kill()
    assert copying.returncode == 1 and "stopped (Stop-VMFileCopy)" in err, err
    assert err.count("\n") == 1
    rows = json.loads(run_vmis(lab_dir, "Get-VMFileCopy", "DemoVM", "--json").out)
    assert [(r["State"], r["Path"], r["Resumable"]) for r in rows] == [
        ("Partial", "/tmp/listed.bin", True)]
    gone = run_vmis(lab_dir, "Stop-VMFileCopy", "DemoVM", "-Path", "/tmp/listed.bin", "-Discard")
    assert gone.code == 0 and gone.err == f"removed {rows[0]['Part']}\n"
    assert json.loads(run_vmis(lab_dir, "Get-VMFileCopy", "--json").out) == []
    assert not [p for p in tmp.iterdir() if "listed.bin" in p.name]
