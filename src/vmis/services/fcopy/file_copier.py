"""One file copied either way between this machine and a guest: the host's end of the stream.

docs/services/fcopy.md §3.2-3.4 and §4. :class:`FileCopier` copies single
files through any *requester* that sends one fcopy request and returns its
answer (the host manager passes ``VmSession.request``): into the guest a PUT,
or OPEN_WRITE, WRITE..., COMMIT; out of it OPEN_READ, READ..., CLOSE; both
resuming a partial file where a copy stopped. :class:`~.engine.CopyEngine`
builds Copy-VMFile's files and trees on it. It has no host-only dependency.

Throughput (§3.3): the file is read one chunk ahead of the sender in one
worker thread and hashed in another, up to :data:`WINDOW` data requests
are in flight, and each frame carries up to :data:`CHUNK_SIZE` bytes of
data that are never copied to be framed. Receiving from the guest is the
mirror image: READ requests are kept in flight and two worker threads write
and hash the answers in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import mmap
import os
import stat
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vmis.errors import LocalFileError, ServiceError, VmisError
from vmis.protocol import (
    Payload,
    Received,
    decode_json,
    decode_json_raw,
    encode_json,
    encode_json_raw,
)
from vmis.services.fcopy import CHUNK_SIZE, DATA_TIMEOUT, HEAD_ROOM, WINDOW, FcopyOp, resume_token
from vmis.services.fcopy.direct_io import PageBuffers
from vmis.services.fcopy.partials import PartialIndex
from vmis.services.fcopy.paths import RootedPaths, check_name, shown
from vmis.services.fcopy.reader import Reader
from vmis.services.fcopy.receiver import Receiver

__all__ = ["CopyProgress", "FileCopier", "Requester"]

_log = logging.getLogger("vmis.host.fcopy")

#: seconds for a request that does no bulk work
_SHORT_TIMEOUT = 30.0


class Requester(Protocol):
    """Sends one fcopy request and returns the answer's payload (received into
    *into* when it is large: Link.request)."""

    def __call__(self, op: int, payload: Payload, timeout: float | None,
                 into: memoryview | None = None) -> Awaitable[Received]: ...


@dataclass
class CopyProgress:
    """Where a copy stands; handed to the progress callback after each chunk."""

    bytes_total: int = 0
    bytes_done: int = 0
    files_total: int = 0
    files_done: int = 0
    #: the file being copied
    current: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"bytes": self.bytes_done, "total": self.bytes_total,
                "files": self.files_done, "files_total": self.files_total,
                "file": self.current}


@dataclass
class _Stats:
    sent: int = 0
    resumed: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)
    directories: int = 0
    #: (path, why) of what a tree copy left out
    skipped: list[tuple[str, str]] = field(default_factory=list)


class FileCopier:
    """Copies single files between this machine and one guest (docs/services/fcopy.md §3.2).

    :param request: sends one fcopy request (service 6) and returns the answer.
    :param peer_max_payload: the guest's receive limit (docs/protocol.md §2.4).
    :param own_max_payload: this side's receive limit.
    :param progress: called with the running :class:`CopyProgress`.
    :param chunk_size: data bytes per frame (capped by the limits above).
    :param window: data requests in flight per file.
    :param owner: this copy's id: the guest's handles of it carry it (1.1).
    :param index: notes host directories that get partial files (copies out of the guest).
    """

    def __init__(self, request: Requester, *, peer_max_payload: int, own_max_payload: int,
                 progress: Callable[[CopyProgress], None] | None = None,
                 chunk_size: int = CHUNK_SIZE, window: int = WINDOW, owner: str = "",
                 index: PartialIndex | None = None) -> None:
        self._request = request
        self.owner = owner
        self._index = index
        self.send_chunk = max(1, min(chunk_size, peer_max_payload - HEAD_ROOM))
        self.recv_chunk = max(1, min(chunk_size, own_max_payload - HEAD_ROOM))
        self.window = max(1, window)
        self.progress = CopyProgress()
        self._on_progress = progress
        self._stats = _Stats()
        self._pool: ThreadPoolExecutor | None = None
        self._local = RootedPaths(Path("/"), ["/"])

    # Section: plumbing

    async def _call(self, op: FcopyOp, payload: Payload, timeout: float | None) -> Received:
        return await self._request(op, payload, timeout)

    async def _json(self, op: FcopyOp, body: dict[str, Any],
                    timeout: float = _SHORT_TIMEOUT) -> dict[str, Any]:
        return decode_json(await self._call(op, encode_json(body), timeout))

    @property
    def _worker(self) -> ThreadPoolExecutor:
        """The copy's own thread (made when first needed): its file work, in order."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="fcopy-host")
        return self._pool

    async def _in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(self._worker.submit(fn, *args))

    def _after_worker(self, fn: Callable[..., Any], *args: Any) -> None:
        """Tidy up once the worker's queued work is done (now, if there is no worker)."""
        if self._pool is None:
            fn(*args)
        else:
            self._pool.submit(fn, *args)

    def _advance(self, n: int) -> None:
        self.progress.bytes_done += n
        if self._on_progress is not None:
            self._on_progress(self.progress)

    def _file_done(self, item: dict[str, Any]) -> None:
        self._stats.items.append(item)
        self._files_done(1)

    def _files_done(self, count: int) -> None:
        self.progress.files_done += count
        if self._on_progress is not None:
            self._on_progress(self.progress)

    async def _best_effort(self, op: FcopyOp, body: dict[str, Any]) -> None:
        # Tidy-up after a failure: the guest may be gone, the caller cancelled.
        with contextlib.suppress(VmisError, OSError, asyncio.CancelledError):
            await asyncio.shield(self._json(op, body, timeout=5))

    # Section: host to guest

    async def _file_to_guest(self, source: Path, destination: str, name: str, *, exact: bool,
                             create: bool, force: bool) -> dict[str, Any]:
        try:
            fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise LocalFileError(f"cannot read {shown(str(source))}: {exc.strerror}") from exc
        return await self._send_file(fd, str(source), f"{destination}\0{name}", {
            "path": destination, "name": name, "force": force, "create_path": create,
            "exact": exact})

    async def _send_file(self, fd: int, source: str, target: str,
                         where: dict[str, Any]) -> dict[str, Any]:
        """Send the open file *fd* (taken over) to the guest destination *where* names.

        :param target: the destination, as the resume token names it.
        :param where: OPEN_WRITE's fields for the destination: a path and a
            name, or (1.1) a tree and a path in it.
        """
        reader = Reader(fd, source)
        self.progress.current = reader.display
        try:
            token = resume_token("to-guest", source, reader.size, reader.st.st_mtime_ns, target)
            meta = {**where, "size": reader.size, "mode": stat.S_IMODE(reader.st.st_mode),
                    "atime_ns": reader.st.st_atime_ns, "mtime_ns": reader.st.st_mtime_ns,
                    "token": token, "owner": self.owner}
            if reader.size <= self.send_chunk and "tree" not in where:
                return await self._put(reader, meta)
            return await self._stream_to_guest(reader, meta)
        finally:
            self._after_worker(reader.close)

    async def _put(self, reader: Reader, meta: dict[str, Any]) -> dict[str, Any]:
        def whole() -> tuple[bytes, str]:
            reader.claim(0, reader.size)
            data = reader.read(0, reader.size)
            return data, reader.finish()

        # A small file is read in the loop's shared threads: a copy of its own
        # thread costs more than the read (a thread start, about a millisecond).
        data, digest = await asyncio.to_thread(whole)
        answer = decode_json(await self._call(
            FcopyOp.PUT, encode_json_raw({**meta, "sha256": digest}, data), DATA_TIMEOUT))
        self._check_digest(answer, digest, reader.display)
        self._stats.sent += len(data)
        self._advance(len(data))
        item = {"Path": shown(answer["path"]), "Bytes": reader.size, "Sha256": digest}
        self._file_done(item)
        return item

    async def _stream_to_guest(self, reader: Reader, meta: dict[str, Any]) -> dict[str, Any]:
        opened = await self._json(FcopyOp.OPEN_WRITE, {**meta, "resume": True}, DATA_TIMEOUT)
        handle, offset = int(opened["handle"]), int(opened["offset"])
        if offset:
            mine = await self._in_worker(reader.seek, offset)
            if mine != opened.get("prefix_sha256"):
                # The guest's partial data is not a prefix of this source.
                _log.info("%s: partial data in the guest differs; starting over", reader.display)
                await self._json(FcopyOp.ABORT, {"handle": handle, "keep": False})
                opened = await self._json(FcopyOp.OPEN_WRITE, {**meta, "resume": False},
                                          DATA_TIMEOUT)
                handle, offset = int(opened["handle"]), 0
                await self._in_worker(reader.seek, 0)
            else:
                _log.info("%s: resuming at byte %d", reader.display, offset)
                self._stats.resumed += offset
                self._advance(offset)
        pending: deque[asyncio.Task[Received]] = deque()
        nxt: asyncio.Future[bytes] | None = None
        try:
            pos = offset
            nxt = self._read_ahead(reader, pos)
            while nxt is not None:
                data = await nxt
                at = pos
                pos += len(data)
                nxt = self._read_ahead(reader, pos)
                while len(pending) >= self.window:
                    await pending.popleft()
                pending.append(asyncio.ensure_future(self._call(
                    FcopyOp.WRITE, encode_json_raw({"handle": handle, "offset": at}, data),
                    DATA_TIMEOUT)))
                self._stats.sent += len(data)
                self._advance(len(data))
            while pending:
                await pending.popleft()
            digest = await self._in_worker(reader.finish)
            answer = await self._json(FcopyOp.COMMIT, {"handle": handle, "sha256": digest},
                                      DATA_TIMEOUT)
        except BaseException as exc:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, *([nxt] if nxt else []), return_exceptions=True)
            keep = not isinstance(exc, ServiceError)  # a verify failure is not resumable
            await self._best_effort(FcopyOp.ABORT, {"handle": handle, "keep": keep})
            raise
        self._check_digest(answer, digest, reader.display)
        item = {"Path": shown(answer["path"]), "Bytes": reader.size, "Sha256": digest,
                "Resumed": offset}
        self._file_done(item)
        return item

    def _read_ahead(self, reader: Reader, pos: int) -> asyncio.Future[bytes] | None:
        if pos >= reader.size:
            return None
        n = reader.claim(pos, self.send_chunk)
        return asyncio.wrap_future(reader.submit(pos, n))

    @staticmethod
    def _check_digest(answer: dict[str, Any], digest: str, what: str) -> None:
        if answer.get("sha256") != digest:
            # the copy's own check on this side, as the receiver's digest check
            raise ServiceError("failed", f"{what}: the guest reports SHA-256 "
                                         f"{answer.get('sha256')}, the host {digest}")

    # Section: guest to host

    async def _open_guest_file(self, source: str, probe: bool = False
                               ) -> tuple[dict[str, Any], memoryview]:
        """OPEN_READ: the file's facts and, if it is small, its bytes.

        :param probe: (1.1) a directory answers ``type: dir`` instead of failing.
        """
        raw = await self._call(FcopyOp.OPEN_READ, encode_json(
            {"path": source, "inline_max": self.recv_chunk, "owner": self.owner,
             "probe": probe}), DATA_TIMEOUT)
        return decode_json_raw(raw)

    async def _file_from_guest(self, source: str, destination: str, *, exact: bool,
                               create: bool, force: bool) -> dict[str, Any]:
        info, inline = await self._open_guest_file(source)
        return await self._file_from_opened(info, inline, destination, exact=exact,
                                            create=create, force=force)

    async def _file_from_opened(self, info: dict[str, Any], inline: memoryview,
                                destination: str, *, exact: bool, create: bool,
                                force: bool) -> dict[str, Any]:
        """Receive a guest file OPEN_READ opened (*info*, and *inline* if it is small)."""
        source = str(info["path"])
        self.progress.current = shown(source)
        handle = int(info.get("handle", 0))
        try:
            target = self._local.destination(destination, check_name(source.rsplit("/", 1)[-1]),
                                             create=create, exact=exact, force=force,
                                             what="copying to the host")
        except BaseException:
            if handle:
                await self._best_effort(FcopyOp.ABORT, {"handle": handle})
            raise
        assert target.name is not None
        # Indexed when it can be resumed: a small file comes in one answer.
        receiver = self._receiver(info, target.dir_fd, target.name, target.path, force=force,
                                  index=self._index if handle else None)
        target.dir_fd = -1
        if not handle:
            return await self._receive_inline(receiver, bytes(inline), str(info["sha256"]))
        return await self._stream_from_guest(receiver, handle)

    @staticmethod
    def _receiver(info: dict[str, Any], dir_fd: int, name: str, path: str, *, force: bool,
                  index: PartialIndex | None) -> Receiver:
        """A receiver on this machine of the guest file OPEN_READ described."""
        size = int(info["size"])
        token = resume_token("from-guest", str(info["path"]), size, int(info["mtime_ns"]), path)
        return Receiver(dir_fd, name, path, token, size, mode=int(info["mode"]),
                        atime_ns=int(info["atime_ns"]), mtime_ns=int(info["mtime_ns"]),
                        force=force, index=index, direct=True)

    async def _receive_inline(self, receiver: Receiver, data: bytes,
                              digest: str) -> dict[str, Any]:
        def whole() -> str:
            try:
                receiver.open(resume=False)
                receiver.claim(0, len(data))
                receiver.write(0, data)
                return receiver.commit(digest)
            finally:
                receiver.close(keep=False)

        mine = await asyncio.to_thread(whole)
        self._stats.sent += len(data)
        self._advance(len(data))
        item = {"Path": receiver.display, "Bytes": len(data), "Sha256": mine}
        self._file_done(item)
        return item

    async def _stream_from_guest(self, receiver: Receiver, handle: int,
                                 adopt: Callable[[Receiver], None] | None = None
                                 ) -> dict[str, Any]:
        """Receive the open guest file *handle* into *receiver*.

        :param adopt: for a file of a tree: takes the verified partial file
            (then left unplaced) instead of it being moved into place.
        """
        reads: deque[tuple[int, mmap.mmap | None, asyncio.Task[Received]]] = deque()
        writes: deque[asyncio.Future[Any]] = deque()
        # Only buffers given back (their chunk written and hashed) are reused,
        # here or, once this file closes, by the next (direct_io.SPARES): one a
        # cancelled READ may still be receiving into never is.
        buffers = PageBuffers(self.recv_chunk)
        closed: asyncio.Future[dict[str, Any]] | None = None
        keep = True
        failed = False
        try:
            offset, mine = await self._in_worker(receiver.open, True)
            if offset:
                theirs = (await self._json(FcopyOp.SEEK, {"handle": handle, "offset": offset},
                                           DATA_TIMEOUT))["prefix_sha256"]
                if theirs != mine:
                    _log.info("%s: partial data differs from the guest's file; starting over",
                              receiver.display)
                    await self._in_worker(receiver.restart)
                    await self._json(FcopyOp.SEEK, {"handle": handle, "offset": 0})
                    offset = 0
                else:
                    self._stats.resumed += offset
                    self._advance(offset)
            asked = offset
            while asked < receiver.size or reads:
                while asked < receiver.size and len(reads) < self.window:
                    n = min(self.recv_chunk, receiver.size - asked)
                    # a whole chunk only: a file's short tail would fault in a
                    # new buffer of a whole chunk for a few bytes
                    buffer = buffers.take() if n == self.recv_chunk else None
                    reads.append((asked, buffer, asyncio.ensure_future(self._request(
                        FcopyOp.READ, encode_json({"handle": handle, "offset": asked,
                                                   "length": n}), DATA_TIMEOUT,
                        None if buffer is None else memoryview(buffer)))))
                    asked += n
                at, buffer, task = reads.popleft()
                data = await task
                receiver.claim(at, len(data))
                # received into the buffer (a link may answer in its own)
                mine = buffer is not None and isinstance(data, memoryview) and data.obj is buffer
                written = receiver.submit(at, data, aligned=mine)
                if buffer is not None:
                    written.add_done_callback(functools.partial(_give_back, buffers, buffer))
                writes.append(asyncio.wrap_future(written))
                while len(writes) > self.window or (writes and writes[0].done()):
                    await writes.popleft()
                self._stats.sent += len(data)
                self._advance(len(data))
            # Every byte is here: the guest finishes its hash while the last
            # chunks are written and hashed here, not after.
            closed = asyncio.ensure_future(self._json(FcopyOp.CLOSE, {"handle": handle},
                                                      DATA_TIMEOUT))
            while writes:
                await writes.popleft()
            theirs = (await closed)["sha256"]
            handle = 0
            keep = False
            digest = await self._in_worker(_finish, receiver, str(theirs), adopt)
        except BaseException as exc:
            for _, _, task in reads:
                task.cancel()
            await asyncio.gather(*(t for _, _, t in reads), *writes, return_exceptions=True)
            if closed is not None and handle:
                # a handle the guest closed needs no ABORT; one it did not, or may
                # not have (no answer in 5 s), gets one
                with contextlib.suppress(BaseException):
                    await asyncio.wait({closed}, timeout=5)
                if closed.done() and not closed.cancelled() and closed.exception() is None:
                    handle = 0
                closed.cancel()
            if handle:
                await self._best_effort(FcopyOp.ABORT, {"handle": handle})
            keep = keep and not isinstance(exc, ServiceError)
            failed = True
            raise
        finally:
            # Awaited: once the copy has failed, its partial file is gone (or
            # checkpointed for a resume) before anyone hears of the failure.
            # Shielded: a cancellation does not stop the close.
            closing = asyncio.shield(asyncio.wrap_future(self._worker.submit(receiver.close, keep)))
            closing.add_done_callback(lambda _: buffers.close())
            try:
                await closing
            except Exception as err:
                if not failed:
                    raise
                # the copy's own failure is the one to report
                _log.warning("%s: cleaning up after a failed copy: %s", receiver.display, err)
        item = {"Path": receiver.display, "Bytes": receiver.size, "Sha256": digest,
                "Resumed": receiver.resumed}
        self._file_done(item)
        return item


def _give_back(buffers: PageBuffers, buffer: mmap.mmap, _: object) -> None:
    buffers.give(buffer)


def _finish(receiver: Receiver, sha256: str, adopt: Callable[[Receiver], None] | None) -> str:
    digest = receiver.commit(sha256, place=adopt is None)
    if adopt is not None:
        adopt(receiver)
    return digest
