"""Guest half of the Guest Service Interface: the file copy operations.

docs/services/fcopy.md. The host drives every copy; this service answers its
requests. A copy *into* the guest is OPEN_WRITE, WRITE..., COMMIT (or PUT for
a small file); a copy *out of* it is OPEN_READ, READ..., CLOSE; trees go as
a stream of batches (:mod:`.guest_trees`, version 1.1). Each open copy owns
worker threads for its disk I/O and hashing, so writes and reads never
block the agent's event loop and the hash is computed alongside the I/O,
outside the GIL. Open copies have owners and leases, and partial files
left behind are swept on a schedule (:mod:`.guest_handles`, §4.1).

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
from typing import Any

from vmis.errors import ServiceError
from vmis.protocol import RequestReceived, decode_json, decode_json_raw, encode_json
from vmis.services.catalog import by_key
from vmis.services.fcopy import DEFAULT_ALLOWED_ROOTS, FcopyOp
from vmis.services.fcopy.guest_admin import GuestAdmin, index_file
from vmis.services.fcopy.guest_handles import Handles, ReadOpen, TreeIn, WriteOpen
from vmis.services.fcopy.guest_trees import TreeOps, count, field, joined, owner_of
from vmis.services.fcopy.metadata import file_mode, set_times, stat_entry
from vmis.services.fcopy.partials import PartialIndex
from vmis.services.fcopy.paths import Resolved, RootedPaths, check_name, parse_roots, split_path
from vmis.services.fcopy.reader import Reader
from vmis.services.fcopy.receiver import Receiver
from vmis.services.guest_half import GuestContext, GuestService

__all__ = ["SERVICE", "FcopyService"]

_FROZEN = ("the guest's filesystems are frozen for a backup (VSS); "
           "copy into the guest again after the thaw")


class FcopyService(GuestService):
    """vmicguestinterface: file copy between host and guest."""

    spec = by_key("fcopy")

    def __init__(self, ctx: GuestContext) -> None:
        super().__init__(ctx)
        self.paths = RootedPaths(ctx.root, parse_roots(DEFAULT_ALLOWED_ROOTS))
        self.handles = Handles()
        #: where partial files may have been left (docs §4.1)
        self.index = PartialIndex(index_file(ctx), self.paths)
        #: set while the filesystems are not frozen; writers wait on it
        self._thawed = threading.Event()
        self._thawed.set()
        self._stopped = threading.Event()
        ctx.freeze_listeners.append(self._on_freeze)
        self.admin = GuestAdmin(self)
        self.trees = TreeOps(self)
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
            **self.trees.handlers(),
            **self.admin.handlers(),
        }
        self.control_ops = {"fcopy.status": self.admin.status}

    # Section: lifecycle

    async def on_start(self) -> None:
        roots = getattr(self.ctx.config, "allowed_roots", DEFAULT_ALLOWED_ROOTS)
        try:
            self.paths = RootedPaths(self.ctx.root, parse_roots(str(roots)))
        except ServiceError as exc:
            raise ServiceError("failed", f"[fcopy] allowed_roots: {exc}") from None
        self.index.paths = self.paths
        self._stopped.clear()
        if not self.ctx.frozen:
            self._thawed.set()
        self.spawn(self.admin.maintain(), "maintain")

    async def on_stop(self) -> None:
        self._stopped.set()
        self.close_all()

    def on_session(self, running: bool) -> None:
        if not running:
            # The host that opened these copies is gone; a rerun resumes them.
            self.close_all()

    def close_all(self) -> None:
        for handle, _ in self.handles.items():
            self.drop(handle, keep=True)

    def _on_freeze(self, frozen: bool) -> None:
        if frozen:
            self._thawed.clear()
        else:
            self._thawed.set()

    def gate(self) -> None:
        """Worker threads wait here before touching the disk while frozen."""
        while not self._thawed.wait(0.2):
            if self._stopped.is_set():
                raise ServiceError("failed", "the Guest Service Interface stopped")

    def refuse_if_frozen(self) -> None:
        if self.ctx.frozen:
            raise ServiceError("busy", _FROZEN)

    # Section: handles

    def drop(self, handle: int, keep: bool) -> asyncio.Future[None] | None:
        """Forget a copy; a thread closes it once the work already queued is done."""
        item = self.handles.pop(handle)
        if item is None:
            return None
        loop = asyncio.get_running_loop()
        if isinstance(item, WriteOpen):
            return loop.run_in_executor(None, item.receiver.close, keep)
        if isinstance(item, ReadOpen):
            return loop.run_in_executor(None, item.reader.close)
        return self.trees.close(item)

    # Section: resolving destinations

    def _destination(self, body: dict[str, Any]) -> Resolved:
        """Where a file sent to the guest goes (Copy-VMFile's rules, docs §3.1)."""
        return self.paths.destination(
            field(body, "path", str), check_name(body.get("name")),
            create=bool(body.get("create_path", False)), exact=bool(body.get("exact", False)),
            force=bool(body.get("force", False)), what="copying into the guest")

    def _receiver(self, body: dict[str, Any], dir_fd: int, name: str, path: str,
                  indexed: bool) -> Receiver:
        """A receiver of a file sent to the guest; it owns *dir_fd*.

        :param indexed: note its partial file in the index: a copy that can be
            resumed (not one that is a single request, nor a tree's, whose
            entry covers it).
        """
        try:
            return Receiver(
                dir_fd, name, path, field(body, "token", str), count(body, "size"),
                mode=count(body, "mode", 0o644), atime_ns=count(body, "atime_ns", 0),
                mtime_ns=count(body, "mtime_ns", 0), force=bool(body.get("force", False)),
                gate=self.gate, index=self.index if indexed else None)
        except BaseException:
            os.close(dir_fd)
            raise

    async def _take_over(self, token: str) -> None:
        """An earlier run of this copy whose host forgot it: close it (keep its data)."""
        for handle, item in self.handles.writing(token):
            if item.active:
                raise ServiceError("busy", f"{item.receiver.display} is being copied by "
                                           "another copy right now")
            self.log.info("taking over %s from a copy that went away", item.receiver.display)
            done = self.drop(handle, keep=True)
            if done is not None:
                await done

    # Section: copies into the guest

    async def _open_write(self, request: RequestReceived) -> bytes:
        self.refuse_if_frozen()
        body = decode_json(request.payload)
        token = field(body, "token", str)
        await self._take_over(token)
        tree_handle = body.get("tree")
        if tree_handle:
            tree = self.handles.get(tree_handle, TreeIn)
            rel = field(body, "rel", str)
            dir_fd, name = await asyncio.wrap_future(tree.worker.submit(tree.writer.large, rel))
            receiver = self._receiver(body, dir_fd, name, f"{tree.writer.top.rstrip('/')}/{rel}",
                                      indexed=False)
        else:
            r = self._destination(body)
            assert r.name is not None
            receiver = self._receiver(body, r.dir_fd, r.name, r.path, indexed=True)
            r.dir_fd = -1
        try:
            offset, prefix = await asyncio.to_thread(receiver.open, bool(body.get("resume")))
            vfs = os.fstatvfs(receiver.dir_fd)
            free = vfs.f_bavail * vfs.f_frsize
            if receiver.size - offset > free:
                raise ServiceError("too-large", f"{receiver.display}: {receiver.size - offset} "
                                                f"bytes to write, {free} free in the guest")
            handle = self.handles.add(WriteOpen(owner_of(body), receiver,
                                                int(tree_handle or 0), str(body.get("rel", ""))))
        except BaseException:
            await asyncio.to_thread(receiver.close, True)
            raise
        self.log.info("receiving %s (%d bytes%s)", receiver.display, receiver.size,
                      f", resuming at {offset}" if offset else "")
        return encode_json({"handle": handle, "path": receiver.path, "offset": offset,
                            "prefix_sha256": prefix})

    async def _write(self, request: RequestReceived) -> bytes:
        body, data = decode_json_raw(request.payload)
        item = self.handles.get(body.get("handle"), WriteOpen)
        offset = count(body, "offset")
        # Claimed now, in arrival order; the workers write and hash in that order.
        item.receiver.claim(offset, len(data))
        with self.handles.using(item):
            await asyncio.wrap_future(item.receiver.submit(offset, data))
        return b""

    async def _commit(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        handle = count(body, "handle")
        item = self.handles.get(handle, WriteOpen)
        self.handles.pop(handle)
        receiver = item.receiver
        tree = self.handles.get(item.tree, TreeIn) if item.tree else None
        try:
            digest = await asyncio.to_thread(receiver.commit, field(body, "sha256", str),
                                             tree is None)
            if tree is not None:
                claim, receiver.held = receiver.held, None
                await asyncio.wrap_future(tree.worker.submit(
                    tree.writer.adopt, item.rel, receiver.part, receiver.record, claim))
        except BaseException:
            await asyncio.to_thread(receiver.close, False)
            raise
        self.log.info("received %s (%d bytes, sha256 %s)", receiver.display, receiver.size,
                      digest)
        return encode_json({"path": receiver.path, "size": receiver.size, "sha256": digest})

    async def _abort(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        keep = bool(body.get("keep", False))
        if "owner" in body:
            # Everything a copy of the host had open, however that copy ended.
            handles = self.handles.owned_by(field(body, "owner", str))
        else:
            handles = [count(body, "handle" if "handle" in body else "tree")]
        done = [d for d in (self.drop(h, keep=keep) for h in handles) if d is not None]
        if done:
            await asyncio.gather(*done)
        return encode_json({"closed": len(done)})

    async def _put(self, request: RequestReceived) -> bytes:
        self.refuse_if_frozen()
        body, data = decode_json_raw(request.payload)
        sha = field(body, "sha256", str)
        if count(body, "size") != len(data):
            raise ServiceError("bad-request", "size differs from the data sent")
        r = self._destination(body)
        assert r.name is not None
        receiver = self._receiver(body, r.dir_fd, r.name, r.path, indexed=False)
        r.dir_fd = -1

        def run() -> str:
            try:
                receiver.open(resume=False)
                receiver.claim(0, len(data))
                receiver.write(0, data)
                return receiver.commit(sha)
            finally:
                receiver.close(keep=False)

        digest = await asyncio.to_thread(run)
        return encode_json({"path": receiver.path, "size": len(data), "sha256": digest})

    async def _mkdir(self, request: RequestReceived) -> bytes:
        self.refuse_if_frozen()
        body = decode_json(request.payload)
        with self.paths.resolve(field(body, "path", str),
                                create_dirs=bool(body.get("parents", False))) as r:
            self.paths.check(r, "creating a directory")
            if r.st is None and r.name is not None:
                os.mkdir(r.name, 0o755, dir_fd=r.dir_fd)
            elif not (r.name is None or r.is_dir):
                raise ServiceError("exists", f"{r.shown} exists and is not a directory")
            return encode_json({"path": r.path})

    async def _setmeta(self, request: RequestReceived) -> bytes:
        self.refuse_if_frozen()
        body = decode_json(request.payload)
        with self.paths.resolve(field(body, "path", str)) as r:
            self.paths.check(r, "")
            if r.name is not None and r.st is None:
                raise ServiceError("not-found", f"{r.shown} does not exist")
            fd = self.paths.open_dir(r) if r.name is None or r.is_dir else os.open(
                r.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                dir_fd=r.dir_fd)
            try:
                os.fchmod(fd, file_mode(count(body, "mode")))
                set_times(fd, count(body, "atime_ns"), count(body, "mtime_ns"))
            finally:
                os.close(fd)
        return encode_json({})

    # Section: copies out of the guest

    async def _stat(self, request: RequestReceived) -> bytes:
        return encode_json(self._facts(field(decode_json(request.payload), "path", str)))

    def _facts(self, path: str) -> dict[str, Any]:
        """STAT's answer: what a guest path is (``type`` ``none`` when it does not exist)."""
        try:
            r = self.paths.resolve(path)
        except ServiceError as exc:
            if exc.code != "not-found":
                raise
            if not self.paths.allowed_path(split_path(path)):
                raise ServiceError("denied", f"{path} is outside the guest's allowed roots") \
                    from None
            return {"path": path, "type": "none"}
        with r:
            self.paths.check(r, "")
            if r.name is None:
                st = os.fstat(r.dir_fd)
            elif r.st is None:
                return {"path": r.path, "type": "none"}
            else:
                st = r.st
            return {"path": r.path, **stat_entry(st)}

    async def _list(self, request: RequestReceived) -> bytes:
        return await self.trees.list_dir(request)

    async def _open_read(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        if body.get("tree"):
            reader = await self.trees.open_member(body)
        else:
            opened = self._open_path(field(body, "path", str), bool(body.get("probe")))
            if not isinstance(opened, Reader):
                return joined(opened)  # probed a directory: its facts
            reader = opened
        info = {"path": reader.path, **stat_entry(reader.st)}
        if reader.size <= count(body, "inline_max", 0):
            def whole() -> tuple[bytes, str]:
                try:
                    reader.claim(0, reader.size)
                    data = reader.read(0, reader.size)
                    return data, reader.finish()
                finally:
                    reader.close()

            data, digest = await asyncio.to_thread(whole)
            return joined({**info, "handle": 0, "sha256": digest}, data)
        try:
            handle = self.handles.add(ReadOpen(owner_of(body), reader))
        except BaseException:
            reader.close()
            raise
        return joined({**info, "handle": handle})

    def _open_path(self, path: str, probe: bool = False) -> Reader | dict[str, Any]:
        """A reader of a guest file; with *probe*, what the path is instead of an error
        when it is not a regular file (STAT's answer: one round trip for both)."""
        try:
            r = self.paths.resolve(path)
        except ServiceError as exc:
            if probe and exc.code == "not-found":
                return {**self._facts(path), "handle": 0}
            raise
        with r:
            self.paths.check(r, "")
            if probe and (r.st is None or not stat.S_ISREG(r.st.st_mode)):
                st = os.fstat(r.dir_fd) if r.name is None else r.st
                return {"path": r.path, "handle": 0,
                        **(stat_entry(st) if st is not None else {"type": "none"})}
            if r.name is None or r.is_dir:
                raise ServiceError("bad-request", f"{r.shown} is a directory (-Recurse copies "
                                                  "directories)")
            if r.st is None:
                raise ServiceError("not-found", f"{r.shown} does not exist in the guest")
            if not stat.S_ISREG(r.st.st_mode):
                raise ServiceError("bad-request", f"{r.shown} is not a regular file")
            try:
                fd = os.open(r.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                             dir_fd=r.dir_fd)
            except OSError as exc:
                raise ServiceError("denied" if exc.errno in (13, 1) else "failed",
                                   f"cannot open {r.shown}: {exc.strerror}") from exc
            reader = Reader(fd, r.path)
        if not stat.S_ISREG(reader.st.st_mode):
            reader.close()
            raise ServiceError("bad-request", f"{reader.display} is not a regular file")
        return reader

    async def _read(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        item = self.handles.get(body.get("handle"), ReadOpen)
        offset = count(body, "offset")
        length = item.reader.claim(offset, count(body, "length"))
        with self.handles.using(item):
            data: bytes = await asyncio.wrap_future(item.reader.submit(offset, length))
        return data

    async def _seek(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        item = self.handles.get(body.get("handle"), ReadOpen)
        with self.handles.using(item):
            prefix = await asyncio.to_thread(item.reader.seek, count(body, "offset"))
        return encode_json({"prefix_sha256": prefix})

    async def _close(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        handle = count(body, "handle")
        item = self.handles.get(handle, ReadOpen)
        self.handles.pop(handle)
        try:
            digest = await asyncio.to_thread(item.reader.finish)
        finally:
            await asyncio.to_thread(item.reader.close)
        return encode_json({"size": item.reader.size, "sha256": digest})


#: the agent offers the service this module defines (vmis.guest.services)
SERVICE = FcopyService
