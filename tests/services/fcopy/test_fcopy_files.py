"""Receiver and Reader: partial files, checkpoints, resume, verification (fcopy.md §3-4)."""

import hashlib
import json
import os

import pytest

from vmis.errors import ServiceError
from vmis.services.fcopy import CHECKPOINT_BYTES, resume_token
from vmis.services.fcopy.claims import CLAIMS
from vmis.services.fcopy.metadata import file_mode
from vmis.services.fcopy.reader import Reader
from vmis.services.fcopy.receiver import Receiver, part_names

MIB = 1024 * 1024


def receiver(directory, data_size, *, name="dest.bin", token="ab" * 16, force=False):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    return Receiver(fd, name, f"/x/{name}", token, data_size, mode=0o640, atime_ns=10**18,
                    mtime_ns=1_600_000_000_123_456_789, force=force)


def write_all(r, data, start=0, step=MIB):
    for off in range(start, len(data), step):
        chunk = data[off : off + step]
        r.claim(off, len(chunk))
        r.write(off, chunk)


def test_complete_copy_is_verified_placed_with_mode_and_mtime(tmp_path):
    data = os.urandom(3 * MIB + 5)
    r = receiver(tmp_path, len(data))
    assert r.open(resume=True) == (0, hashlib.sha256().hexdigest())
    write_all(r, data)
    assert not (tmp_path / "dest.bin").exists()  # never a partial destination
    digest = r.commit(hashlib.sha256(data).hexdigest())
    assert digest == hashlib.sha256(data).hexdigest()
    st = os.stat(tmp_path / "dest.bin")
    assert (tmp_path / "dest.bin").read_bytes() == data
    assert (oct(st.st_mode & 0o7777), st.st_mtime_ns) == (oct(0o640), 1_600_000_000_123_456_789)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest.bin"]


def test_interrupted_copy_resumes_at_its_last_checkpoint(tmp_path):
    data = os.urandom(2 * CHECKPOINT_BYTES + 3 * MIB)
    r = receiver(tmp_path, len(data))
    r.open(resume=True)
    write_all(r, data[: CHECKPOINT_BYTES + 2 * MIB])
    # A crash: no close, only the periodic checkpoint exists.
    os.close(r.fd)
    os.close(r.dir_fd)
    CLAIMS.release(r.held)  # the process is gone, and its claims with it
    r2 = receiver(tmp_path, len(data))
    offset, prefix = r2.open(resume=True)
    assert offset == CHECKPOINT_BYTES
    assert prefix == hashlib.sha256(data[:offset]).hexdigest()
    write_all(r2, data, start=offset)
    r2.commit(hashlib.sha256(data).hexdigest())
    assert (tmp_path / "dest.bin").read_bytes() == data
    assert r2.resumed == CHECKPOINT_BYTES


def test_a_clean_stop_checkpoints_everything_written(tmp_path):
    data = os.urandom(5 * MIB)
    r = receiver(tmp_path, len(data))
    r.open(resume=True)
    write_all(r, data[: 3 * MIB])
    r.close(keep=True)
    r2 = receiver(tmp_path, len(data))
    assert r2.open(resume=True)[0] == 3 * MIB
    r2.close(keep=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupted_partial_data_is_not_resumed(tmp_path):
    data = os.urandom(4 * MIB)
    r = receiver(tmp_path, len(data))
    r.open(resume=True)
    write_all(r, data[: 3 * MIB])
    r.close(keep=True)
    part = tmp_path / part_names("dest.bin", "ab" * 16)[0]
    with part.open("r+b") as f:
        f.seek(MIB)
        f.write(b"\0" * 10)
    r2 = receiver(tmp_path, len(data))
    assert r2.open(resume=True)[0] == 0
    r2.close(keep=False)


def test_partial_file_that_is_a_hard_link_is_never_resumed(tmp_path):
    data = os.urandom(2 * MIB)
    r = receiver(tmp_path, len(data))
    r.open(resume=True)
    write_all(r, data[:MIB])
    r.close(keep=True)
    part = tmp_path / part_names("dest.bin", "ab" * 16)[0]
    os.link(part, tmp_path / "victim")
    r2 = receiver(tmp_path, len(data))
    assert r2.open(resume=True)[0] == 0  # a fresh partial file, not the linked one
    r2.close(keep=False)
    assert (tmp_path / "victim").stat().st_size == MIB


def test_hash_mismatch_fails_and_leaves_nothing(tmp_path):
    data = os.urandom(MIB)
    r = receiver(tmp_path, len(data))
    r.open(resume=False)
    write_all(r, data)
    with pytest.raises(ServiceError, match="SHA-256 mismatch") as info:
        r.commit("0" * 64)
    assert info.value.code == "failed"
    assert list(tmp_path.iterdir()) == []


def test_short_copy_is_not_committed(tmp_path):
    r = receiver(tmp_path, 10)
    r.open(resume=False)
    r.claim(0, 5)
    r.write(0, b"12345")
    with pytest.raises(ServiceError, match="received 5 of 10"):
        r.commit(hashlib.sha256(b"12345").hexdigest())
    r.close(keep=False)


def test_writes_must_be_in_order_and_within_the_size(tmp_path):
    r = receiver(tmp_path, 10)
    r.open(resume=False)
    with pytest.raises(ServiceError, match="expected 0"):
        r.claim(5, 5)
    r.claim(0, 5)
    with pytest.raises(ServiceError, match="past the announced size"):
        r.claim(5, 6)
    r.close(keep=False)


def test_a_file_that_appeared_meanwhile_is_kept_without_force(tmp_path):
    r = receiver(tmp_path, 3)
    r.open(resume=False)
    write_all(r, b"new")
    (tmp_path / "dest.bin").write_text("old")
    with pytest.raises(ServiceError) as info:
        r.commit(hashlib.sha256(b"new").hexdigest())
    assert info.value.code == "exists"
    assert (tmp_path / "dest.bin").read_text() == "old"
    r.close(keep=False)


def test_force_replaces_an_existing_file(tmp_path):
    (tmp_path / "dest.bin").write_text("old")
    r = receiver(tmp_path, 3, force=True)
    r.open(resume=False)
    write_all(r, b"new")
    r.commit(hashlib.sha256(b"new").hexdigest())
    assert (tmp_path / "dest.bin").read_text() == "new"


def test_stale_partials_of_another_source_version_are_removed(tmp_path):
    old = receiver(tmp_path, 2 * MIB, token="11" * 16)
    old.open(resume=True)
    write_all(old, os.urandom(MIB))
    old.close(keep=True)
    (tmp_path / "unrelated.vmis-part").write_text("keep me")
    assert len(list(tmp_path.iterdir())) == 3
    new = receiver(tmp_path, 2 * MIB, token="22" * 16)
    new.open(resume=True)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {part_names("dest.bin", "22" * 16)[0], "unrelated.vmis-part"}
    new.close(keep=False)


def test_checkpoint_record_never_claims_more_than_written(tmp_path):
    data = os.urandom(CHECKPOINT_BYTES + MIB)
    r = receiver(tmp_path, len(data))
    r.open(resume=True)
    write_all(r, data)
    record = json.loads((tmp_path / part_names("dest.bin", "ab" * 16)[1]).read_text())
    assert record["verified"] == CHECKPOINT_BYTES
    assert record["sha256"] == hashlib.sha256(data[:CHECKPOINT_BYTES]).hexdigest()
    r.close(keep=False)


def test_reader_hashes_in_order_and_resumes_with_a_prefix_hash(tmp_path):
    data = os.urandom(3 * MIB + 1)
    (tmp_path / "src").write_bytes(data)
    rd = Reader(os.open(tmp_path / "src", os.O_RDONLY), "src")
    assert rd.seek(MIB) == hashlib.sha256(data[:MIB]).hexdigest()
    with pytest.raises(ServiceError, match="expected"):
        rd.claim(0, MIB)
    pos = MIB
    while pos < len(data):
        n = rd.claim(pos, MIB)
        assert rd.read(pos, n) == data[pos : pos + n]
        pos += n
    assert rd.finish() == hashlib.sha256(data).hexdigest()
    rd.close()


def test_reader_notices_a_source_changed_during_the_copy(tmp_path):
    (tmp_path / "src").write_bytes(b"x" * 100)
    rd = Reader(os.open(tmp_path / "src", os.O_RDONLY), "src")
    rd.read(0, rd.claim(0, 100))
    os.utime(tmp_path / "src", ns=(1, 1))
    with pytest.raises(ServiceError, match="changed while being copied"):
        rd.finish()
    rd.close()


def test_modes_never_keep_setuid_and_tokens_name_the_copy():
    assert file_mode(0o104755) == 0o755
    assert file_mode(0o1777) == 0o1777
    a = resume_token("to-guest", "/s", 10, 5, "/d")
    assert a == resume_token("to-guest", "/s", 10, 5, "/d")
    assert a != resume_token("to-guest", "/s", 10, 6, "/d")
    assert a != resume_token("from-guest", "/s", 10, 5, "/d")


# Section: the threaded paths (large files)


def test_pipelined_writes_hash_checkpoint_and_commit(tmp_path):
    data = os.urandom(2 * CHECKPOINT_BYTES + 5 * MIB + 3)
    r = receiver(tmp_path, len(data))
    r.open(resume=True)
    futures = []
    for off in range(0, len(data), 4 * MIB):
        chunk = data[off : off + 4 * MIB]
        r.claim(off, len(chunk))
        futures.append(r.submit(off, chunk))
    for f in futures:
        f.result(timeout=30)
    assert r.written == len(data)
    r._drain()  # records are written by the flusher thread, behind the data
    record = json.loads((tmp_path / part_names("dest.bin", "ab" * 16)[1]).read_text())
    assert record["sha256"] == hashlib.sha256(data[: record["verified"]]).hexdigest()
    assert record["verified"] >= 2 * CHECKPOINT_BYTES
    assert r.commit(hashlib.sha256(data).hexdigest()) == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "dest.bin").read_bytes() == data


def test_a_failed_write_is_never_checkpointed_past_the_failure(tmp_path):
    data = os.urandom(CHECKPOINT_BYTES + 8 * MIB)
    r = receiver(tmp_path, len(data))
    r.open(resume=True)
    first = data[:CHECKPOINT_BYTES]
    r.claim(0, len(first))
    r.submit(0, first).result(timeout=30)
    good_fd = r.fd
    r.fd = os.open(tmp_path / "ro", os.O_RDONLY | os.O_CREAT)  # writes now fail (EBADF)
    rest = data[CHECKPOINT_BYTES:]
    r.claim(CHECKPOINT_BYTES, len(rest))
    with pytest.raises(ServiceError, match="writing"):
        r.submit(CHECKPOINT_BYTES, rest).result(timeout=30)
    os.close(r.fd)
    r.fd = good_fd
    with pytest.raises(ServiceError, match="a write failed"):
        r.commit(hashlib.sha256(data).hexdigest())
    r.close(keep=True)
    r2 = receiver(tmp_path, len(data))
    offset, prefix = r2.open(resume=True)
    assert (offset, prefix) == (CHECKPOINT_BYTES, hashlib.sha256(first).hexdigest())
    r2.close(keep=False)


def test_threaded_writes_land_in_order_whatever_the_chunk_sizes(tmp_path):
    data = os.urandom(3 * CHECKPOINT_BYTES + 12345)
    r = receiver(tmp_path, len(data))
    r.open(resume=False)
    futures, off, sizes = [], 0, [1, 4 * MIB, 7, MIB + 3, 65536, 3 * MIB]
    i = 0
    while off < len(data):
        chunk = memoryview(data)[off : off + sizes[i % len(sizes)]]
        r.claim(off, len(chunk))
        futures.append(r.submit(off, chunk))
        off += len(chunk)
        i += 1
    for f in futures:
        f.result(timeout=30)
    assert r.commit(hashlib.sha256(data).hexdigest()) == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "dest.bin").read_bytes() == data


def test_an_error_in_the_writer_thread_fails_the_copy_and_abort_removes_the_temp_file(
        tmp_path):
    data = os.urandom(CHECKPOINT_BYTES + 4 * MIB)
    r = receiver(tmp_path, len(data))
    r.open(resume=False)
    part, record = part_names("dest.bin", "ab" * 16)
    real_fd = r.fd
    r.fd = os.open(tmp_path / "ro", os.O_RDONLY | os.O_CREAT)  # the disk fails: EBADF
    r.claim(0, len(data))
    with pytest.raises(ServiceError, match="writing /x/dest.bin") as info:
        r.submit(0, data).result(timeout=30)
    assert info.value.code == "failed"
    os.close(r.fd)
    r.fd = real_fd
    with pytest.raises(ServiceError, match="a write failed"):
        r.commit(hashlib.sha256(data).hexdigest())
    r.close(keep=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"]
    assert not (tmp_path / part).exists() and not (tmp_path / record).exists()


def test_pipelined_reads_return_data_in_order_and_hash_it_all(tmp_path):
    data = os.urandom(10 * 4 * MIB + 11)
    (tmp_path / "src").write_bytes(data)
    rd = Reader(os.open(tmp_path / "src", os.O_RDONLY), "src")
    futures, pos = [], 0
    while pos < len(data):
        n = rd.claim(pos, 4 * MIB)
        futures.append((pos, rd.submit(pos, n)))
        pos += n
    for at, f in futures:
        assert f.result(timeout=30) == data[at : at + 4 * MIB]
    assert rd.finish() == hashlib.sha256(data).hexdigest()
    rd.close()
    assert rd.fd == -1
