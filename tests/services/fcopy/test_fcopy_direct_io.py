"""Streamed data written past the page cache (fcopy.direct_io), and the receiver that uses it."""

import errno
import fcntl
import hashlib
import mmap
import os
import time

import pytest

from vmis.services.fcopy.direct_io import (
    ALIGN,
    LOCAL_DISK,
    SPARES,
    DirectWriter,
    PageBuffers,
    SpareBuffers,
    filesystem_type,
)
from vmis.services.fcopy.receiver import Receiver

MIB = 1024 * 1024


@pytest.fixture
def direct_dir(tmp_path):
    """tmp_path, on a local disk's filesystem that takes O_DIRECT (ext4, xfs...)."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fstype = filesystem_type(fd)
    os.close(fd)
    if fstype not in LOCAL_DISK:
        pytest.skip(f"{tmp_path} is on {fstype}, which vmis does not write direct")
    try:
        fd = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError as exc:
        pytest.skip(f"{tmp_path}'s filesystem has no direct I/O: {exc.strerror}")
    os.close(fd)
    os.unlink(tmp_path / "probe")
    return tmp_path


def is_direct(fd):
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def write(writer, fd, data, offset):
    """What the receiver does: the direct prefix, then the rest buffered."""
    view = memoryview(data)
    pos = writer.write(fd, view, offset)
    while pos < len(view):
        pos += os.pwrite(fd, view[pos:], offset + pos)
    return pos


def test_aligned_chunks_go_direct_from_any_address_and_the_tail_goes_buffered(direct_dir):
    data = os.urandom(3 * MIB + 123)
    fd = os.open(direct_dir / "f", os.O_RDWR | os.O_CREAT, 0o600)
    writer = DirectWriter()
    # a chunk's data starts anywhere in its frame: here one byte into a buffer
    frames = [bytearray(b"h" + data[off : off + MIB]) for off in range(0, len(data), MIB)]
    assert writer.write(fd, memoryview(frames[0])[1:], 0) == MIB
    assert writer.on and is_direct(fd)
    assert write(writer, fd, memoryview(frames[1])[1:], MIB) == MIB
    assert write(writer, fd, memoryview(frames[2])[1:], 2 * MIB) == MIB
    # the last chunk: its whole pages go direct, then the file is written buffered
    tail = memoryview(frames[3])[1:]
    assert writer.write(fd, tail, 3 * MIB) == 0  # under a page: nothing direct
    assert not writer.on and not is_direct(fd)
    os.pwrite(fd, tail, 3 * MIB)
    writer.release()
    os.close(fd)
    assert (direct_dir / "f").read_bytes() == data


def test_a_tail_of_several_pages_writes_its_pages_direct_and_the_rest_buffered(direct_dir):
    data = os.urandom(5 * ALIGN + 77)
    fd = os.open(direct_dir / "f", os.O_RDWR | os.O_CREAT, 0o600)
    writer = DirectWriter()
    assert writer.write(fd, memoryview(data), 0) == 5 * ALIGN
    os.pwrite(fd, memoryview(data)[5 * ALIGN:], 5 * ALIGN)
    os.close(fd)
    assert (direct_dir / "f").read_bytes() == data


def test_an_unaligned_offset_turns_direct_writing_off_for_good(direct_dir):
    data = os.urandom(4 * ALIGN)
    fd = os.open(direct_dir / "f", os.O_RDWR | os.O_CREAT, 0o600)
    writer = DirectWriter()
    assert write(writer, fd, data[:1000], 0) == 1000  # 1000 bytes: buffered
    assert not writer.on and not is_direct(fd)
    assert writer.write(fd, memoryview(data[1000:]), 1000) == 0
    os.pwrite(fd, data[1000:], 1000)
    assert writer.write(fd, memoryview(data), 0) == 0  # never again, even aligned
    os.close(fd)
    assert (direct_dir / "f").read_bytes() == data


def test_a_chunk_in_a_page_buffer_is_written_from_where_it_is(direct_dir, monkeypatch):
    data = os.urandom(2 * MIB)
    buffers = PageBuffers(MIB)
    fd = os.open(direct_dir / "f", os.O_RDWR | os.O_CREAT, 0o600)
    writer = DirectWriter()
    written = []
    pwrite = os.pwrite

    def spy(fd, view, offset):
        written.append(view.obj)
        return pwrite(fd, view, offset)

    monkeypatch.setattr(os, "pwrite", spy)
    for off in (0, MIB):
        buffer = buffers.take()
        buffer[:] = data[off : off + MIB]
        assert writer.write(fd, memoryview(buffer), off, aligned=True) == MIB
        # no staging buffer: the chunk's own pages went to the disk
        assert written.pop() is buffer and writer._stage is None
        buffers.give(buffer)
    assert writer.on and is_direct(fd) and buffers.made == 1
    os.close(fd)
    assert (direct_dir / "f").read_bytes() == data


def test_page_buffers_are_reused_and_become_the_next_files_spares():
    SPARES.drop()
    buffers = PageBuffers(3 * ALIGN + 5)
    a, b = buffers.take(), buffers.take()
    assert a is not b and len(a) == 3 * ALIGN + 5 and buffers.made == 2
    buffers.give(a)
    assert buffers.take() is a and buffers.made == 2
    kept = buffers.take()  # never given back: a READ may still be receiving into it
    buffers.give(a)
    buffers.give(b)
    buffers.close()
    # the next file starts with the spares, mapped and faulted in already
    following = PageBuffers(3 * ALIGN + 5)
    firsts = {id(following.take()), id(following.take())}
    assert firsts == {id(a), id(b)} and following.made == 2
    assert following.take() is not kept and following.made == 3
    # another size is not served from them
    assert PageBuffers(ALIGN).take() not in (a, b)
    SPARES.drop()
    assert not a.closed  # still the following file's


def test_spare_buffers_are_capped_and_dropped():
    SPARES.drop()
    size = SPARES.limit // 3 + ALIGN
    buffers = PageBuffers(size)
    taken = [buffers.take() for _ in range(3)]
    for buffer in taken:
        buffers.give(buffer)
    buffers.close()
    # two fit under the cap; the third is unmapped
    kept = [b for b in taken if not b.closed]
    assert len(kept) == 2
    following = PageBuffers(size)
    assert {id(following.take()), id(following.take())} == {id(b) for b in kept}
    assert following.take() not in taken
    # a spare still exported when dropped is left to the garbage collector
    spares = PageBuffers(ALIGN)
    spare, exported = spares.take(), spares.take()
    view = memoryview(exported)
    spares.give(spare)
    spares.give(exported)
    spares.close()
    SPARES.drop()
    assert spare.closed and not exported.closed
    assert PageBuffers(ALIGN).take() not in (spare, exported)
    view.release()


def test_spares_are_unmapped_once_idle():
    clock = [100.0]
    spares = SpareBuffers(4 * ALIGN, idle=0.05, clock=lambda: clock[0])
    one, two = (mmap.mmap(-1, ALIGN) for _ in range(2))
    assert spares.keep(one)
    clock[0] += 0.04
    assert spares.keep(two)  # used again: the timer that fires next finds it busy
    deadline = time.monotonic() + 10
    while spares._timer is not None and not one.closed and time.monotonic() < deadline:
        clock[0] += 0.01
        time.sleep(0.01)
    assert one.closed and two.closed and spares.take(ALIGN) is None


def test_another_descriptor_is_never_written_direct(direct_dir):
    one = os.open(direct_dir / "one", os.O_RDWR | os.O_CREAT, 0o600)
    two = os.open(direct_dir / "two", os.O_RDWR | os.O_CREAT, 0o600)
    writer = DirectWriter()
    assert writer.write(one, memoryview(bytes(ALIGN)), 0) == ALIGN
    assert writer.write(two, memoryview(bytes(ALIGN)), 0) == 0
    assert not is_direct(two)
    os.close(one)
    os.close(two)


def test_a_refused_alignment_falls_back_to_buffered_writes(direct_dir, monkeypatch):
    # A device whose blocks are larger than a page refuses the write: EINVAL.
    real = os.pwrite

    def pwrite(fd, data, offset):
        if is_direct(fd):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    data = os.urandom(2 * MIB)
    fd = os.open(direct_dir / "f", os.O_RDWR | os.O_CREAT, 0o600)
    writer = DirectWriter()
    assert write(writer, fd, data[:MIB], 0) == MIB
    assert not writer.on and not is_direct(fd)
    assert write(writer, fd, data[MIB:], MIB) == MIB
    os.close(fd)
    assert (direct_dir / "f").read_bytes() == data


def test_a_disk_error_is_raised_not_hidden(direct_dir, monkeypatch):
    def pwrite(fd, data, offset):
        raise OSError(errno.EIO, "Input/output error")

    fd = os.open(direct_dir / "f", os.O_RDWR | os.O_CREAT, 0o600)
    writer = DirectWriter()
    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(OSError) as info:
        writer.write(fd, memoryview(bytes(ALIGN)), 0)
    assert info.value.errno == errno.EIO
    os.close(fd)


def receiver(directory, size, *, direct):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    return Receiver(fd, "dest.bin", "/x/dest.bin", "cd" * 16, size, mode=0o644, atime_ns=0,
                    mtime_ns=1_600_000_000_000_000_000, force=False, direct=direct)


@pytest.mark.parametrize("direct", [True, False])
def test_a_direct_receiver_streams_verifies_and_places_the_file(direct_dir, direct):
    data = os.urandom(20 * MIB + 4097)
    r = receiver(direct_dir, len(data), direct=direct)
    r.open(resume=False)
    flags = []
    for off in range(0, len(data), 4 * MIB):
        chunk = memoryview(bytearray(b"head" + data[off : off + 4 * MIB]))[4:]
        r.claim(off, len(chunk))
        r.submit(off, chunk).result(timeout=30)
        flags.append(is_direct(r.fd))
    # every whole-page chunk went past the page cache; the tail went buffered
    assert flags == [direct] * 5 + [False]
    digest = hashlib.sha256(data).hexdigest()
    assert r.commit(digest) == digest
    assert (direct_dir / "dest.bin").read_bytes() == data
    assert sorted(p.name for p in direct_dir.iterdir()) == ["dest.bin"]


def test_a_direct_receiver_that_stops_resumes_from_its_checkpoint(direct_dir):
    data = os.urandom(24 * MIB)
    r = receiver(direct_dir, len(data), direct=True)
    r.open(resume=True)
    for off in range(0, 12 * MIB, 4 * MIB):
        r.claim(off, 4 * MIB)
        r.submit(off, data[off : off + 4 * MIB]).result(timeout=30)
    r.close(keep=True)
    again = receiver(direct_dir, len(data), direct=True)
    offset, prefix = again.open(resume=True)
    assert (offset, prefix) == (12 * MIB, hashlib.sha256(data[: 12 * MIB]).hexdigest())
    for off in range(offset, len(data), 4 * MIB):
        again.claim(off, 4 * MIB)
        again.submit(off, data[off : off + 4 * MIB]).result(timeout=30)
    digest = hashlib.sha256(data).hexdigest()
    assert again.commit(digest) == digest
    assert (direct_dir / "dest.bin").read_bytes() == data


FULL_DISK = r'''
import os, resource, signal, sys
from vmis.errors import ServiceError
from vmis.services.fcopy.receiver import Receiver
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (6 * 2**20 + 512, resource.RLIM_INFINITY))
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
r = Receiver(fd, "dest.bin", "/x/dest.bin", "ef" * 16, 16 * 2**20, mode=0o644, atime_ns=0,
             mtime_ns=0, force=False, direct=True)
r.open(resume=False)
try:
    for off in range(0, 16 * 2**20, 4 * 2**20):
        r.claim(off, 4 * 2**20)
        r.submit(off, os.urandom(4 * 2**20)).result(timeout=30)
except ServiceError as exc:
    print(exc.code, exc)
r.close(keep=False)
'''


def test_a_full_disk_under_a_direct_write_fails_the_copy_with_its_reason(direct_dir):
    # A file-size limit on a child process: its writes past 6 MiB fail as on
    # a full disk (EFBIG): the direct write comes back short, and the rest,
    # written buffered, says why.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(direct_dir)],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.startswith("too-large writing /x/dest.bin: File too large"), done.stdout
    assert list(direct_dir.iterdir()) == []


@pytest.mark.parametrize("fstype, direct", [("nfs4", False), ("fuse.sshfs", False),
                                            ("cifs", False), ("ext4", True), ("xfs", True)])
def test_only_local_disk_filesystems_are_written_direct(direct_dir, monkeypatch, fstype,
                                                        direct):
    from vmis.services.fcopy import direct_io

    fd = os.open(direct_dir / "f", os.O_RDWR | os.O_CREAT, 0o600)
    st = os.fstat(fd)
    info = direct_dir / "mountinfo"
    info.write_text(f"22 27 0:21 / /proc rw - proc proc rw\n"
                    f"40 27 {os.major(st.st_dev)}:{os.minor(st.st_dev)} / /data rw,relatime "
                    f"shared:1 - {fstype} /dev/x rw\n")
    monkeypatch.setattr(direct_io, "_MOUNTINFO", str(info))
    assert direct_io.filesystem_type(fd) == fstype
    writer = DirectWriter()
    assert writer.write(fd, memoryview(bytes(ALIGN)), 0) == (ALIGN if direct else 0)
    assert writer.on == direct == is_direct(fd)
    os.close(fd)


def test_the_filesystem_of_a_descriptor_is_found_in_mountinfo(tmp_path, monkeypatch):
    from vmis.services.fcopy import direct_io

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    found = filesystem_type(fd)
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split(" - ")[1].split()[0] for line in f]
    assert found in mounts
    monkeypatch.setattr(direct_io, "_MOUNTINFO", "/nonexistent/mountinfo")
    assert filesystem_type(fd) is None
    os.close(fd)
