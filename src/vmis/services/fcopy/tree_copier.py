"""Trees as a stream (fcopy 1.1): the host's end of a directory tree copied either way.

docs/services/fcopy.md §3.2. Into the guest: the host tree is walked,
TREE_CREATE opens its top in the guest, the directories and small files go
in batches of up to :data:`BATCH_BYTES` (read and hashed one batch ahead,
:data:`BATCH_WINDOW` batches in flight), large files as single-file
streams into the tree (:data:`LARGE_WINDOW` at a time), and TREE_COMMIT
makes the whole tree durable and places it. Out of the guest: TREE_OPEN
walks the guest tree, TREE_GET brings small files in batches (written one
batch behind, in a worker thread), large files stream (:data:`LARGE_WINDOW`
at a time), and a :class:`~vmis.services.fcopy.tree_writer.TreeWriter`
makes the tree durable and places it on this machine. No host-only dependency.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from vmis.errors import ServiceError
from vmis.protocol import Received, decode_json, decode_json_raw, encode_json, encode_json_raw
from vmis.services.fcopy import (
    BATCH_BYTES,
    BATCH_FILES,
    BATCH_WINDOW,
    DATA_TIMEOUT,
    SMALL_FILE,
    FcopyOp,
    resume_token,
)
from vmis.services.fcopy.file_copier import FileCopier
from vmis.services.fcopy.paths import shown, split_path
from vmis.services.fcopy.receiver import Receiver
from vmis.services.fcopy.tree_source import Entry, Tree, TreeSource, walk
from vmis.services.fcopy.tree_writer import DirMeta, TreeWriter, open_tree

__all__ = ["TreeCopier"]

#: a tree's large files copied side by side: their round trips and each
#: one's start and end overlap; each has its own window of WINDOW frames,
#: so this many times 16 MiB is what a tree copy holds in flight
LARGE_WINDOW = 2


def _batches(files: list[tuple[int, Entry]]) -> list[list[tuple[int, Entry]]]:
    """Small files grouped into batches of at most BATCH_BYTES and BATCH_FILES."""
    batches: list[list[tuple[int, Entry]]] = []
    size = 0
    for item in files:
        if not batches or len(batches[-1]) >= BATCH_FILES or \
                (size + item[1].size > BATCH_BYTES and batches[-1]):
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += item[1].size
    return batches


def _dir_metas(dirs: list[Entry]) -> list[DirMeta]:
    """The directories' modes and times, children first (setting a parent's earlier
    would be undone by what is made in it)."""
    return [(d.rel, d.mode, d.atime_ns, d.mtime_ns) for d in reversed(dirs)]


def _entry(line: list[Any]) -> Entry:
    rel, kind, size, mode, atime_ns, mtime_ns, target = line
    return Entry(str(rel), str(kind), int(size), int(mode), int(atime_ns), int(mtime_ns), (),
                 target)


class TreeCopier(FileCopier):
    """Tree copies through the 1.1 operations; constructed as :class:`FileCopier`."""

    async def _pipeline(self, jobs: list[Any], start: Callable[[Any], Awaitable[Any]],
                        finish: Callable[[Any, Any], Awaitable[None]],
                        window: int = BATCH_WINDOW) -> None:
        """Run ``start(job)`` for each job, *window* at a time, and ``finish(job,
        result)`` for each in order; on failure nothing is left running."""
        running: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        try:
            for job in jobs:
                while len(running) >= window:
                    done, fut = running.popleft()
                    await finish(done, await fut)
                running.append((job, asyncio.ensure_future(start(job))))
            while running:
                done, fut = running.popleft()
                await finish(done, await fut)
        except BaseException:
            for _, fut in running:
                fut.cancel()
            await asyncio.gather(*(f for _, f in running), return_exceptions=True)
            raise

    # Section: into the guest

    async def _tree_to_guest_stream(self, source: Path, destination: str, create: bool,
                                    force: bool, links: str) -> str:
        name = source.name or "root"  # cp -r's: the name given, a link's own
        # The guest opens the destination while this end walks the source.
        creating = asyncio.ensure_future(self._json(FcopyOp.TREE_CREATE, {
            "path": destination, "name": name, "create_path": create, "force": force,
            "owner": self.owner,
            "token": resume_token("to-guest-tree", str(source), 0, 0, f"{destination}\0{name}")},
            DATA_TIMEOUT))
        try:
            tree: Tree = await self._in_worker(walk, self._local,
                                               tuple(split_path(str(source))), links)
        except BaseException:
            opened = (await asyncio.gather(creating, return_exceptions=True))[0]
            if isinstance(opened, dict):
                await self._best_effort(FcopyOp.ABORT, {"tree": opened["tree"]})
            raise
        opened = await creating
        handle, top = int(opened["tree"]), str(opened["path"])
        self._stats.skipped += [(f"{source}/{rel}", why) for rel, why in tree.skipped]
        small = [(i, f) for i, f in enumerate(tree.files) if f.size <= SMALL_FILE]
        large = [f for f in tree.files if f.size > SMALL_FILE]
        self.progress.files_total = len(tree.files) + len(tree.links)
        self.progress.bytes_total = sum(f.size for f in tree.files)
        reader = TreeSource(self._local)
        try:
            await self._put_batches(handle, top, tree, _batches(small), reader)

            async def send(entry: Entry) -> None:
                fd = await self._in_worker(reader.open, entry)
                await self._send_file(fd, "/" + "/".join(entry.parts), f"{top}/{entry.rel}",
                                      {"tree": handle, "rel": entry.rel, "force": force})

            await self._pipeline(large, send, _nothing, LARGE_WINDOW)
            answer = await self._json(FcopyOp.TREE_COMMIT, {
                "tree": handle, "dirs": [list(m) for m in _dir_metas(tree.dirs)]}, DATA_TIMEOUT)
        except BaseException:
            await self._best_effort(FcopyOp.ABORT, {"tree": handle})
            raise
        finally:
            self._after_worker(reader.close)
        self._stats.directories = len(tree.dirs)
        return str(answer.get("path", top))

    async def _put_batches(self, handle: int, top: str, tree: Tree,
                           batches: list[list[tuple[int, Entry]]], reader: TreeSource) -> None:
        jobs: list[dict[str, Any]] = [{"files": b} for b in batches] or [{"files": []}]
        jobs[0]["dirs"] = [d.rel for d in tree.dirs[1:]]
        jobs[-1]["links"] = [[e.rel, e.target, e.atime_ns, e.mtime_ns] for e in tree.links]
        for seq, job in enumerate(jobs):
            job["seq"] = seq
        def read(i: int) -> None:
            # Read in order, in the worker thread, one batch ahead of the sender.
            if i < len(jobs) and "read" not in jobs[i]:
                jobs[i]["read"] = asyncio.ensure_future(self._in_worker(_read_batch, reader,
                                                                        jobs[i]))

        read(0)

        async def send(job: dict[str, Any]) -> Received:
            read(job["seq"] + 1)
            lines, data = await job["read"]
            job["lines"] = lines
            return await self._call(FcopyOp.TREE_PUT, encode_json_raw(
                {"tree": handle, "seq": job["seq"], "dirs": job.get("dirs", []),
                 "files": lines, "links": job.get("links", [])}, data), DATA_TIMEOUT)

        async def done(job: dict[str, Any], raw: Received) -> None:
            digests = decode_json(raw).get("sha256")
            lines = job["lines"]
            if digests != [line[5] for line in lines]:
                raise ServiceError("failed", f"{shown(top)}: the guest's SHA-256 of a batch "
                                             "differs from the host's")
            for line in lines:
                self._stats.sent += line[1]
                self.progress.bytes_done += line[1]
                self._stats.items.append({"Path": shown(f"{top}/{line[0]}"),
                                          "Bytes": line[1], "Sha256": line[5]})
                self.progress.current = self._stats.items[-1]["Path"]
            self._files_done(len(lines) + len(job.get("links", [])))

        try:
            await self._pipeline(jobs, send, done)
        finally:
            for job in jobs:
                if "read" in job:
                    job["read"].cancel()

    # Section: out of the guest

    async def _tree_from_guest_stream(self, source: str, destination: Path, create: bool,
                                      force: bool, links: str) -> str:
        opened = await self._json(FcopyOp.TREE_OPEN, {"path": source, "owner": self.owner,
                                                      "links": links}, DATA_TIMEOUT)
        handle, where = int(opened["tree"]), str(opened["path"])
        writer: TreeWriter | None = None
        try:
            entries = [_entry(e) for e in opened["entries"]]
            start = opened.get("next")
            while start is not None:
                page = await self._json(FcopyOp.TREE_LIST, {"tree": handle, "start": start})
                entries += [_entry(e) for e in page["entries"]]
                start = page.get("next")
            self._stats.skipped += [(f"{where.rstrip('/')}/{rel}", why)
                                    for rel, why in opened.get("skipped") or []]
            dirs = [e for e in entries if e.kind == "dir"]
            files = [(i, e) for i, e in enumerate(entries) if e.kind == "file"]
            self.progress.files_total = len(files) + sum(e.kind == "link" for e in entries)
            self.progress.bytes_total = sum(e.size for _, e in files)
            name = where.rstrip("/").rsplit("/", 1)[-1] or "root"
            writer = await self._in_worker(self._local_tree, where, str(destination), name,
                                           create, force)
            await self._in_worker(writer.make_dirs, [d.rel for d in dirs[1:]])
            await self._get_batches(handle, writer,
                                    _batches([f for f in files if f[1].size <= SMALL_FILE]))

            async def receive(member: tuple[int, Entry]) -> None:
                assert writer is not None
                await self._receive_member(handle, member[0], member[1], writer, force)

            await self._pipeline([f for f in files if f[1].size > SMALL_FILE], receive,
                                 _nothing, LARGE_WINDOW)
            for entry in entries:
                if entry.kind == "link":
                    await self._in_worker(writer.link, entry.rel, entry.target,
                                          entry.atime_ns, entry.mtime_ns)
                    self._files_done(1)
            await self._in_worker(writer.commit, _dir_metas(dirs))
        except BaseException:
            if writer is not None:
                await asyncio.shield(self._in_worker(writer.abort))
            raise
        finally:
            await self._best_effort(FcopyOp.ABORT, {"tree": handle})
        self._stats.directories = len(dirs)
        return writer.top

    def _local_tree(self, source: str, destination: str, name: str, create: bool,
                    force: bool) -> TreeWriter:
        token = resume_token("from-guest-tree", source, 0, 0, f"{destination}\0{name}")
        return open_tree(self._local, destination, name, create=create, force=force,
                         tag=token, what="copying to the host", index=self._index)

    async def _get_batches(self, handle: int, writer: TreeWriter,
                           batches: list[list[tuple[int, Entry]]]) -> None:
        writes: deque[asyncio.Future[Any]] = deque()

        async def ask(batch: list[tuple[int, Entry]]) -> Received:
            return await self._call(FcopyOp.TREE_GET, encode_json(
                {"tree": handle, "files": [i for i, _ in batch]}), DATA_TIMEOUT)

        async def got(batch: list[tuple[int, Entry]], raw: Received) -> None:
            head, data = decode_json_raw(raw)
            lines = head.get("files")
            if not isinstance(lines, list) or len(lines) != len(batch):
                raise ServiceError("failed", "the guest answered another batch than asked")
            # Written one batch behind the answers, in the worker thread.
            writes.append(asyncio.ensure_future(self._in_worker(
                _write_batch, writer, batch, lines, data)))
            while len(writes) > 1 or (writes and writes[0].done()):
                self._written(writer, await writes.popleft())

        try:
            await self._pipeline(batches, ask, got)
            while writes:
                self._written(writer, await writes.popleft())
        finally:
            for fut in writes:
                fut.cancel()

    def _written(self, writer: TreeWriter, results: list[tuple[str, int, str, bool]]) -> None:
        """Account for a batch written on this machine: ``(rel, size, sha256 or why
        skipped, skipped)`` per file."""
        for rel, size, digest, skipped in results:
            path = f"{writer.top.rstrip('/')}/{rel}"
            if skipped:
                self._stats.skipped.append((path, digest))
                continue
            self._stats.sent += size
            self.progress.bytes_done += size
            self.progress.current = shown(path)
            self._stats.items.append({"Path": self.progress.current, "Bytes": size,
                                      "Sha256": digest})
        self._files_done(len(results))

    async def _receive_member(self, handle: int, index: int, entry: Entry, writer: TreeWriter,
                              force: bool) -> None:
        self.progress.current = entry.rel
        raw = await self._call(FcopyOp.OPEN_READ, encode_json(
            {"tree": handle, "index": index, "inline_max": self.recv_chunk,
             "owner": self.owner}), DATA_TIMEOUT)
        info, inline = decode_json_raw(raw)
        member = int(info.get("handle", 0))
        if not member:
            self._written(writer, await self._in_worker(
                _write_batch, writer, [(index, entry)],
                [[len(inline), int(info["mtime_ns"]), info["sha256"]]], inline))
            return
        try:
            dir_fd, name = await self._in_worker(writer.large, entry.rel)
        except BaseException:
            await self._best_effort(FcopyOp.ABORT, {"handle": member})
            raise
        receiver = self._receiver(info, dir_fd, name, f"{writer.top}/{entry.rel}", force=force,
                                  index=None)

        def adopt(r: Receiver) -> None:
            held, r.held = r.held, None
            writer.adopt(entry.rel, r.part, r.record, held)

        await self._stream_from_guest(receiver, member, adopt)


async def _nothing(job: Any, result: Any) -> None:
    """A pipeline's jobs that finish on their own."""


def _read_batch(reader: TreeSource, job: dict[str, Any]) -> tuple[list[list[Any]], bytes]:
    lines, chunks = [], []
    for _, entry in job["files"]:
        data, st, digest = reader.read(entry)
        lines.append([entry.rel, len(data), st.st_mode & 0o7777, st.st_atime_ns,
                      st.st_mtime_ns, digest])
        chunks.append(data)
    return lines, b"".join(chunks)


def _write_batch(writer: TreeWriter, batch: list[tuple[int, Entry]], lines: list[Any],
                 data: memoryview) -> list[tuple[str, int, str, bool]]:
    """Write a batch the guest sent; ``(rel, size, sha256 or why skipped, skipped)`` each."""
    results, at = [], 0
    for (_, entry), (size, mtime_ns, digest) in zip(batch, lines, strict=True):
        if size < 0:  # gone between the walk and the read
            results.append((entry.rel, 0, str(digest), True))
            continue
        mine = writer.put(entry.rel, data[at : at + size], mode=entry.mode,
                          atime_ns=entry.atime_ns, mtime_ns=mtime_ns, sha256=str(digest))
        at += size
        results.append((entry.rel, size, mine, False))
    return results
