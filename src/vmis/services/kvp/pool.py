"""KVP pool files in the format of the Linux hyperv-daemons (``hv_kvp_daemon``).

This is the one implementation of that format in vmis; the Hyper-V KVP daemon
and the vmis KVP service both use it, so a pool written by either (or by the C
daemon, cloud-init, azure-init ...) reads the same everywhere.

Format (docs/hyperv-daemons.md, facts section 4):

* one file per pool, ``<directory>/.kvp_pool_N`` for N in :class:`Pool`;
* no header: the file is a sequence of fixed 2560-byte records, each a
  512-byte key field followed by a 2048-byte value field; both hold UTF-8 text
  terminated by a NUL byte (so at most 511 and 2047 bytes of text);
* a trailing partial record is ignored, as the C daemon's ``fread`` does.

Algorithms follow the C daemon so that record *order* matches: a SET of an
existing key overwrites its value in place, a new key is appended, a DELETE
shifts the following records up by one.  Keys compare exactly (the C daemon
``memcmp``\\ s the key including its NUL), and the first match wins.

Where we differ, on purpose:

* the read-modify-write runs under *one* lock (the C daemon drops its lock
  between the re-read and the rewrite, so two writers can lose an update);
* the file is replaced atomically and durably (temporary file in the same
  directory, ``fsync``, ``rename``, ``fsync`` of the directory) instead of
  being truncated and rewritten in place, so a crash or a reader never sees a
  half-written pool;
* bytes after a string's NUL are zero, not stale bytes of an older value.

Text is decoded and encoded with ``surrogateescape``: a pool holding bytes
that are not UTF-8 (written by some other tool) still round-trips unchanged.

Locking: a POSIX ``fcntl`` write lock over the whole file (``F_SETLKW``), the
lock the C daemon takes.  Because the rename gives the path a new inode, a
locker checks after acquiring that its descriptor is still the file at the
path, and otherwise reopens and tries again.  POSIX locks belong to the
process, not the descriptor or thread, so threads of one process are
serialised by an in-process lock as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
from collections.abc import Iterator
from enum import IntEnum
from pathlib import Path

from vmis.errors import KvpFormatError, KvpSizeError

__all__ = [
    "DEFAULT_DIRECTORY",
    "KEY_SIZE",
    "RECORD_SIZE",
    "VALUE_SIZE",
    "KvpPool",
    "KvpPools",
    "Pool",
    "decode_record",
    "encode_record",
    "pool_path",
]

#: Size of the key field of a record, NUL included (HV_KVP_EXCHANGE_MAX_KEY_SIZE).
KEY_SIZE = 512
#: Size of the value field of a record, NUL included (HV_KVP_EXCHANGE_MAX_VALUE_SIZE).
VALUE_SIZE = 2048
#: Size of one record in a pool file.
RECORD_SIZE = KEY_SIZE + VALUE_SIZE
#: Where the Linux daemon keeps its pools (created 0755 when missing).
DEFAULT_DIRECTORY = Path("/var/lib/hyperv")

_ENCODING = "utf-8"
_ERRORS = "surrogateescape"


class Pool(IntEnum):
    """The five KVP pools, numbered as the kernel's ``hv_kvp_exchg_pool``."""

    #: Pushed by the host administrator; registry ``External``.
    EXTERNAL = 0
    #: Written by guest software for the host to read; registry ``Guest``.
    GUEST = 1
    #: Intrinsic guest facts; the Linux daemon synthesises them, the file is unused.
    AUTO = 2
    #: Host facts such as HostName; registry ``Guest\\Parameters``.
    AUTO_EXTERNAL = 3
    #: Undocumented; kept for completeness.
    AUTO_INTERNAL = 4


# Section: record codec


def _encode_field(text: str, field: str, limit: int) -> bytes:
    try:
        raw = text.encode(_ENCODING, _ERRORS)
    except UnicodeEncodeError as exc:
        # A lone surrogate outside surrogateescape's range (U+DC80..U+DCFF)
        # has no UTF-8 form; JSON text from a peer can carry one ("\ud800").
        raise KvpFormatError(f"KVP {field} is not valid text: {exc.reason} at "
                             f"character {exc.start}") from None
    if b"\0" in raw:
        raise KvpFormatError(f"KVP {field} contains a NUL character")
    if len(raw) + 1 > limit:
        raise KvpSizeError(field, len(raw) + 1, limit)
    return raw


def _field_text(raw: bytes) -> bytes:
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def encode_record(key: str, value: str) -> bytes:
    """Encode one 2560-byte record, NUL-terminated and zero-padded.

    :param key: at most 511 bytes once UTF-8 encoded.
    :param value: at most 2047 bytes once UTF-8 encoded.
    :raise KvpSizeError: When the key or value does not fit its field.
    :raise KvpFormatError: When the key or value contains a NUL character.
    :return: the record bytes.
    """
    k = _encode_field(key, "key", KEY_SIZE)
    v = _encode_field(value, "value", VALUE_SIZE)
    return k.ljust(KEY_SIZE, b"\0") + v.ljust(VALUE_SIZE, b"\0")


def decode_record(raw: bytes) -> tuple[str, str]:
    """Decode one record into its key and value strings (text up to each NUL).

    :param raw: exactly :data:`RECORD_SIZE` bytes.
    :raise KvpFormatError: When ``raw`` is not one record long.
    :return: ``(key, value)``.
    """
    if len(raw) != RECORD_SIZE:
        raise KvpFormatError(f"a KVP record is {RECORD_SIZE} bytes, got {len(raw)}")
    return (
        _field_text(raw[:KEY_SIZE]).decode(_ENCODING, _ERRORS),
        _field_text(raw[KEY_SIZE:]).decode(_ENCODING, _ERRORS),
    )


def _key_bytes(key: str) -> bytes | None:
    # None for text no record can hold: no UTF-8 form, or a NUL (which would
    # match the record whose key ends where the NUL is: "\0" the empty key).
    try:
        raw = key.encode(_ENCODING, _ERRORS)
    except UnicodeEncodeError:
        return None
    return None if b"\0" in raw else raw


def _key_matches(record: bytes, key: bytes) -> bool:
    # The C daemon compares key_size bytes, NUL included: an exact match.
    return record[: len(key) + 1] == key + b"\0"


def pool_path(directory: str | os.PathLike[str], pool: int) -> Path:
    """Return the path of pool ``pool``'s file in ``directory``."""
    return Path(directory) / f".kvp_pool_{int(pool)}"


# Section: locking

# POSIX record locks are owned by the process: a second thread would be
# granted the same lock at once, and closing *any* descriptor of the file
# drops it.  One threading lock per pool path covers that hole.
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    key = os.path.abspath(path)
    with _thread_locks_guard:
        return _thread_locks.setdefault(key, threading.Lock())


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:  # shrank under us: impossible while we hold the lock
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _split(data: bytes) -> list[bytes]:
    count = len(data) // RECORD_SIZE
    return [data[i * RECORD_SIZE : (i + 1) * RECORD_SIZE] for i in range(count)]


class KvpPool:
    """One pool file.  Every call re-reads the file, so changes made by other
    processes (the C daemon, cloud-init, another vmis) are always seen.

    :param directory: the pool directory, :data:`DEFAULT_DIRECTORY` by default.
    :param pool: the pool number.
    """

    def __init__(
        self, directory: str | os.PathLike[str] = DEFAULT_DIRECTORY, pool: int = Pool.GUEST
    ) -> None:
        #: which pool this is
        self.pool = Pool(pool)
        #: the pool file
        self.path = pool_path(directory, self.pool)

    def __repr__(self) -> str:
        return f"KvpPool({str(self.path.parent)!r}, Pool.{self.pool.name})"

    # Section: public interface

    def create(self, mode: int = 0o644) -> None:
        """Create the (empty) pool file if it does not exist, as the daemon does at start.

        :raise OSError: When the directory is missing or not writable.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        os.close(fd)

    def get(self, key: str) -> str | None:
        """Return the value of ``key``, or ``None`` when the pool has no such key."""
        k = _key_bytes(key)
        if k is None:
            return None
        for record in self._records():
            if _key_matches(record, k):
                return decode_record(record)[1]
        return None

    def items(self) -> list[tuple[str, str]]:
        """Return every ``(key, value)`` in file order."""
        return [decode_record(r) for r in self._records()]

    def keys(self) -> list[str]:
        """Return every key in file order."""
        return [k for k, _ in self.items()]

    def enumerate(self, index: int) -> tuple[str, str] | None:
        """Return record ``index`` (0-based, file order), or ``None`` past the end.

        This is the daemon's ENUMERATE: the host walks 0, 1, 2 ... until the
        first miss.
        """
        records = self._records()
        if not 0 <= index < len(records):
            return None
        return decode_record(records[index])

    def __len__(self) -> int:
        return len(self._records())

    def set(self, key: str, value: str) -> None:
        """Add or modify ``key``: an existing record is overwritten in place,
        a new key is appended.

        :raise KvpSizeError: When the key exceeds 511 or the value 2047 UTF-8 bytes.
        :raise KvpFormatError: When the key or value contains a NUL character.
        :raise OSError: When the pool directory is missing or not writable.
        """
        record = encode_record(key, value)
        k = record[: record.index(b"\0")]
        with self._locked(write=True) as fd:
            assert fd is not None
            records = _split(_read_all(fd))
            for i, old in enumerate(records):
                if _key_matches(old, k):
                    records[i] = record
                    break
            else:
                records.append(record)
            self._replace(fd, records)

    def delete(self, key: str) -> bool:
        """Remove ``key``; the following records move up by one.

        :raise OSError: When the pool directory is missing or not writable.
        :return: whether the key was there (the daemon answers HV_S_CONT if not).
        """
        k = _key_bytes(key)
        if k is None:
            return False
        with self._locked(write=True) as fd:
            assert fd is not None
            records = _split(_read_all(fd))
            for i, old in enumerate(records):
                if _key_matches(old, k):
                    del records[i]
                    self._replace(fd, records)
                    return True
            return False

    # Section: internals

    def _records(self) -> list[bytes]:
        with self._locked(write=False) as fd:
            return [] if fd is None else _split(_read_all(fd))

    @contextlib.contextmanager
    def _locked(self, *, write: bool) -> Iterator[int | None]:
        """Hold the pool's lock; yield a descriptor of the current file.

        Readers take a shared lock on a read-only descriptor (so unprivileged
        readers work) and get ``None`` when the file does not exist.
        """
        with _thread_lock(self.path):
            fd = self._open_current(write)
            try:
                yield fd
            finally:
                if fd is not None:
                    os.close(fd)  # releases the fcntl lock

    def _open_current(self, write: bool) -> int | None:
        flags = (os.O_RDWR | os.O_CREAT if write else os.O_RDONLY) | os.O_CLOEXEC
        while True:
            try:
                fd = os.open(self.path, flags, 0o644)
            except FileNotFoundError:
                if write:
                    raise
                return None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
                mine = os.fstat(fd)
                try:
                    now = os.stat(self.path)
                except FileNotFoundError:
                    now = None
            except BaseException:
                os.close(fd)
                raise
            if now is not None and (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
                return fd
            # Another writer renamed a new file over the path while we waited:
            # our lock is on the old inode, which nobody reads any more.
            os.close(fd)

    def _replace(self, fd: int, records: list[bytes]) -> None:
        """Replace the pool file with ``records`` atomically and durably.

        Called with the lock held on ``fd``; the old file's permissions are kept.
        """
        directory = self.path.parent
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        tmp = directory / f"{self.path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            try:
                os.fchmod(out, mode)  # the umask must not narrow the pool's mode
                data = memoryview(b"".join(records))
                while data:
                    data = data[os.write(out, data) :]
                os.fsync(out)
            finally:
                os.close(out)
            os.rename(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class KvpPools:
    """The five pools of one directory.

    :param directory: the pool directory, :data:`DEFAULT_DIRECTORY` by default.
    """

    def __init__(self, directory: str | os.PathLike[str] = DEFAULT_DIRECTORY) -> None:
        #: the pool directory
        self.directory = Path(directory)

    def __getitem__(self, pool: int) -> KvpPool:
        return KvpPool(self.directory, pool)

    def __iter__(self) -> Iterator[KvpPool]:
        return (KvpPool(self.directory, p) for p in Pool)

    def create(self) -> None:
        """Create the directory (0755) and all five pool files (0644) if missing,
        as the C daemon does at start.

        :raise OSError: When they cannot be created.
        """
        self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        for pool in self:
            pool.create()
