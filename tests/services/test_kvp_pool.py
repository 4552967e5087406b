"""KVP pool files: byte layout, the C daemon's record order, locking, durability."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from vmis.errors import KvpFormatError, KvpSizeError, VmisError
from vmis.services.kvp.pool import (
    KEY_SIZE,
    RECORD_SIZE,
    VALUE_SIZE,
    KvpPool,
    KvpPools,
    Pool,
    decode_record,
    encode_record,
    pool_path,
)


class CDaemonModel:
    """A byte-level transcription of hv_kvp_daemon.c's pool algorithm.

    Records are 2560-byte arrays; SET memcpy()s key_size / value_size bytes
    (leaving stale bytes after a shorter value), a match is memcmp() of
    key_size bytes, DELETE strcpy()s every following record one slot up.
    """

    def __init__(self) -> None:
        self.records: list[bytearray] = []

    def set(self, key: bytes, value: bytes) -> int:
        key_z, value_z = key + b"\0", value + b"\0"
        if len(key_z) > KEY_SIZE or len(value_z) > VALUE_SIZE:
            return 1
        for rec in self.records:
            if rec[: len(key_z)] == key_z:
                rec[KEY_SIZE : KEY_SIZE + len(value_z)] = value_z
                return 0
        rec = bytearray(RECORD_SIZE)
        rec[: len(key_z)] = key_z
        rec[KEY_SIZE : KEY_SIZE + len(value_z)] = value_z
        self.records.append(rec)
        return 0

    def delete(self, key: bytes) -> int:
        key_z = key + b"\0"
        for i, rec in enumerate(self.records):
            if rec[: len(key_z)] != key_z:
                continue
            for j in range(i, len(self.records) - 1):
                nxt = self.records[j + 1]
                k = bytes(nxt[:KEY_SIZE]).split(b"\0")[0] + b"\0"
                v = bytes(nxt[KEY_SIZE:]).split(b"\0")[0] + b"\0"
                self.records[j][: len(k)] = k
                self.records[j][KEY_SIZE : KEY_SIZE + len(v)] = v
            self.records.pop()
            return 0
        return 1

    def strings(self) -> list[tuple[str, str]]:
        return [decode_record(bytes(r)) for r in self.records]


# Section: byte layout


def test_record_layout_is_key512_value2048_nul_padded():
    raw = encode_record("Name", "välue")
    assert len(raw) == RECORD_SIZE == 2560
    assert raw[:5] == b"Name\0"
    assert raw[5:512] == b"\0" * 507
    assert raw[512 : 512 + 7] == "välue".encode() + b"\0"
    assert raw[512 + 7 :] == b"\0" * (2048 - 7)
    assert decode_record(raw) == ("Name", "välue")


def test_file_is_concatenated_records_in_order(tmp_path: Path):
    pool = KvpPool(tmp_path, Pool.GUEST)
    pool.set("a", "1")
    pool.set("b", "2")
    data = pool_path(tmp_path, 1).read_bytes()
    assert pool.path.name == ".kvp_pool_1"
    assert len(data) == 2 * RECORD_SIZE
    assert data[:RECORD_SIZE] == encode_record("a", "1")
    assert data[RECORD_SIZE:] == encode_record("b", "2")


def test_reads_c_daemon_file_with_stale_bytes_and_partial_tail(tmp_path: Path):
    model = CDaemonModel()
    model.set(b"k", b"a-long-old-value")
    model.set(b"k", b"short")  # stale "old-value" bytes stay after the NUL
    raw = b"".join(bytes(r) for r in model.records) + b"\x01" * 100  # torn tail
    pool_path(tmp_path, 0).write_bytes(raw)
    pool = KvpPool(tmp_path, Pool.EXTERNAL)
    assert pool.items() == [("k", "short")]
    assert pool.get("k") == "short"
    assert len(pool) == 1


def test_non_utf8_bytes_round_trip(tmp_path: Path):
    rec = bytearray(RECORD_SIZE)
    rec[:4] = b"k\xff\xfe\0"
    rec[KEY_SIZE : KEY_SIZE + 3] = b"\x80v\0"
    pool_path(tmp_path, 1).write_bytes(bytes(rec) + encode_record("z", "1"))
    pool = KvpPool(tmp_path)
    key, value = pool.items()[0]
    pool.set(key, value + "x")
    assert pool_path(tmp_path, 1).read_bytes()[:RECORD_SIZE][:4] == b"k\xff\xfe\0"
    assert pool.get(key) == value + "x"


# Section: sizes


def test_size_limits_include_the_nul(tmp_path: Path):
    pool = KvpPool(tmp_path)
    pool.set("k" * 511, "v" * 2047)
    assert pool.get("k" * 511) == "v" * 2047
    with pytest.raises(KvpSizeError) as err:
        pool.set("x", "v" * 2048)
    assert (err.value.field, err.value.size, err.value.limit) == ("value", 2049, 2048)
    with pytest.raises(KvpSizeError):
        pool.set("k" * 512, "v")
    with pytest.raises(KvpSizeError):  # 3 bytes per character counts, not characters
        pool.set("x", "€" * 683)
    assert isinstance(err.value, VmisError)
    assert pool.items() == [("k" * 511, "v" * 2047)]


def test_nul_in_key_and_unencodable_text_are_refused(tmp_path: Path):
    with pytest.raises(KvpFormatError):
        KvpPool(tmp_path).set("a\0b", "v")
    with pytest.raises(KvpFormatError):
        KvpPool(tmp_path).set("k", "\ud800")  # a lone surrogate is not surrogateescape's


# Section: order and semantics


def test_overwrite_in_place_and_delete_shifts_up(tmp_path: Path):
    pool = KvpPool(tmp_path, Pool.AUTO_EXTERNAL)
    for k in "abcd":
        pool.set(k, k.upper())
    pool.set("b", "new")
    assert pool.keys() == ["a", "b", "c", "d"]
    assert pool.delete("b") is True
    assert pool.items() == [("a", "A"), ("c", "C"), ("d", "D")]
    assert pool.delete("b") is False
    assert pool.enumerate(0) == ("a", "A")
    assert pool.enumerate(2) == ("d", "D")
    assert pool.enumerate(3) is None
    assert pool.enumerate(-1) is None


def test_prefix_keys_are_distinct(tmp_path: Path):
    pool = KvpPool(tmp_path)
    pool.set("abc", "1")
    pool.set("ab", "2")
    assert pool.items() == [("abc", "1"), ("ab", "2")]
    assert pool.get("a") is None


def test_missing_file_reads_empty_and_set_creates_it(tmp_path: Path):
    pool = KvpPool(tmp_path, Pool.GUEST)
    assert pool.items() == [] and pool.get("x") is None and len(pool) == 0
    pool.set("x", "1")
    assert pool.path.exists()


def test_changes_by_others_are_seen(tmp_path: Path):
    ours = KvpPool(tmp_path)
    ours.set("a", "1")
    pool_path(tmp_path, 1).write_bytes(encode_record("other", "2"))
    assert ours.items() == [("other", "2")]


def test_pools_create_all_five(tmp_path: Path):
    pools = KvpPools(tmp_path / "hyperv")
    pools.create()
    names = sorted(p.name for p in (tmp_path / "hyperv").iterdir())
    assert names == [f".kvp_pool_{i}" for i in range(5)]
    assert [p.pool for p in pools] == list(Pool)
    assert pools[Pool.GUEST].items() == []
    assert [int(p) for p in Pool] == [0, 1, 2, 3, 4]
    assert [p.name for p in Pool] == [
        "EXTERNAL", "GUEST", "AUTO", "AUTO_EXTERNAL", "AUTO_INTERNAL"
    ]


def test_write_is_a_rename_and_keeps_mode(tmp_path: Path):
    pool = KvpPool(tmp_path)
    pool.set("a", "1")
    os.chmod(pool.path, 0o600)
    before = os.stat(pool.path).st_ino
    pool.set("b", "2")
    after = os.stat(pool.path)
    assert after.st_ino != before
    assert after.st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [".kvp_pool_1"]  # no temp left


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pool = KvpPool(tmp_path)
    pool.set("a", "1")

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        pool.set("b", "2")
    monkeypatch.undo()
    assert pool.items() == [("a", "1")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".kvp_pool_1"]


keys = st.sampled_from(["a", "b", "ab", "abc", "ключ", "k" * 511, "k" * 512, ""])
values = st.one_of(
    st.sampled_from(["", "x", "long-value-" * 10, "v" * 2047, "v" * 2048]),
    st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]), max_size=20),
)


@settings(max_examples=60, stateful_step_count=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
class PoolAgainstCDaemon(RuleBasedStateMachine):
    """Random SET/DELETE sequences give the records the C algorithm gives."""

    @initialize()
    def setup(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.pool = KvpPool(self.tmp.name, Pool.EXTERNAL)
        self.model = CDaemonModel()

    def teardown(self) -> None:
        self.tmp.cleanup()

    @rule(key=keys, value=values)
    def set(self, key: str, value: str) -> None:
        expect_fail = self.model.set(key.encode(), value.encode())
        if expect_fail:
            with pytest.raises(KvpSizeError):
                self.pool.set(key, value)
        else:
            self.pool.set(key, value)

    @rule(key=keys)
    def delete(self, key: str) -> None:
        found = self.model.delete(key.encode()) == 0
        assert self.pool.delete(key) is found

    @invariant()
    def same_records(self) -> None:
        if hasattr(self, "model"):
            assert self.pool.items() == self.model.strings()


TestPoolAgainstCDaemon = PoolAgainstCDaemon.TestCase


# Section: concurrency

WRITER = textwrap.dedent(
    """
    import sys
    from vmis.services.kvp.pool import KvpPool
    directory, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pool = KvpPool(directory, 1)
    for i in range(count):
        pool.set(f"{name}-{i}", str(i))
        if i % 3 == 2:
            assert pool.delete(f"{name}-{i - 1}")
    """
)


def test_concurrent_writer_processes_lose_nothing(tmp_path: Path):
    writers, count = 4, 30
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"w{n}", str(count)])
        for n in range(writers)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    got = dict(KvpPool(tmp_path, 1).items())
    expected = {
        f"w{n}-{i}": str(i)
        for n in range(writers)
        for i in range(count)
        if not (i % 3 == 1 and i + 1 < count)
    }
    assert got == expected
    assert len(KvpPool(tmp_path, 1)) == len(expected)  # no duplicates


def test_concurrent_threads_lose_nothing(tmp_path: Path):
    pool = KvpPool(tmp_path, 1)

    def work(n: int) -> None:
        other = KvpPool(tmp_path, 1)
        for i in range(25):
            other.set(f"t{n}-{i}", "v")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(pool) == 100
