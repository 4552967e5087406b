"""The guest's half of tree copies (version 1.1) and directory listings.

docs/services/fcopy.md §2.2 and §3.2. A tree copied *into* the guest is
TREE_CREATE, TREE_PUT... (batches of directories, small files and links,
taken in the order sent), OPEN_WRITE... for its large files, TREE_COMMIT; a
tree copied *out of* it is TREE_OPEN (the walk and its first page),
TREE_LIST..., TREE_GET... (small files in batches), OPEN_READ... for the
large ones. Each open tree has one worker thread, so its batches are
written (or read) one after the other, off the agent's event loop.
Standard library only.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from vmis.errors import ServiceError
from vmis.protocol import decode_json, decode_json_raw, encode_json, encode_json_raw
from vmis.protocol.session import RequestReceived
from vmis.services.fcopy import TREE_PAGE
from vmis.services.fcopy.guest_handles import Handles, Open, TreeIn, TreeOut
from vmis.services.fcopy.metadata import list_dir
from vmis.services.fcopy.partials import PartialIndex
from vmis.services.fcopy.paths import RootedPaths, check_name, split_path
from vmis.services.fcopy.reader import Reader
from vmis.services.fcopy.tree_source import LINK_POLICIES, TreeSource, walk
from vmis.services.fcopy.tree_writer import DirMeta, TreeWriter, open_tree

__all__ = ["TreeOps", "count", "field", "joined", "owner_of"]

T = TypeVar("T")


# Section: payload fields


def field(body: dict[str, Any], key: str, kind: type[T], default: Any = ...) -> T:
    """A field of a request, of the type the operation says.

    :raise ServiceError: ``bad-request`` when it is missing or of another type.
    """
    value = body.get(key, default)
    if value is ... or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ServiceError("bad-request", f"field {key!r} must be a {kind.__name__}")
    return value


def count(body: dict[str, Any], key: str, default: Any = ...) -> int:
    """A field that is a count, an offset or a size: an integer, not negative."""
    value = field(body, key, int, default)
    if value < 0:
        raise ServiceError("bad-request", f"field {key!r} must not be negative")
    return value


def owner_of(body: dict[str, Any]) -> str:
    """The host's id of the copy a request belongs to ("" from a 1.0 host)."""
    return str(field(body, "owner", str, ""))[:64]


def joined(head: dict[str, Any], data: bytes | memoryview = b"") -> bytes:
    """A json+raw answer as one ``bytes`` (a handler answers with bytes)."""
    prefix, raw = encode_json_raw(head, data)
    return prefix + bytes(raw)


def _items(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key) or []
    if not isinstance(value, list):
        raise ServiceError("bad-request", f"field {key!r} must be a list")
    return value


class _Service(Protocol):
    """What the tree operations use of the service (vmis.services.fcopy.guest)."""

    paths: RootedPaths
    handles: Handles

    @property
    def index(self) -> PartialIndex: ...

    def gate(self) -> None: ...

    def refuse_if_frozen(self) -> None: ...


class TreeOps:
    """The tree operations of one :class:`~vmis.services.fcopy.guest.FcopyService`."""

    def __init__(self, service: _Service) -> None:
        self.svc = service

    def handlers(self) -> dict[int, Callable[[RequestReceived], Awaitable[bytes]]]:
        from vmis.services.fcopy import FcopyOp

        return {FcopyOp.TREE_CREATE: self.create, FcopyOp.TREE_PUT: self.put,
                FcopyOp.TREE_COMMIT: self.commit, FcopyOp.TREE_OPEN: self.open,
                FcopyOp.TREE_LIST: self.list, FcopyOp.TREE_GET: self.get}

    def close(self, item: Open) -> asyncio.Future[None] | None:
        """Give an open tree up, once its queued work is done (its handle is gone)."""
        if isinstance(item, TreeIn):
            done = item.worker.submit(item.writer.abort)
        elif isinstance(item, TreeOut):
            done = item.worker.submit(item.source.close)
        else:
            return None
        item.worker.shutdown(wait=False)
        return asyncio.wrap_future(done)

    # Section: into the guest

    async def create(self, request: RequestReceived) -> bytes:
        self.svc.refuse_if_frozen()
        body = decode_json(request.payload)
        path, name = field(body, "path", str), check_name(body.get("name"))
        paths, index = self.svc.paths, self.svc.index

        token = field(body, "token", str, "")
        tag = token[:16] if len(token) >= 16 and all(c in "0123456789abcdef" for c in token[:16]) \
            else secrets.token_hex(8)

        def run() -> TreeWriter:
            return open_tree(paths, path, name, create=bool(body.get("create_path")),
                             force=bool(body.get("force")), tag=tag,
                             what="copying into the guest", gate=self.svc.gate, index=index)

        writer = await asyncio.to_thread(run)
        try:
            handle = self.svc.handles.add(TreeIn(owner_of(body), writer))
        except BaseException:
            await asyncio.to_thread(writer.abort)
            raise
        return encode_json({"tree": handle, "path": writer.top})

    async def put(self, request: RequestReceived) -> bytes:
        body, data = decode_json_raw(request.payload)
        item = self.svc.handles.get(body.get("tree"), TreeIn)
        seq = count(body, "seq")
        if seq != item.seq:
            raise ServiceError("bad-request", f"batch {seq} of a tree, expected {item.seq}")
        item.seq += 1
        dirs, links = _items(body, "dirs"), _items(body, "links")
        files = [_file_line(f) for f in _items(body, "files")]
        if sum(f[1] for f in files) != len(data):
            raise ServiceError("bad-request", "the files' sizes differ from the data sent")
        with self.svc.handles.using(item):
            digests = await asyncio.wrap_future(item.worker.submit(
                _write_batch, item.writer, dirs, files, links, memoryview(data)))
        return encode_json({"sha256": digests})

    async def commit(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        handle = count(body, "tree")
        item = self.svc.handles.get(handle, TreeIn)
        metas: list[DirMeta] = []
        for line in _items(body, "dirs"):
            if not (isinstance(line, list) and len(line) == 4 and isinstance(line[0], str)
                    and all(isinstance(v, int) and v >= 0 for v in line[1:])):
                raise ServiceError("bad-request", "dirs must be [rel, mode, atime_ns, mtime_ns]")
            metas.append((line[0], line[1], line[2], line[3]))
        self.svc.handles.pop(handle)
        try:
            files = await asyncio.wrap_future(item.worker.submit(item.writer.commit, metas))
        finally:
            item.worker.shutdown(wait=False)
        return encode_json({"path": item.writer.top, "files": files})

    # Section: out of the guest

    async def open(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        path, links = field(body, "path", str), field(body, "links", str, "skip")
        if links not in LINK_POLICIES:
            raise ServiceError("bad-request", f"links must be one of {', '.join(LINK_POLICIES)}")
        paths = self.svc.paths

        def run() -> TreeOut:
            with paths.resolve(split_path(path)) as r:
                paths.check(r, "")
                if r.name is not None and r.st is None:
                    raise ServiceError("not-found", f"{r.shown} does not exist in the guest")
                if not (r.name is None or r.is_dir):
                    raise ServiceError("bad-request", f"{r.shown} is not a directory")
                top = tuple(r.parts)
            tree = walk(paths, top, links)
            return TreeOut(owner_of(body), tree, TreeSource(paths), "/" + "/".join(top))

        item = await asyncio.to_thread(run)
        try:
            handle = self.svc.handles.add(item)
        except BaseException:
            item.source.close()
            raise
        return encode_json({"tree": handle, "path": item.path, **self._page(item, 0),
                            "skipped": [list(s) for s in item.tree.skipped]})

    @staticmethod
    def _page(item: TreeOut, start: int) -> dict[str, Any]:
        end = start + TREE_PAGE
        return {"entries": [e.to_wire() for e in item.entries[start:end]],
                "next": end if end < len(item.entries) else None}

    async def list(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        item = self.svc.handles.get(body.get("tree"), TreeOut)
        return encode_json(self._page(item, count(body, "start")))

    async def get(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        item = self.svc.handles.get(body.get("tree"), TreeOut)
        wanted = [self._member(item, i) for i in _items(body, "files")]

        def read() -> tuple[list[list[Any]], bytes]:
            lines, data = [], []
            for entry in wanted:
                try:
                    chunk, st, digest = item.source.read(entry)
                except ServiceError as exc:
                    if exc.code != "not-found":
                        raise
                    lines.append([-1, 0, "vanished during the copy"])
                    continue
                lines.append([len(chunk), st.st_mtime_ns, digest])
                data.append(chunk)
            return lines, b"".join(data)

        with self.svc.handles.using(item):
            lines, data = await asyncio.wrap_future(item.worker.submit(read))
        item.sent += len(data)
        return joined({"files": lines}, data)

    @staticmethod
    def _member(item: TreeOut, index: object) -> Any:
        if not isinstance(index, int) or not 0 <= index < len(item.entries) \
                or item.entries[index].kind != "file":
            raise ServiceError("bad-request", f"no file {index!r} in the tree")
        return item.entries[index]

    async def open_member(self, body: dict[str, Any]) -> Reader:
        """A reader of one (large) file of an open tree (OPEN_READ with ``tree``)."""
        item = self.svc.handles.get(body.get("tree"), TreeOut)
        entry = self._member(item, body.get("index"))
        fd = await asyncio.wrap_future(item.worker.submit(item.source.open, entry))
        return Reader(fd, "/" + "/".join(entry.parts))

    # Section: one directory (LIST, 1.0)

    async def list_dir(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        paths = self.svc.paths
        with paths.resolve(field(body, "path", str)) as r:
            paths.check(r, "")
            if not (r.name is None or r.is_dir):
                raise ServiceError("not-found", f"{r.shown} is not a directory")
            fd = paths.open_dir(r)
        try:
            entries, nxt, skipped = await asyncio.to_thread(list_dir, fd,
                                                            count(body, "start", 0))
        finally:
            os.close(fd)
        return encode_json({"path": r.path, "entries": entries, "next": nxt,
                            "skipped": skipped})


def _file_line(line: object) -> tuple[str, int, int, int, int, str]:
    """``[rel, size, mode, atime_ns, mtime_ns, sha256]`` of a TREE_PUT, checked."""
    if not (isinstance(line, list) and len(line) == 6 and isinstance(line[0], str)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                    for v in line[1:5]) and isinstance(line[5], str)):
        raise ServiceError("bad-request", "files must be [rel, size, mode, atime_ns, mtime_ns, "
                                          "sha256]")
    return line[0], line[1], line[2], line[3], line[4], line[5]


def _write_batch(writer: TreeWriter, dirs: list[Any],
                 files: list[tuple[str, int, int, int, int, str]], links: list[Any],
                 data: memoryview) -> list[str]:
    if not all(isinstance(d, str) for d in dirs):
        raise ServiceError("bad-request", "dirs must be relative paths")
    writer.make_dirs(dirs)
    digests, at = [], 0
    for rel, size, mode, atime_ns, mtime_ns, sha256 in files:
        digests.append(writer.put(rel, data[at : at + size], mode=mode, atime_ns=atime_ns,
                                  mtime_ns=mtime_ns, sha256=sha256))
        at += size
    for line in links:
        if not (isinstance(line, list) and len(line) == 4 and isinstance(line[0], str)
                and isinstance(line[1], str)
                and all(isinstance(v, int) and v >= 0 for v in line[2:])):
            raise ServiceError("bad-request", "links must be [rel, target, atime_ns, mtime_ns]")
        writer.link(line[0], line[1], line[2], line[3])
    return digests
