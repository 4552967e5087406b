"""The daemons as real processes: SIGTERM within 1 s, restart with a new pid,
pid files, one-line errors.  Each daemon talks to the kernel emulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.hv_emulator.kernel import KernelEmulator
from vmis.hyperv.constants import HResult
from vmis.services.kvp.pool import KvpPool, Pool

WAIT = 30.0
#: What the acceptance asks: stopped within 1 s of SIGTERM.  Measured from the
#: signal to the exit status being available, on a possibly loaded machine.
STOP_WITHIN = 1.0


def launch(service: str, emu: KernelEmulator, tmp: Path, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "vmis.hyperv", service, "--device", str(emu.path),
            "--pid-file", str(tmp / f"{service}.pid"), *extra]
    if service == "kvp":
        argv += ["--pool-dir", str(tmp / "pools"), "--root", str(tmp / "root"),
                 "--no-ip-injection"]
    if service == "vss":
        argv += ["--root", str(tmp / "root"), "--freezer", "fake"]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/mounts").write_text("/dev/sda1 / ext4 rw 0 0\n/dev/sdb1 /data xfs rw 0 0\n")
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text('NAME="Test OS"\nVERSION_ID="1"\n')
    return tmp_path


def stop(proc: subprocess.Popen[str]) -> tuple[float, int, str]:
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    elapsed = time.monotonic() - start
    _, err = proc.communicate(timeout=WAIT)
    return elapsed, code, err


def exercise(service: str, emu: KernelEmulator, tree: Path) -> None:
    if service == "kvp":
        assert emu.kvp_set(Pool.GUEST, "pid", str(os.getpid())) == HResult.HV_S_OK
        assert KvpPool(tree / "pools", Pool.GUEST).get("pid") == str(os.getpid())
        _, items = emu.kvp_enumerate_all(Pool.AUTO)
        assert dict(items)["OSName"] == "Test OS"
    elif service == "vss":
        assert emu.vss_freeze() == HResult.HV_S_OK
        assert emu.vss_thaw() == HResult.HV_S_OK
    else:
        out = tree / "copied"
        assert emu.copy_file(b"payload", "f.txt", str(out), 3) == HResult.HV_S_OK
        assert (out / "f.txt").read_bytes() == b"payload"


@pytest.mark.parametrize("service", ["kvp", "vss", "fcopy"])
def test_sigterm_stops_within_one_second_and_restart_gets_a_new_pid(service, emulator, tree):
    emu = emulator(service, timeout=WAIT, freeze_timeout=WAIT)
    pid_file = tree / f"{service}.pid"
    pids = []
    for round_ in (1, 2):
        proc = launch(service, emu, tree)
        try:
            assert emu.wait_registered(WAIT), f"round {round_}: daemon did not register"
            assert emu.connections == round_
            deadline = time.monotonic() + WAIT
            while not pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert pid_file.read_text().strip() == str(proc.pid)
            exercise(service, emu, tree)
        except BaseException:
            proc.kill()
            raise
        elapsed, code, err = stop(proc)
        assert code == 0, err
        assert elapsed < STOP_WITHIN, f"stopped after {elapsed:.2f} s"
        print(f"{service} round {round_}: stopped {elapsed:.3f} s after SIGTERM")
        assert not pid_file.exists()
        assert "stopped" in err
        assert emu.wait_unregistered(WAIT)
        pids.append(proc.pid)
    assert pids[0] != pids[1]


def test_vss_sigterm_while_frozen_thaws_first(emulator, tree):
    emu = emulator("vss", timeout=WAIT, freeze_timeout=WAIT)
    proc = launch("vss", emu, tree)
    try:
        assert emu.wait_registered(WAIT)
        assert emu.vss_freeze() == HResult.HV_S_OK
    except BaseException:
        proc.kill()
        raise
    elapsed, code, err = stop(proc)
    assert code == 0 and elapsed < STOP_WITHIN
    # the held log comes out after the thaw, in order
    froze = err.index("froze /data, /")
    thawed = err.index("fake freezer: thawed /")
    assert froze < thawed
    assert "channel to the kernel closed" in err


def test_missing_device_is_one_line_and_exit_1(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "vmis.hyperv", "fcopy", "--device", str(tmp_path / "nope"),
         "--no-pid-file"], capture_output=True, text=True, timeout=WAIT, check=False)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(lines) == 1 and "cannot open" in lines[0] and "hv_utils" in lines[0]
    assert "Traceback" not in done.stderr


def test_live_pid_file_is_refused(tmp_path: Path, emulator):
    emu = emulator("fcopy", timeout=WAIT)
    pid_file = tmp_path / "fcopy.pid"
    pid_file.write_text(f"{os.getpid()}\n")  # this test process is alive
    done = subprocess.run(
        [sys.executable, "-m", "vmis.hyperv", "fcopy", "--device", str(emu.path),
         "--pid-file", str(pid_file)], capture_output=True, text=True, timeout=WAIT, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].endswith(f"already running as pid {os.getpid()} "
                                                         f"(pid file {pid_file})")
    assert "Traceback" not in done.stderr


def test_usage_error_exits_2(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "vmis.hyperv", "bogus"], capture_output=True,
                          text=True, timeout=WAIT, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
