"""The VSS daemon through the kernel emulator, with the fake freezer on fixture mounts."""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from pathlib import Path

import pytest
from support.hv_emulator.kernel import HvUtilState, KernelEmulator
from support.logs import KeptRecords

from vmis.hyperv.constants import HResult, VssOp
from vmis.hyperv.daemon import HoldableHandler
from vmis.hyperv.vss import VssHandler
from vmis.services.vss.freeze import FakeFreezer, FilesystemFreeze

WAIT = 20.0
OK, FAIL = HResult.HV_S_OK, HResult.HV_E_FAIL

MOUNTS = """\
proc /proc proc rw 0 0
/dev/sda2 / ext4 rw,relatime 0 0
/dev/sda1 /boot/efi vfat rw 0 0
/dev/sdb1 /var xfs rw 0 0
/dev/sdc1 /srv ext4 rw 0 0
/dev/sdd1 /mnt/ro ext4 ro 0 0
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/mounts").write_text(MOUNTS)
    return tmp_path


class Setup:
    def __init__(self, root: Path, fake: FakeFreezer, thaw_timeout: float = 60.0) -> None:
        self.fake = fake
        self.sink = KeptRecords()
        self.holder = HoldableHandler(self.sink)
        self.log = logging.getLogger(f"vmis.hyperv.test.vss.{id(self)}")
        self.log.handlers[:] = [self.holder]
        self.log.setLevel(logging.DEBUG)
        self.log.propagate = False
        fs = FilesystemFreeze(fake, root, device_number=lambda s: None)
        self.handler = VssHandler(fs, self.holder, self.log, thaw_timeout=thaw_timeout)


def start(emulator, daemon, setup: Setup, **kw: float) -> KernelEmulator:
    emu = emulator("vss", timeout=WAIT, freeze_timeout=WAIT, **kw)
    daemon(setup.handler, emu, log=setup.log)  # the runner logs through the held handler too
    deadline = time.monotonic() + WAIT
    while setup.handler.kernel_version is None and time.monotonic() < deadline:
        time.sleep(0.01)  # READY in the kernel comes just before the daemon reads the reply
    return emu


def test_registration(emulator, daemon, root):
    s = Setup(root, FakeFreezer())
    emu = start(emulator, daemon, s)
    assert emu.daemon_registration == VssOp.REGISTER1
    assert s.handler.kernel_version == VssOp.REGISTER1
    assert emu.rejected == []


def test_freeze_root_last_then_thaw(emulator, daemon, root):
    s = Setup(root, FakeFreezer())
    emu = start(emulator, daemon, s)
    assert emu.vss_freeze() == OK
    assert s.fake.calls == [("freeze", "/var"), ("freeze", "/srv"), ("freeze", "/")]
    assert s.fake.frozen == {"/var", "/srv", "/"}
    assert emu.vss_thaw() == OK
    assert s.fake.frozen == set()
    assert [c for c, _ in s.fake.calls[3:]] == ["thaw"] * 3


def test_nothing_is_logged_while_frozen(emulator, daemon, root):
    s = Setup(root, FakeFreezer())
    emu = start(emulator, daemon, s)
    assert emu.vss_freeze() == OK
    before = len(s.sink.records)
    assert not any("froze" in m for m in s.sink.messages()), s.sink.messages()
    assert emu.vss_hot_backup()[0] == OK  # logs something, held
    assert len(s.sink.records) == before
    assert s.holder.holding
    assert emu.vss_thaw() == OK
    msgs = s.sink.messages()[before:]
    assert any("froze /var, /srv, /" in m for m in msgs)
    assert any("hot backup" in m for m in msgs)
    assert any("thawed" in m for m in msgs)
    assert not s.holder.holding


def test_freeze_failure_thaws_all_and_answers_e_fail(emulator, daemon, root):
    s = Setup(root, FakeFreezer(fail_freeze={"/srv": errno.EIO}))
    emu = start(emulator, daemon, s)
    assert emu.vss_freeze() == FAIL
    assert s.fake.frozen == set()
    assert ("freeze", "/") not in s.fake.calls
    assert not s.holder.holding
    assert any("freezing /srv failed" in m for m in s.sink.messages())


def test_thaw_failure_answers_e_fail(emulator, daemon, root):
    s = Setup(root, FakeFreezer(fail_thaw={"/var": errno.EIO}))
    emu = start(emulator, daemon, s)
    assert emu.vss_freeze() == OK
    assert emu.vss_thaw() == FAIL
    assert s.fake.frozen == {"/var"}
    assert not s.holder.holding


def test_watchdog_thaws_without_the_hosts_thaw(emulator, daemon, root):
    s = Setup(root, FakeFreezer(), thaw_timeout=0.3)
    emu = start(emulator, daemon, s)
    assert emu.vss_freeze() == OK
    deadline = time.monotonic() + WAIT
    while s.fake.frozen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.fake.frozen == set()
    assert any("watchdog" in m for m in s.sink.messages())
    assert emu.vss_thaw() == OK  # a late THAW is harmless


def test_hot_backup_and_in_kernel_ops(emulator, daemon, root):
    s = Setup(root, FakeFreezer())
    emu = start(emulator, daemon, s)
    status, flags = emu.vss_hot_backup()
    assert status == OK
    # the driver checks the reply's (overwritten) operation byte: no flag set
    assert flags == 0
    assert emu.vss_get_dm_info() == (OK, 0)
    r = emu.host_request(emu.packet(struct.pack("<B7sI", VssOp.BU_COMPLETE, b"", 0)))
    assert r.status == OK
    assert s.fake.calls == []


def test_requests_before_registration(emulator):
    emu = emulator("vss", timeout=WAIT)
    assert emu.vss_freeze() == FAIL
    assert emu.vss_get_dm_info() == (OK, 0)  # answered in the kernel


def test_unknown_op_from_kernel_is_acknowledged(emulator, daemon, root):
    s = Setup(root, FakeFreezer())
    emu = start(emulator, daemon, s)
    reply = emu.send_to_daemon(struct.pack("<B7sI", 42, b"", 7))
    assert reply is not None and struct.unpack("<III", reply) == (OK, 0, 7)


def test_daemon_stop_while_frozen_thaws(emulator, daemon, root, logger):
    s = Setup(root, FakeFreezer())
    emu = start(emulator, daemon, s)
    assert emu.vss_freeze() == OK
    emu.disconnect()  # channel reset (e.g. hibernation): the daemon thaws and reopens
    assert emu.wait_registered(WAIT)
    assert s.fake.frozen == set()
    assert emu.state == HvUtilState.READY


def test_kernel_rejects_bad_writes(emulator):
    emu = emulator("vss", timeout=WAIT)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(WAIT)
    sock.connect(str(emu.path))
    try:
        sock.send(b"\0" * 11)  # not 12 bytes
        sock.send(struct.pack("<B7sI", VssOp.REGISTER1, b"", 0))
        assert sock.recv(100) == struct.pack("<I", 129)
        assert emu.wait_registered(WAIT)
        sock.send(struct.pack("<B7sI", 0, b"", 0))  # reply without request
    finally:
        sock.close()
    assert emu.wait_unregistered(WAIT)
    assert [e for _, e in emu.rejected] == [errno.EINVAL, errno.EINVAL]
