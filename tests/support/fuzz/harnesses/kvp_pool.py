"""The KVP pool-file reader and writer (vmis.services.kvp.pool), on any file content.

A pool file is whatever another program left (the C daemon, cloud-init, a
torn copy): the input's bytes are written as ``.kvp_pool_1``, partly shaped
as records (keys and values with or without their NUL, not UTF-8, a
trailing partial record), then read and changed through :class:`KvpPool`.

May raise: ``set`` KvpFormatError (KvpSizeError) for a key or value that
does not fit a record; nothing else, for any file. Checked: ``items``,
``keys``, ``len`` and ``enumerate`` agree; ``get`` finds the first record
of a key (a key field without its NUL names none, as in the C daemon); a
value set is read back and the other records keep their order; a key
deleted is gone; after a write the file is whole records.
"""

from __future__ import annotations

import functools

import atheris

from support.fuzz.scratch import scratch_dir
from vmis.errors import KvpFormatError
from vmis.services.kvp.pool import KEY_SIZE, RECORD_SIZE, VALUE_SIZE, KvpPool, Pool


@functools.cache
def setup() -> KvpPool:
    return KvpPool(scratch_dir("kvp-pool"), Pool.GUEST)


def _field(fdp: atheris.FuzzedDataProvider, size: int) -> bytes:
    text = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
    if fdp.ConsumeProbability() > 0.9:
        return (text * (size // max(len(text), 1) + 1))[:size]  # no NUL at all
    return text.ljust(size, b"\0")[:size]


def _content(fdp: atheris.FuzzedDataProvider) -> bytes:
    records = [_field(fdp, KEY_SIZE) + _field(fdp, VALUE_SIZE)
               for _ in range(fdp.ConsumeIntInRange(0, 5))]
    if fdp.ConsumeBool() and records:  # the same key twice: the first one counts
        records.append(records[0][:KEY_SIZE] + _field(fdp, VALUE_SIZE))
    tail = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    return b"".join(records) + tail


def _text(fdp: atheris.FuzzedDataProvider, known: list[str]) -> str:
    if known and fdp.ConsumeBool():
        return str(fdp.PickValueInList(known))
    if fdp.ConsumeProbability() > 0.95:
        return "k" * fdp.ConsumeIntInRange(500, 2100)
    return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 20))


def one_input(data: bytes) -> None:
    pool = setup()
    fdp = atheris.FuzzedDataProvider(data)
    pool.path.write_bytes(_content(fdp))
    items = pool.items()
    keys = [k for k, _ in items]
    assert pool.keys() == keys and len(pool) == len(items)
    for i, item in enumerate(items):
        assert pool.enumerate(i) == item
    assert pool.enumerate(len(items)) is None and pool.enumerate(-1) is None
    # A key field without its NUL (512 bytes of text) is read, but names no
    # record: keys compare NUL included, as the C daemon compares them.
    keys = [k for k in keys if len(k.encode("utf-8", "surrogateescape")) < KEY_SIZE]
    for key in keys:
        assert pool.get(key) == dict(reversed(items))[key]
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        key, value = _text(fdp, keys), _text(fdp, [])
        before = pool.items()
        before_keys = [k for k, _ in before if len(k.encode("utf-8", "surrogateescape"))
                       < KEY_SIZE]
        if fdp.ConsumeBool():
            try:
                pool.set(key, value)
            except KvpFormatError:
                assert pool.items() == before
                continue
            after = pool.items()
            assert pool.get(key) == value
            if key in before_keys:
                assert [k for k, _ in after] == [k for k, _ in before]
            else:
                assert after == [*before, (key, value)]
        else:
            existed = pool.delete(key)
            assert existed == (key in before_keys)
            assert len(pool) == len(before) - existed
            if not existed:
                continue  # nothing written: a torn tail stays as it was
        assert pool.path.stat().st_size % RECORD_SIZE == 0
