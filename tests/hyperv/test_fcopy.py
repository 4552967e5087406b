"""The file-copy daemon through the kernel emulator (Copy-VMFile)."""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from pathlib import Path

import pytest

from support.hv_emulator.kernel import KernelEmulator
from vmis.hyperv.constants import FcopyFlag, FcopyOp, HResult
from vmis.hyperv.fcopy import FcopyHandler
from vmis.hyperv.messages import FCOPY_START

WAIT = 20.0
OK, FAIL = HResult.HV_S_OK, HResult.HV_E_FAIL
EXISTS, FULL = HResult.HV_ERROR_ALREADY_EXISTS, HResult.HV_ERROR_DISK_FULL
CREATE, OVERWRITE = FcopyFlag.CREATE_PATH, FcopyFlag.OVER_WRITE


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "dest"  # the emulator's socket lives in tmp_path itself
    d.mkdir()
    return d


@pytest.fixture
def fcopy(emulator, daemon, logger) -> KernelEmulator:
    emu = emulator("fcopy", timeout=WAIT)
    daemon(FcopyHandler(logger), emu)
    return emu


def listing(top: Path) -> list[str]:
    return sorted(str(p.relative_to(top)) for p in top.rglob("*"))


def test_registration(fcopy: KernelEmulator):
    assert fcopy.daemon_registration == 1
    assert fcopy.rejected == []


def test_copy_with_create_path_creates_every_missing_directory(fcopy: KernelEmulator,
                                                               dest: Path):
    data = os.urandom(6144 * 3 + 1000)
    dest = dest / "a/b/c"  # no trailing "/": the C daemon would not create "c"
    assert fcopy.copy_file(data, "report.bin", str(dest), CREATE) == OK
    target = dest / "report.bin"
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o744
    assert listing(dest.parents[2]) == ["a", "a/b", "a/b/c", "a/b/c/report.bin"]
    assert dest.parents[1].stat().st_mode & 0o777 == 0o755


def test_non_ascii_names(fcopy: KernelEmulator, dest: Path):
    assert fcopy.copy_file(b"hallo", "größe-😀.txt", str(dest / "verzeichnis-é"),
                           CREATE) == OK
    assert (dest / "verzeichnis-é/größe-😀.txt").read_bytes() == b"hallo"


def test_missing_path_without_create_path_fails(fcopy: KernelEmulator, dest: Path):
    assert fcopy.fcopy_start("f", str(dest / "missing"), 0) == FAIL
    assert not (dest / "missing").exists()


def test_existing_file_without_overwrite(fcopy: KernelEmulator, dest: Path):
    (dest / "f").write_bytes(b"old")
    assert fcopy.fcopy_start("f", str(dest), CREATE) == EXISTS
    assert (dest / "f").read_bytes() == b"old"
    assert fcopy.copy_file(b"new", "f", str(dest), OVERWRITE) == OK
    assert (dest / "f").read_bytes() == b"new"


def test_cancel_leaves_nothing(fcopy: KernelEmulator, dest: Path):
    assert fcopy.fcopy_start("partial", str(dest / "d"), CREATE, 20000) == OK
    assert fcopy.fcopy_write(0, b"x" * 6144) == OK
    assert fcopy.fcopy_cancel() == OK
    assert listing(dest / "d") == []


def test_cancel_of_an_overwrite_keeps_the_original(fcopy: KernelEmulator, dest: Path):
    (dest / "f").write_bytes(b"original")
    assert fcopy.fcopy_start("f", str(dest), OVERWRITE) == OK
    assert fcopy.fcopy_write(0, b"replacement") == OK
    assert fcopy.fcopy_cancel() == OK
    assert listing(dest) == ["f"] and (dest / "f").read_bytes() == b"original"


def test_writes_at_explicit_offsets(fcopy: KernelEmulator, dest: Path):
    assert fcopy.fcopy_start("sparse", str(dest), 0) == OK
    assert fcopy.fcopy_write(6144, b"B" * 10) == OK
    assert fcopy.fcopy_write(0, b"A" * 6144) == OK
    assert fcopy.fcopy_complete() == OK
    assert (dest / "sparse").read_bytes() == b"A" * 6144 + b"B" * 10


def test_write_without_start_and_stray_complete(fcopy: KernelEmulator):
    assert fcopy.fcopy_write(0, b"x") == FAIL
    assert fcopy.fcopy_complete() == OK


def test_file_appearing_before_complete_is_not_overwritten(fcopy: KernelEmulator,
                                                           dest: Path):
    assert fcopy.fcopy_start("race", str(dest), 0) == OK
    assert fcopy.fcopy_write(0, b"ours") == OK
    (dest / "race").write_bytes(b"theirs")
    assert fcopy.fcopy_complete() == EXISTS
    assert listing(dest) == ["race"] and (dest / "race").read_bytes() == b"theirs"


def test_new_start_abandons_the_previous_copy(fcopy: KernelEmulator, dest: Path):
    assert fcopy.fcopy_start("one", str(dest), 0) == OK
    assert fcopy.fcopy_write(0, b"1") == OK
    assert fcopy.copy_file(b"2", "two", str(dest), 0) == OK
    assert listing(dest) == ["two"]


def test_disk_full_maps_to_hv_error_disk_full(fcopy: KernelEmulator, dest: Path,
                                              monkeypatch: pytest.MonkeyPatch):
    assert fcopy.fcopy_start("big", str(dest), 0) == OK
    real = os.pwrite

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    assert fcopy.fcopy_write(0, b"x" * 100) == FULL

    def io_error(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "pwrite", io_error)
    assert fcopy.fcopy_write(0, b"x") == FAIL
    monkeypatch.setattr(os, "pwrite", real)
    assert fcopy.fcopy_cancel() == OK
    assert listing(dest) == []


def test_daemon_gone_mid_copy_removes_the_partial_file(emulator, daemon, logger, tmp_path):
    emu = emulator("fcopy", timeout=WAIT)
    d = daemon(FcopyHandler(logger), emu)
    assert emu.fcopy_start("f", str(tmp_path / "out"), CREATE) == OK
    assert emu.fcopy_write(0, b"data") == OK
    assert d.shutdown() == 0
    assert listing(tmp_path / "out") == []
    assert emu.wait_unregistered(WAIT)
    assert emu.fcopy_write(0, b"data") == FAIL  # no daemon: the kernel answers E_FAIL


def test_kernel_side_conversions_and_checks(emulator):
    emu = emulator("fcopy", timeout=WAIT)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(WAIT)
    sock.connect(str(emu.path))
    try:
        sock.send(struct.pack("<i", 7))  # unknown version: EINVAL
        sock.send(b"\1\0\0")  # not 4 bytes: EINVAL
        sock.send(struct.pack("<i", 1))
        assert sock.recv(100) == struct.pack("<I", 1)
        assert emu.wait_registered(WAIT)
        got: list[bytes] = []

        def serve() -> None:
            got.append(sock.recv(65536))
            sock.send(struct.pack("<I", 0))

        t = threading.Thread(target=serve)
        t.start()
        assert emu.fcopy_start("n\u00e4me", "/tmp/d", 3, 12345) == OK
        t.join(WAIT)
        (msg,) = got
        assert len(msg) == 1088
        op, _, _, fname, pname, flags, size = FCOPY_START.unpack(msg)
        assert op == FcopyOp.START_FILE_COPY
        assert fname.rstrip(b"\0") == "näme".encode() and pname.rstrip(b"\0") == b"/tmp/d"
        assert (flags, size) == (3, 12345)
        got.clear()
        t = threading.Thread(target=serve)
        t.start()
        assert emu.fcopy_complete() == OK
        t.join(WAIT)
        # COMPLETE is forwarded as recv_len bytes from the payload on: 28 more
        assert len(got[0]) == 28 + 36
    finally:
        sock.close()
    assert [e for _, e in emu.rejected] == [errno.EINVAL, errno.EINVAL]
