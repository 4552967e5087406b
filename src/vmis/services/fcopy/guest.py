"""Guest half of the Guest Service Interface: the file copy operations.

docs/services/fcopy.md. The host drives every copy; this service answers its
requests. A copy *into* the guest is OPEN_WRITE, WRITE..., COMMIT (or PUT for
a small file); a copy *out of* it is OPEN_READ, READ..., CLOSE. Each open
copy owns two worker threads, one for its disk I/O and one for hashing,
each in arrival order, so writes and reads never block the agent's event
loop and the hash is computed alongside the I/O, outside the GIL.

Policy (docs/services/fcopy.md §5): every path is resolved inside the
agent's root with :class:`~vmis.services.fcopy.paths.RootedPaths` and must lie
in ``[fcopy] allowed_roots``. While the guest's filesystems are frozen for a
backup, new copies into the guest are refused with ``busy`` and open ones
pause until the thaw (§6).
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from typing import Any, TypeVar

from vmis.errors import ServiceError
from vmis.protocol import (
    RequestReceived,
    decode_json,
    decode_json_raw,
    encode_json,
    encode_json_raw,
)
from vmis.services.catalog import by_key
from vmis.services.fcopy import DEFAULT_ALLOWED_ROOTS, FcopyOp
from vmis.services.fcopy.bulk_memory import BULK_MEMORY
from vmis.services.fcopy.metadata import file_mode, list_dir, set_times, stat_entry
from vmis.services.fcopy.paths import Resolved, RootedPaths, check_name, parse_roots, split_path
from vmis.services.fcopy.reader import Reader
from vmis.services.fcopy.receiver import Receiver
from vmis.services.guest_half import GuestContext, GuestService

__all__ = ["SERVICE", "FcopyService"]

T = TypeVar("T")

#: copies open at once; more is a host bug or abuse, answered ``busy``
MAX_OPEN = 64
_FROZEN = ("the guest's filesystems are frozen for a backup (VSS); "
           "copy into the guest again after the thaw")


# Section: payload fields


def _field(body: dict[str, Any], key: str, kind: type[T], default: Any = ...) -> T:
    value = body.get(key, default)
    if value is ... or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ServiceError("bad-request", f"field {key!r} must be a {kind.__name__}")
    return value


def _count(body: dict[str, Any], key: str, default: Any = ...) -> int:
    value = _field(body, key, int, default)
    if value < 0:
        raise ServiceError("bad-request", f"field {key!r} must not be negative")
    return value


class _Write:
    """An open copy into the guest (its receiver has the worker threads)."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver


class _Read:
    """An open copy out of the guest (its reader has the worker threads)."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader


class FcopyService(GuestService):
    """vmicguestinterface: file copy between host and guest."""

    spec = by_key("fcopy")

    def __init__(self, ctx: GuestContext) -> None:
        super().__init__(ctx)
        self.handlers = {
            FcopyOp.STAT: self._stat,
            FcopyOp.MKDIR: self._mkdir,
            FcopyOp.OPEN_WRITE: self._open_write,
            FcopyOp.WRITE: self._write,
            FcopyOp.COMMIT: self._commit,
            FcopyOp.ABORT: self._abort,
            FcopyOp.PUT: self._put,
            FcopyOp.SETMETA: self._setmeta,
            FcopyOp.OPEN_READ: self._open_read,
            FcopyOp.READ: self._read,
            FcopyOp.SEEK: self._seek,
            FcopyOp.CLOSE: self._close,
            FcopyOp.LIST: self._list,
        }
        self.control_ops = {"fcopy.status": self._status}
        #: set while the filesystems are not frozen; writers wait on it
        self._thawed = threading.Event()
        self._thawed.set()
        self._stopped = threading.Event()
        ctx.freeze_listeners.append(self._on_freeze)
        self._open: dict[int, _Write | _Read] = {}
        self._next_handle = 1
        self.paths = RootedPaths(ctx.root, parse_roots(DEFAULT_ALLOWED_ROOTS))

    # Section: lifecycle

    async def on_start(self) -> None:
        roots = getattr(self.ctx.config, "allowed_roots", DEFAULT_ALLOWED_ROOTS)
        try:
            self.paths = RootedPaths(self.ctx.root, parse_roots(str(roots)))
        except ServiceError as exc:
            raise ServiceError("failed", f"[fcopy] allowed_roots: {exc}") from None
        self._stopped.clear()
        if not self.ctx.frozen:
            self._thawed.set()

    async def on_stop(self) -> None:
        self._stopped.set()
        self._close_all()

    def on_session(self, running: bool) -> None:
        if not running:
            # The host that opened these copies is gone; a rerun resumes them.
            self._close_all()

    def _close_all(self) -> None:
        for handle in list(self._open):
            self._drop(handle, keep=True)

    def _on_freeze(self, frozen: bool) -> None:
        if frozen:
            self._thawed.clear()
        else:
            self._thawed.set()

    def _gate(self) -> None:
        # Worker threads wait here before touching the disk while frozen.
        while not self._thawed.wait(0.2):
            if self._stopped.is_set():
                raise ServiceError("failed", "the Guest Service Interface stopped")

    def _refuse_if_frozen(self) -> None:
        if self.ctx.frozen:
            raise ServiceError("busy", _FROZEN)

    # Section: handles

    def _register(self, item: _Write | _Read) -> int:
        if len(self._open) >= MAX_OPEN:
            raise ServiceError("busy", f"{MAX_OPEN} copies are already open")
        handle = self._next_handle
        self._next_handle = handle % 0x7FFFFFFF + 1
        self._open[handle] = item
        BULK_MEMORY.acquire()
        return handle

    def _forget(self, handle: int) -> _Write | _Read | None:
        item = self._open.pop(handle, None)
        if item is not None:
            BULK_MEMORY.release()
        return item

    def _get(self, body: dict[str, Any], kind: type[T]) -> T:
        item = self._open.get(_count(body, "handle"))
        if not isinstance(item, kind):
            raise ServiceError("bad-request", f"no open copy with handle {body.get('handle')}")
        return item

    def _drop(self, handle: int, keep: bool) -> asyncio.Future[None] | None:
        """Forget a copy; a thread closes it once the work already queued is done."""
        item = self._forget(handle)
        if item is None:
            return None
        loop = asyncio.get_running_loop()
        if isinstance(item, _Write):
            return loop.run_in_executor(None, item.receiver.close, keep)
        return loop.run_in_executor(None, item.reader.close)

    # Section: resolving destinations

    def _destination(self, body: dict[str, Any]) -> Resolved:
        """Where a file sent to the guest goes (Copy-VMFile's rules, docs §3.1)."""
        return self.paths.destination(
            _field(body, "path", str), check_name(body.get("name")),
            create=bool(body.get("create_path", False)), exact=bool(body.get("exact", False)),
            force=bool(body.get("force", False)), what="copying into the guest")

    def _receiver(self, body: dict[str, Any], r: Resolved) -> Receiver:
        """A receiver for a resolved destination; it owns the directory descriptor."""
        try:
            assert r.name is not None
            receiver = Receiver(
                r.dir_fd, r.name, r.path, _field(body, "token", str), _count(body, "size"),
                mode=_count(body, "mode", 0o644), atime_ns=_count(body, "atime_ns", 0),
                mtime_ns=_count(body, "mtime_ns", 0), force=bool(body.get("force", False)),
                gate=self._gate)
        except BaseException:
            r.close()
            raise
        r.dir_fd = -1
        return receiver

    def _busy_token(self, token: str) -> None:
        for item in self._open.values():
            if isinstance(item, _Write) and item.receiver.token == token:
                raise ServiceError("busy", "this copy is already in progress")

    # Section: copies into the guest

    async def _open_write(self, request: RequestReceived) -> bytes:
        self._refuse_if_frozen()
        body = decode_json(request.payload)
        self._busy_token(_field(body, "token", str))
        receiver = self._receiver(body, self._destination(body))
        try:
            offset, prefix = await asyncio.to_thread(receiver.open, bool(body.get("resume")))
            vfs = os.fstatvfs(receiver.dir_fd)
            free = vfs.f_bavail * vfs.f_frsize
            if receiver.size - offset > free:
                raise ServiceError("too-large", f"{receiver.display}: {receiver.size - offset} "
                                                f"bytes to write, {free} free in the guest")
            handle = self._register(_Write(receiver))
        except BaseException:
            receiver.close(keep=True)
            raise
        self.log.info("receiving %s (%d bytes%s)", receiver.display, receiver.size,
                      f", resuming at {offset}" if offset else "")
        return encode_json({"handle": handle, "path": receiver.display, "offset": offset,
                            "prefix_sha256": prefix})

    async def _write(self, request: RequestReceived) -> bytes:
        body, data = decode_json_raw(request.payload)
        item = self._get(body, _Write)
        offset = _count(body, "offset")
        # Claimed now, in arrival order; the workers write and hash in that order.
        item.receiver.claim(offset, len(data))
        await asyncio.wrap_future(item.receiver.submit(offset, data))
        return b""

    async def _commit(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        item = self._get(body, _Write)
        self._forget(_count(body, "handle"))
        receiver = item.receiver
        try:
            digest = await asyncio.to_thread(receiver.commit, _field(body, "sha256", str))
        except BaseException:
            await asyncio.to_thread(receiver.close, False)
            raise
        self.log.info("received %s (%d bytes, sha256 %s)", receiver.display, receiver.size,
                      digest)
        return encode_json({"path": receiver.display, "size": receiver.size, "sha256": digest})

    async def _abort(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        done = self._drop(_count(body, "handle"), keep=bool(body.get("keep", False)))
        if done is not None:
            await done
        return encode_json({})

    async def _put(self, request: RequestReceived) -> bytes:
        self._refuse_if_frozen()
        body, data = decode_json_raw(request.payload)
        sha = _field(body, "sha256", str)
        if _count(body, "size") != len(data):
            raise ServiceError("bad-request", "size differs from the data sent")
        receiver = self._receiver(body, self._destination(body))

        def run() -> str:
            try:
                receiver.open(resume=False)
                receiver.claim(0, len(data))
                receiver.write(0, data)
                return receiver.commit(sha)
            finally:
                receiver.close(keep=False)

        digest = await asyncio.to_thread(run)
        return encode_json({"path": receiver.display, "size": len(data), "sha256": digest})

    async def _mkdir(self, request: RequestReceived) -> bytes:
        self._refuse_if_frozen()
        body = decode_json(request.payload)
        with self.paths.resolve(_field(body, "path", str),
                                create_dirs=bool(body.get("parents", False))) as r:
            self.paths.check(r, "creating a directory")
            if r.st is None and r.name is not None:
                os.mkdir(r.name, 0o755, dir_fd=r.dir_fd)
            elif not (r.name is None or r.is_dir):
                raise ServiceError("exists", f"{r.path} exists and is not a directory")
            return encode_json({"path": r.path})

    async def _setmeta(self, request: RequestReceived) -> bytes:
        self._refuse_if_frozen()
        body = decode_json(request.payload)
        with self.paths.resolve(_field(body, "path", str)) as r:
            self.paths.check(r, "")
            if r.name is not None and r.st is None:
                raise ServiceError("not-found", f"{r.path} does not exist")
            fd = self.paths.open_dir(r) if r.name is None or r.is_dir else os.open(
                r.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                dir_fd=r.dir_fd)
            try:
                os.fchmod(fd, file_mode(_count(body, "mode")))
                set_times(fd, _count(body, "atime_ns"), _count(body, "mtime_ns"))
            finally:
                os.close(fd)
        return encode_json({})

    # Section: copies out of the guest

    async def _stat(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        path = _field(body, "path", str)
        try:
            r = self.paths.resolve(path)
        except ServiceError as exc:
            if exc.code != "not-found":
                raise
            if not self.paths.allowed_path(split_path(path)):
                raise ServiceError("denied", f"{path} is outside the guest's allowed roots") \
                    from None
            return encode_json({"path": path, "type": "none"})
        with r:
            self.paths.check(r, "")
            if r.name is None:
                st = os.fstat(r.dir_fd)
            elif r.st is None:
                return encode_json({"path": r.path, "type": "none"})
            else:
                st = r.st
            return encode_json({"path": r.path, **stat_entry(st)})

    async def _list(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        with self.paths.resolve(_field(body, "path", str)) as r:
            self.paths.check(r, "")
            if not (r.name is None or r.is_dir):
                raise ServiceError("not-found", f"{r.path} is not a directory")
            fd = self.paths.open_dir(r)
        try:
            entries, nxt, skipped = await asyncio.to_thread(list_dir, fd,
                                                            _count(body, "start", 0))
        finally:
            os.close(fd)
        return encode_json({"path": r.path, "entries": entries, "next": nxt,
                            "skipped": skipped})

    async def _open_read(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        with self.paths.resolve(_field(body, "path", str)) as r:
            self.paths.check(r, "")
            if r.name is None or r.is_dir:
                raise ServiceError("bad-request", f"{r.path} is a directory (-Recurse copies "
                                                  "directories)")
            if r.st is None:
                raise ServiceError("not-found", f"{r.path} does not exist in the guest")
            if not stat.S_ISREG(r.st.st_mode):
                raise ServiceError("bad-request", f"{r.path} is not a regular file")
            try:
                fd = os.open(r.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                             dir_fd=r.dir_fd)
            except OSError as exc:
                raise ServiceError("denied" if exc.errno in (13, 1) else "failed",
                                   f"cannot open {r.path}: {exc.strerror}") from exc
            display = r.path
        reader = Reader(fd, display)
        if not stat.S_ISREG(reader.st.st_mode):
            reader.close()
            raise ServiceError("bad-request", f"{display} is not a regular file")
        info = {"path": display, **stat_entry(reader.st)}
        if reader.size <= _count(body, "inline_max", 0):
            def whole() -> tuple[bytes, str]:
                try:
                    reader.claim(0, reader.size)
                    data = reader.read(0, reader.size)
                    return data, reader.finish()
                finally:
                    reader.close()

            data, digest = await asyncio.to_thread(whole)
            return self._joined(encode_json_raw({**info, "handle": 0, "sha256": digest}, data))
        handle = self._register(_Read(reader))
        return self._joined(encode_json_raw({**info, "handle": handle}))

    @staticmethod
    def _joined(parts: tuple[bytes, bytes | memoryview]) -> bytes:
        # A handler answers with bytes; small answers only are built this way.
        return parts[0] + bytes(parts[1])

    async def _read(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        item = self._get(body, _Read)
        offset = _count(body, "offset")
        length = item.reader.claim(offset, _count(body, "length"))
        data: bytes = await asyncio.wrap_future(item.reader.submit(offset, length))
        return data

    async def _seek(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        item = self._get(body, _Read)
        prefix = await asyncio.to_thread(item.reader.seek, _count(body, "offset"))
        return encode_json({"prefix_sha256": prefix})

    async def _close(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        item = self._get(body, _Read)
        self._forget(_count(body, "handle"))
        try:
            digest = await asyncio.to_thread(item.reader.finish)
        finally:
            await asyncio.to_thread(item.reader.close)
        return encode_json({"size": item.reader.size, "sha256": digest})

    # Section: guest tools

    async def _status(self, request: dict[str, Any]) -> Any:
        copies = []
        for handle, item in self._open.items():
            if isinstance(item, _Write):
                r = item.receiver
                copies.append({"handle": handle, "direction": "to-guest", "path": r.display,
                               "size": r.size, "done": r.written, "resumed": r.resumed})
            else:
                copies.append({"handle": handle, "direction": "from-guest",
                               "path": item.reader.display, "size": item.reader.size,
                               "done": item.reader.pos})
        return {"allowed_roots": self.paths.allowed, "frozen": self.ctx.frozen,
                "copies": copies}


#: the agent offers the service this module defines (vmis.guest.services)
SERVICE = FcopyService
