"""One incoming file, written beside its destination and moved into place once verified.

:class:`Receiver` writes one file (docs/services/fcopy.md §3-4): a partial
file next to the destination, a running SHA-256, resume checkpoints, and
the final verify, fsync and rename. Both ends use it: the guest service
for copies into the guest, the host's engine for copies out of it.

Everything here blocks (disk I/O, hashing, fsync); the async callers run it
in worker threads, where hashlib and os.pwrite release the GIL.

Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from vmis.errors import ServiceError
from vmis.services.fcopy import CHECKPOINT_BYTES
from vmis.services.fcopy.claims import CLAIMS, Claim
from vmis.services.fcopy.direct_io import DirectWriter
from vmis.services.fcopy.file_io import HASH_BLOCK, nothing, os_error, place_file
from vmis.services.fcopy.metadata import check_times, file_mode, set_times
from vmis.services.fcopy.partials import PART_SUFFIX, RESUME_SUFFIX, PartialIndex, part_names
from vmis.services.fcopy.paths import check_token, shown

__all__ = ["PART_SUFFIX", "Receiver", "part_names"]

#: a receiver starts writing its data to disk every this many bytes
_FLUSH_BYTES = 32 * 1024 * 1024
_RECORD_VERSION = 1


class Receiver:
    """One file being received into ``dir_fd``/``name`` (docs/services/fcopy.md §3-4).

    The data goes to a partial file beside the destination, named after the
    copy's resume token, created 0600. Every :data:`CHECKPOINT_BYTES` a
    resume record beside it notes how many bytes were written and the
    SHA-256 of those bytes. :meth:`commit` compares the whole file's hash
    with the sender's, fsyncs, sets mode and times and renames the partial
    file over the destination: the destination never holds a partial file.

    The destination is claimed (:mod:`.claims`) from :meth:`open` until the
    file is in place or given up, so no other copy of this process writes it
    meanwhile.

    :param dir_fd: the destination directory; the receiver takes ownership.
    :param name: the destination's name in it.
    :param path: the destination's path (answers; :attr:`display` for messages).
    :param token: the copy's resume token.
    :param size: the file's size, announced by the sender.
    :param gate: waited on before every write (the guest's thaw event), or None.
    :param index: where to note the partial file, so that it is cleaned up
        if never resumed (None: a tree's index entry covers it).
    :param direct: write streamed data past the page cache where the
        filesystem allows (:mod:`.direct_io`): the host's copies out of
        guests, which would otherwise take the page cache the guests'
        memory competes with; a file copied into a guest is often read
        soon after, so the guest writes through its page cache.
    """

    def __init__(self, dir_fd: int, name: str, path: str, token: str, size: int, *,
                 mode: int, atime_ns: int, mtime_ns: int, force: bool,
                 gate: Callable[[], None] | None = None,
                 index: PartialIndex | None = None, direct: bool = False) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.path = path
        self.display = shown(path)
        self._index = index
        self.held: Claim | None = None
        self.token = check_token(token)  # it names the partial file
        self.size = size
        self.mode = file_mode(mode)
        check_times(atime_ns, mtime_ns)  # refused now, not after the whole file came
        self.atime_ns = atime_ns
        self.mtime_ns = mtime_ns
        self.force = force
        self._gate = gate
        self.part, self.record = part_names(name, token)
        self.fd = -1
        self._hash = hashlib.sha256()
        #: bytes written, in order, from offset 0
        self.written = 0
        #: the offset the next write must start at (claimed ahead of the worker)
        self.expected = 0
        #: bytes found already written when the copy resumed
        self.resumed = 0
        self._checkpointed = 0
        self._lock = threading.RLock()
        #: a write failed: the hash may be ahead of the data, never checkpoint again
        self._broken = False
        self._io: ThreadPoolExecutor | None = None
        self._hasher: ThreadPoolExecutor | None = None
        self._flusher: ThreadPoolExecutor | None = None
        self._flushing: Future[None] | None = None
        self._flushed = 0
        #: a streamed file's writes go past the page cache while they can
        self._direct = DirectWriter() if direct else None

    # Section: opening

    def open(self, resume: bool) -> tuple[int, str]:
        """Open the partial file, resuming from its last checkpoint if asked and possible.

        The bytes a checkpoint vouches for are hashed again from the disk
        and must match the checkpoint's hash; anything after it is cut off.

        :return: ``(offset, SHA-256 of the bytes before it)``: the sender
            must find the same hash for its first ``offset`` bytes.
        """
        try:
            self.held = CLAIMS.take(CLAIMS.key(self.dir_fd, self.name), self.display)
            if self._index is not None:
                self._index.hold(self.token)
            if resume and self._try_resume():
                return self.written, self._hash.copy().hexdigest()
            self._create()
        except ServiceError:
            self._close_dir()
            raise
        except OSError as exc:
            self.close(keep=False)
            raise os_error(exc, f"cannot create a file in the directory of {self.display}") \
                from exc
        return 0, self._hash.copy().hexdigest()

    def _try_resume(self) -> bool:
        try:
            record = json.loads(self._read_record())
            fd = os.open(self.part, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except (OSError, ValueError):
            return False
        st = os.fstat(fd)
        verified = record.get("verified") if isinstance(record, dict) else None
        if (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid()
                or st.st_mode & 0o077 or record.get("v") != _RECORD_VERSION
                or record.get("token") != self.token or record.get("size") != self.size
                or not isinstance(verified, int) or not 0 <= verified <= min(st.st_size,
                                                                              self.size)):
            os.close(fd)
            return False
        h = hashlib.sha256()
        pos = 0
        while pos < verified:
            block = os.pread(fd, min(HASH_BLOCK, verified - pos), pos)
            if not block:
                break
            h.update(block)
            pos += len(block)
        if pos != verified or h.hexdigest() != record.get("sha256"):
            os.close(fd)
            return False
        os.ftruncate(fd, verified)
        self.fd = fd
        self._hash = h
        self.written = self.expected = self.resumed = self._checkpointed = verified
        return True

    def restart(self) -> None:
        """Drop what a resume found (the sender's prefix differs) and start from 0."""
        self._drain()
        with self._lock:
            if self.fd < 0:
                raise ServiceError("failed", "the copy was closed")
            os.ftruncate(self.fd, 0)
            self._remove_parts(self.record)
            self._hash = hashlib.sha256()
            self.written = self.expected = self.resumed = self._checkpointed = 0

    def _read_record(self) -> bytes:
        fd = os.open(self.record, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)
        try:
            return os.read(fd, 65536)
        finally:
            os.close(fd)

    def _create(self) -> None:
        self._remove_parts(self.part, self.record)
        self._remove_stale()
        if self._index is not None:
            self._index.add(self._directory(), self.token)
        self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600, dir_fd=self.dir_fd)
        self._hash = hashlib.sha256()
        self.written = self.expected = self.resumed = self._checkpointed = 0

    def _directory(self) -> str:
        return self.path.rsplit("/", 1)[0] or "/"

    def _unindex(self) -> None:
        if self._index is not None:
            self._index.remove(self._directory(), self.token)

    def _remove_parts(self, *names: str) -> None:
        for n in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(n, dir_fd=self.dir_fd)

    def _remove_stale(self) -> None:
        # Partial files of earlier copies to this destination whose source has
        # changed since (another token): they can never be resumed.
        keep = self.part[: -len(PART_SUFFIX) - 17]
        truncated = keep[1:] != self.name
        pattern = re.compile(re.escape(keep) + r"\.([0-9a-f]{16})(" + re.escape(PART_SUFFIX)
                             + "|" + re.escape(RESUME_SUFFIX) + ")$")
        for entry in os.listdir(self.dir_fd):
            match = pattern.match(entry)
            if match is None or match.group(1) == self.token[:16]:
                continue
            if truncated and not self._names_us(keep + "." + match.group(1) + RESUME_SUFFIX):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry, dir_fd=self.dir_fd)

    def _names_us(self, record: str) -> bool:
        try:
            fd = os.open(record, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)
            try:
                body = json.loads(os.read(fd, 65536))
            finally:
                os.close(fd)
        except (OSError, ValueError):
            return False
        return isinstance(body, dict) and body.get("name") == self.name

    # Section: writing

    def claim(self, offset: int, length: int) -> None:
        """Check that a write continues where the last one ended, and reserve it.

        Called in arrival order, before the write is queued.

        :raise ServiceError: ``bad-request`` for a gap, an overlap or a write
            past the announced size.
        """
        if offset != self.expected:
            raise ServiceError("bad-request",
                               f"write at offset {offset}, expected {self.expected}")
        if offset + length > self.size:
            raise ServiceError("bad-request", f"write past the announced size {self.size}")
        self.expected = offset + length

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write and hash claimed data now, in the calling thread (small files)."""
        self._pwrite(offset, data)
        self._hash.update(data)
        self._advance(offset + len(data))

    def submit(self, offset: int, data: bytes | bytearray | memoryview,
               aligned: bool = False) -> Future[None]:
        """Queue claimed data: one thread writes it while another hashes it.

        Writing and hashing each keep the offset order; the future is done
        when both are, so an answer sent then vouches for the data on disk
        and in the hash, and *data* is no longer used.

        :param aligned: *data* starts at a page boundary (DirectWriter.write).
        """
        if self._io is None or self._hasher is None:
            self._io = ThreadPoolExecutor(1, thread_name_prefix="fcopy-write")
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="fcopy-hash")
            self._flusher = ThreadPoolExecutor(1, thread_name_prefix="fcopy-sync")
        written = self._io.submit(self._pwrite, offset, data, self._direct, aligned)
        return self._hasher.submit(self._digest, offset, data, written)

    def _pwrite(self, offset: int, data: bytes | bytearray | memoryview,
                direct: DirectWriter | None = None, aligned: bool = False) -> None:
        if self._gate is not None:
            self._gate()
        view = memoryview(data)
        if self.fd < 0:
            raise ServiceError("failed", "the copy was closed")
        try:
            pos = direct.write(self.fd, view, offset, aligned) if direct is not None else 0
            while pos < len(view):
                pos += os.pwrite(self.fd, view[pos:], offset + pos)
        except OSError as exc:
            raise os_error(exc, f"writing {self.display}") from exc

    def _digest(self, offset: int, data: bytes | bytearray | memoryview,
                written: Future[None]) -> None:
        self._hash.update(data)
        try:
            written.result()
        except BaseException:
            self._broken = True
            raise
        self._advance(offset + len(data))

    def _advance(self, end: int) -> None:
        with self._lock:
            self.written = end
            if self.written - self._checkpointed >= CHECKPOINT_BYTES and not self._broken:
                # The hash thread sets the pace of a copy: it only snapshots
                # the state here, the record's file I/O goes to the flusher
                # (in order, and drained before close or commit).
                self._checkpointed = self.written
                state = self._hash.copy()
                if self._flusher is not None:
                    self._flusher.submit(self._write_record, self.written, state)
                else:
                    self._write_record(self.written, state)
            if (self._flusher is not None and self.written - self._flushed >= _FLUSH_BYTES
                    and (self._flushing is None or self._flushing.done())
                    and not (self._direct is not None and self._direct.on)):
                # Start the disk writing now, alongside the copy, instead of
                # leaving a whole file of dirty pages to the fsync of commit().
                self._flushed = self.written
                self._flushing = self._flusher.submit(self._flush)

    def _flush(self) -> None:
        if self._gate is not None:
            self._gate()
        with contextlib.suppress(OSError):
            os.fdatasync(self.fd)

    def _drain(self) -> None:
        # Hash tasks wait for their writes: once the hasher is idle, so is the
        # writer; then the flusher's flushes and records queued meanwhile.
        if self._hasher is not None:
            self._hasher.submit(nothing).result()
        if self._flusher is not None:
            self._flusher.submit(nothing).result()
        if self._flushing is not None:
            self._flushing.result()

    def _stop_workers(self) -> None:
        for pool in (self._io, self._hasher, self._flusher):
            if pool is not None:
                pool.shutdown(wait=False)
        self._io = self._hasher = self._flusher = None
        if self._direct is not None:
            self._direct.release()  # its descriptor's flags go with the descriptor

    def _checkpoint(self) -> None:
        """Record the bytes written so far, now (a clean stop)."""
        if self._write_record(self.written, self._hash.copy()):
            self._checkpointed = self.written

    def _write_record(self, verified: int, state: Any) -> bool:
        # Not fsynced: after a crash the record may be ahead of the data on
        # disk, and then the prefix hash on resume fails and the copy starts
        # over. The record is only ever trusted after that hash matches.
        record = json.dumps({"v": _RECORD_VERSION, "token": self.token, "name": self.name,
                             "size": self.size, "verified": verified,
                             "sha256": state.hexdigest()}).encode()
        tmp = self.record + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=self.dir_fd)
            try:
                os.write(fd, record)
            finally:
                os.close(fd)
            os.rename(tmp, self.record, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except OSError:
            return False  # resuming is a convenience; the copy itself goes on
        return True

    # Section: finishing

    def commit(self, sha256: str, place: bool = True) -> str:
        """Verify the whole file against the sender's hash, then move it into place.

        :param place: False for a file of a tree copy: verified and complete,
            but left as the partial file (its record saying so, its claim
            kept in :attr:`held`) for the tree to make durable and place with
            the others (:class:`~.tree_writer.TreeWriter`).
        :return: the file's SHA-256.
        :raise ServiceError: ``failed`` for a short file or a hash mismatch
            (the partial file is deleted: it can never become right),
            ``exists`` when the destination appeared meanwhile and -Force
            was not given.
        """
        self._drain()
        if self._gate is not None:
            self._gate()
        with self._lock:
            if self.fd < 0:
                raise ServiceError("failed", "the copy was closed")
            if self._broken:
                raise ServiceError("failed", f"{self.display}: a write failed")
            if self.written != self.size:
                raise ServiceError("failed", f"{self.display}: received {self.written} of "
                                             f"{self.size} bytes")
            digest = self._hash.hexdigest()
            if digest != sha256:
                self.close(keep=False)
                raise ServiceError("failed", f"{self.display}: SHA-256 mismatch (sent {sha256}, "
                                             f"received {digest}); nothing was written")
            try:
                os.fchmod(self.fd, self.mode)
                set_times(self.fd, self.atime_ns, self.mtime_ns)
                if place:
                    os.fsync(self.fd)
                    place_file(self.dir_fd, self.part, self.name, self.force, self.display)
                    os.fsync(self.dir_fd)
                else:
                    self._write_record(self.size, self._hash)
            except OSError as exc:
                raise os_error(exc, f"cannot finish {self.display}") from exc
            os.close(self.fd)
            self.fd = -1
            if place:
                self._remove_parts(self.record, self.record + ".tmp")
                self._unindex()
                self._let_go()
            self._close_dir()
            self._stop_workers()
            return digest

    def close(self, keep: bool) -> None:
        """Give the copy up: keep the partial file for a resume, or delete it.

        Kept, the resume record is brought up to date first, so a rerun
        resumes from the last byte written. Waits for queued writes.
        """
        with contextlib.suppress(BaseException):
            self._drain()
        self._stop_workers()
        with self._lock:
            if self.fd >= 0:
                if keep and self.written > self._checkpointed and not self._broken:
                    self._checkpoint()
                os.close(self.fd)
                self.fd = -1
                if not keep:
                    self._remove_parts(self.part, self.record, self.record + ".tmp")
                    self._unindex()
            self._let_go()
            self._close_dir()

    def _let_go(self) -> None:
        """Give the destination's claim back (and let the sweep see the partial file)."""
        if self.held is not None:
            CLAIMS.release(self.held)
            self.held = None
            if self._index is not None:
                self._index.release(self.token)

    def _close_dir(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1
