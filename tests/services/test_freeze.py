"""Filesystem freezing: the mount filter, the order, rollback, the ioctl adapter.

FIFREEZE is never called for real here: the ioctl adapter is exercised with an
injected ioctl function.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from vmis.errors import FreezeError, ThawError, VmisError
from vmis.services.vss.freeze import (
    FIFREEZE,
    FITHAW,
    FakeFreezer,
    FilesystemFreeze,
    IoctlFreezer,
    freeze_candidates,
    read_mounts,
)

MOUNTS = """\
sysfs /sys sysfs rw,nosuid 0 0
proc /proc proc rw 0 0
/dev/sda2 / ext4 rw,relatime 0 0
/dev/sda1 /boot/efi vfat rw,relatime 0 0
/dev/sdb1 /srv/data xfs rw 0 0
/dev/sdc1 /mnt/ro ext4 ro,relatime 0 0
/dev/loop3 /snap/core squashfs rw 0 0
/dev/mapper/vg-onloop /mnt/lvm ext4 rw 0 0
/dev/mapper/vg-home /home ext4 rw 0 0
/dev/sdb1 /srv/bind xfs rw 0 0
/dev/sdd1 /mnt/with\\040space ext4 rw 0 0
tmpfs /run tmpfs rw 0 0
"""

NUMBERS = {
    "/dev/sda2": (8, 2),
    "/dev/sda1": (8, 1),
    "/dev/sdb1": (8, 17),
    "/dev/sdc1": (8, 33),
    "/dev/loop3": (7, 3),
    "/dev/mapper/vg-onloop": (253, 0),
    "/dev/mapper/vg-home": (253, 1),
    "/dev/sdd1": (8, 49),
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/mounts").write_text(MOUNTS)
    block = tmp_path / "sys/dev/block"
    for major, minor in NUMBERS.values():
        (block / f"{major}:{minor}").mkdir(parents=True, exist_ok=True)
    (block / "7:3/loop").mkdir()  # a loop device
    # dm-0 sits on dm-5, which sits on loop7: loop-backed two levels down
    (block / "253:0/slaves/dm-5/slaves/loop7/loop").mkdir(parents=True)
    (block / "253:1/slaves/sda3").mkdir(parents=True)  # a plain disk below
    return tmp_path


def test_read_mounts_decodes_octal_escapes(root: Path):
    mounts = read_mounts(root)
    assert mounts[2].source == "/dev/sda2" and mounts[2].mountpoint == "/"
    assert mounts[10].mountpoint == "/mnt/with space"
    assert mounts[3].options == ("rw", "relatime")


def test_candidates_follow_the_linux_daemon_filter_root_last(root: Path):
    got = [m.mountpoint for m in freeze_candidates(root, device_number=NUMBERS.get)]
    assert got == ["/srv/data", "/home", "/srv/bind", "/mnt/with space", "/"]


def test_unknown_device_number_is_not_loop(root: Path):
    got = [m.mountpoint for m in freeze_candidates(root, device_number=lambda s: None)]
    assert "/snap/core" in got and "/mnt/lvm" in got
    assert got[-1] == "/"


def test_default_device_number_stats_under_root(root: Path):
    # regular files under <root>/dev have st_rdev 0 -> 0:0, which is not loop
    (root / "dev/mapper").mkdir(parents=True)
    (root / "sys/dev/block/0:0").mkdir()
    (root / "sys/dev/block/0:0/loop").mkdir()
    (root / "dev/sdb1").write_text("")
    got = [m.mountpoint for m in freeze_candidates(root)]
    assert "/srv/data" not in got  # stat succeeded: 0:0 is "loop" in this tree
    assert "/home" in got  # stat failed: kept


def test_freeze_then_thaw(root: Path):
    fake = FakeFreezer()
    fs = FilesystemFreeze(fake, root, device_number=NUMBERS.get)
    frozen = fs.freeze()
    assert frozen == ["/srv/data", "/home", "/srv/bind", "/mnt/with space", "/"]
    assert fake.frozen == set(frozen)
    thawed = fs.thaw()
    assert thawed == list(reversed(frozen))
    assert fake.frozen == set()
    assert [c for c, _ in fake.calls] == ["freeze"] * 5 + ["thaw"] * 5


def test_freeze_failure_thaws_everything_already_frozen(root: Path):
    fake = FakeFreezer(fail_freeze={"/srv/bind": errno.EIO})
    fs = FilesystemFreeze(fake, root, device_number=NUMBERS.get)
    with pytest.raises(FreezeError) as err:
        fs.freeze()
    assert isinstance(err.value, VmisError)
    assert err.value.mountpoint == "/srv/bind" and err.value.errno == errno.EIO
    assert "/srv/bind" in str(err.value) and "\n" not in str(err.value)
    assert fake.frozen == set()
    assert ("freeze", "/") not in fake.calls  # stopped at the failure
    assert fake.calls[-3:] == [("thaw", "/home"), ("thaw", "/srv/data"), ("thaw", "/srv/bind")]
    assert fs.frozen == []


def test_thaw_tries_all_and_reports_failures(root: Path):
    fake = FakeFreezer(fail_thaw={"/home": errno.EIO})
    fs = FilesystemFreeze(fake, root, device_number=NUMBERS.get)
    fs.freeze()
    with pytest.raises(ThawError) as err:
        fs.thaw()
    assert err.value.failures == [("/home", errno.EIO)]
    assert fake.frozen == {"/home"}


def test_thaw_includes_mounts_gone_from_the_table(root: Path):
    fake = FakeFreezer()
    fs = FilesystemFreeze(fake, root, device_number=NUMBERS.get)
    fs.freeze()
    (root / "proc/mounts").write_text("/dev/sda2 / ext4 rw 0 0\n")
    assert fs.thaw() == ["/", "/mnt/with space", "/srv/bind", "/home", "/srv/data"]
    assert fake.frozen == set()


class FakeIoctl:
    def __init__(self, fail: dict[int, int] | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.fail = fail or {}

    def __call__(self, fd: int, request: int, arg: int) -> int:
        assert arg == 0
        os.fstat(fd)  # a real, open descriptor
        self.calls.append((fd, request))
        if request in self.fail:
            code = self.fail[request]
            raise OSError(code, os.strerror(code))
        return 0


def test_ioctl_numbers():
    assert FIFREEZE == 0xC0045877 and FITHAW == 0xC0045878


def test_ioctl_freezer_issues_the_right_requests(tmp_path: Path):
    ioctl = FakeIoctl()
    freezer = IoctlFreezer(ioctl=ioctl)
    freezer.freeze(str(tmp_path))
    freezer.thaw(str(tmp_path))
    assert [r for _, r in ioctl.calls] == [FIFREEZE, FITHAW]


def test_ioctl_freezer_ignores_ebusy_on_freeze_and_einval_on_thaw(tmp_path: Path):
    freezer = IoctlFreezer(ioctl=FakeIoctl({FIFREEZE: errno.EBUSY, FITHAW: errno.EINVAL}))
    freezer.freeze(str(tmp_path))
    freezer.thaw(str(tmp_path))


def test_ioctl_freezer_raises_other_errors_and_closes_fd(tmp_path: Path):
    opened: list[int] = []

    def open_dir(path: str) -> int:
        fd = os.open(path, os.O_RDONLY)
        opened.append(fd)
        return fd

    freezer = IoctlFreezer(
        ioctl=FakeIoctl({FIFREEZE: errno.EOPNOTSUPP, FITHAW: errno.EBUSY}), open_dir=open_dir
    )
    with pytest.raises(OSError) as err:
        freezer.freeze(str(tmp_path))
    assert err.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError):
        freezer.thaw(str(tmp_path))
    for fd in opened:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_ioctl_freezer_missing_mountpoint(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        IoctlFreezer(ioctl=FakeIoctl()).freeze(str(tmp_path / "nope"))
