"""File copy over the raw VMBus channel (uio_hv_generic), against the host emulator."""

from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.hv_emulator.uio_host import UioHostEmulator
from vmis.hyperv.constants import FcopyFlag, HResult, IcMsgType
from vmis.hyperv.daemon import StopSignal
from vmis.hyperv.fcopy import FcopyHandler
from vmis.hyperv.messages import NEGOTIATE_HDR
from vmis.hyperv.uio import (
    FCOPY_INSTANCE_GUID,
    UioChannel,
    UioFcopyDaemon,
    find_uio_device,
)

WAIT = 20.0
OK, FAIL = HResult.HV_S_OK, HResult.HV_E_FAIL


class Running:
    def __init__(self, host: UioHostEmulator, logger: logging.Logger) -> None:
        self.stop = StopSignal()
        channel = UioChannel(str(host.device_path), host.ring_size, str(host.ring_path))
        self.daemon = UioFcopyDaemon(channel, FcopyHandler(logger), self.stop, logger)
        self.status: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert host.wait_attached(WAIT)

    def _run(self) -> None:
        self.status = self.daemon.run()

    def shutdown(self) -> int | None:
        self.stop.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        self.stop.close()
        return self.status


@pytest.fixture
def host(tmp_path: Path, logger: logging.Logger) -> Iterator[UioHostEmulator]:
    emu = UioHostEmulator(tmp_path, timeout=WAIT).start()
    running = Running(emu, logger)
    yield emu
    assert running.shutdown() == 0
    emu.close()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "dest"
    d.mkdir()
    return d


def test_negotiation_in_user_space(host: UioHostEmulator):
    assert host.negotiate([(3, 0)], [(1, 1)]) == ((3, 0), (1, 1))
    payload = NEGOTIATE_HDR.pack(1, 1, 0) + struct.pack("<HHHH", 3, 0, 1, 0)
    r = host.host_request(host.packet(payload, msgtype=IcMsgType.NEGOTIATE))
    assert r.status == FAIL and struct.unpack_from("<HH", r.payload) == (0, 0)
    assert r.header.msgsize == 0x10 and r.header.flags == 5


def test_copy_through_the_rings_with_wraparound(host: UioHostEmulator, dest: Path):
    # 6 KiB fragments through 12 KiB of ring data: the rings wrap every other packet
    data = os.urandom(6144 * 20 + 123)
    assert host.copy_file(data, "grüße-😀.bin", str(dest / "x/y"),
                          FcopyFlag.CREATE_PATH) == OK
    assert (dest / "x/y/grüße-😀.bin").read_bytes() == data


def test_existing_file_and_cancel(host: UioHostEmulator, dest: Path):
    (dest / "f").write_bytes(b"old")
    assert host.fcopy_start("f", str(dest), 0) == HResult.HV_ERROR_ALREADY_EXISTS
    assert host.fcopy_start("g", str(dest), 0) == OK
    assert host.fcopy_write(0, b"partial") == OK
    assert host.fcopy_cancel() == OK  # the C uio daemon answers E_FAIL and keeps the file
    assert sorted(p.name for p in dest.iterdir()) == ["f"]


def test_unknown_message_type_fails(host: UioHostEmulator):
    r = host.host_request(host.packet(b"\0" * 8, msgtype=IcMsgType.HEARTBEAT))
    assert r.status == FAIL and r.header.flags == 5


def test_find_uio_device(tmp_path: Path):
    sysfs = tmp_path / "sys"
    dev = sysfs / "bus/vmbus/devices" / FCOPY_INSTANCE_GUID
    assert find_uio_device(sysfs) is None
    (dev / "uio/uio3").mkdir(parents=True)
    assert find_uio_device(sysfs, Path("/dev")) == ("/dev/uio3", 0x4000)
    (dev / "channels/14").mkdir(parents=True)
    (dev / "channels/14/ring").write_bytes(b"\0" * (2 * 0x8000))
    assert find_uio_device(sysfs, Path("/dev")) == ("/dev/uio3", 0x8000)


def test_uio_daemon_process_sigterm(tmp_path: Path):
    with UioHostEmulator(tmp_path, timeout=WAIT) as emu:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmis.hyperv", "fcopy", "--uio", "--uio-device",
             str(emu.device_path), "--ring-file", str(emu.ring_path), "--no-pid-file"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert emu.wait_attached(WAIT)
            assert emu.copy_file(b"via uio", "f", str(tmp_path / "out"),
                                 FcopyFlag.CREATE_PATH) == OK
        except BaseException:
            proc.kill()
            raise
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(WAIT)
        elapsed = time.monotonic() - start
        _, err = proc.communicate()
        assert code == 0, err
        assert elapsed < 1.0
        assert (tmp_path / "out/f").read_bytes() == b"via uio"


def test_no_uio_channel_is_one_line(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "vmis.hyperv", "fcopy", "--uio", "--sys-root", str(tmp_path),
         "--no-pid-file"], capture_output=True, text=True, timeout=WAIT, check=False)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "uio_hv_generic" in done.stderr
