"""Guest Service Interface over qemu-ga: Copy-VMFile's operations on guest-file-*.

The host's copy engine (vmis.services.fcopy.engine, unchanged) drives the
operations of docs/services/fcopy.md §2; this translation carries out each
with qemu-ga, file data in base64 (qemu-ga's only form):

====================== ========================================================
WRITE / READ           one guest-file-write / guest-file-read each, several in
                       flight (the engine's window: qemu-ga answers in order);
                       the chunk is :data:`WRITE_CHUNK` / :data:`READ_CHUNK`
                       (bench/qga_copy.py measured them), set through the
                       link's payload limits
OPEN_WRITE / PUT       the destination resolved by Copy-VMFile's rules (§3.1);
                       with guest-exec, a partial file
                       ``.<name>.<token16>.vmis-part`` beside it, resumed when
                       its prefix hashes the same; without, the destination
                       itself (qemu-ga cannot rename)
COMMIT                 with guest-exec one guest program: ``sha256sum`` of the
                       partial file against the host's hash, mode and times,
                       ``ln`` (``mv -f`` with -Force) into place, ``sync``;
                       without, the host's own hash only
OPEN_READ / SEEK /     the guest file by guest-file-open; its SHA-256 from
CLOSE                  ``sha256sum`` in the guest with guest-exec, else hashed
                       on the host as it arrives
STAT / MKDIR / LIST /  ``stat``, ``mkdir``, ``find``, ``chmod``/``touch``
SETMETA                through guest-exec; STAT without it from
                       guest-file-open alone, the others refused
====================== ========================================================

qemu-ga has no policy of allowed directories (the vmis agent's
``allowed_roots``): the guest's administrator allows or blocks the file
commands as a whole. A ``..`` component is refused as by the vmis agent.
qemu-ga's handles outlive a connection; the link records every handle it
opens (``LinkContext.handles``) and a new link closes those an old one left.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
from dataclasses import dataclass, field
from typing import Any

from vmis.errors import RemoteServiceError
from vmis.links.qemu_ga import guest_exec
from vmis.links.qemu_ga.guest_files import GuestStat, exec_stat, listing, probe, sha256_of
from vmis.links.qemu_ga.translator import LinkContext, Translator, json_body, split_payload
from vmis.protocol import Payload, Received, encode_json, encode_json_raw
from vmis.services.catalog import by_key
from vmis.services.fcopy import LIST_PAGE, FcopyOp

__all__ = ["READ_CHUNK", "WRITE_CHUNK", "FcopyTranslator"]

SPEC = by_key("fcopy")
#: bytes of file data per guest-file-write: qemu-ga's JSON lexer takes every
#: base64 character one at a time, so its CPU sets the pace whatever the size;
#: 1 MiB keeps a request's latency short next to the heartbeat's pings
WRITE_CHUNK = 1024 * 1024
#: bytes per guest-file-read (qemu-ga allows 48 MiB)
READ_CHUNK = 4 * 1024 * 1024

#: the guest program COMMIT runs: verify, mode and times, into place, durable.
#: $1 partial, $2 destination, $3 mode (octal), $4 mtime, $5 atime (s.ns),
#: $6 "force" or not, $7 the host's SHA-256
_COMMIT = r"""set -e
got=$(sha256sum < "$1") && got=${got%% *}
if [ "$got" != "$7" ]; then rm -f -- "$1"; echo "sha256 $got" >&2; exit 3; fi
chmod "$3" -- "$1"
touch -m -d "@$4" -- "$1" && touch -a -d "@$5" -- "$1"
if [ "$6" = force ]; then mv -f -T -- "$1" "$2"; else ln -T -- "$1" "$2"; rm -f -- "$1"; fi
sync -- "$2" 2>/dev/null || sync
echo "$got"
"""


@dataclass
class _Write:
    qga: int
    destination: str
    #: what qemu-ga writes: the partial file, or the destination itself without guest-exec
    partial: str
    size: int
    #: the offset the next WRITE must name
    expected: int
    mode: int
    atime_ns: int
    mtime_ns: int
    force: bool


@dataclass
class _Read:
    qga: int
    path: str
    size: int
    expected: int
    #: the hash of what was read, for a guest that cannot hash (no guest-exec)
    hasher: Any = field(default_factory=hashlib.sha256)


def _name(value: object) -> str:
    if not isinstance(value, str) or not value or "/" in value or value in (".", "..") \
            or "\0" in value:
        raise RemoteServiceError("bad-request", f"not a valid file name: {value!r}")
    return value


def _path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise RemoteServiceError("bad-request", f"not an absolute guest path: {value!r}")
    if ".." in value.split("/"):
        raise RemoteServiceError("denied", f"{value}: a '..' component is not allowed")
    return value


def _seconds(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


class FcopyTranslator(Translator):
    """Copy-VMFile's operations on qemu-ga's file commands (and coreutils, where allowed)."""

    spec = SPEC

    def __init__(self, link: LinkContext) -> None:
        super().__init__(link)
        self.ops = {
            FcopyOp.STAT: self._stat, FcopyOp.MKDIR: self._mkdir,
            FcopyOp.OPEN_WRITE: self._open_write, FcopyOp.WRITE: self._write,
            FcopyOp.COMMIT: self._commit, FcopyOp.ABORT: self._abort, FcopyOp.PUT: self._put,
            FcopyOp.SETMETA: self._setmeta, FcopyOp.OPEN_READ: self._open_read,
            FcopyOp.READ: self._read, FcopyOp.SEEK: self._seek, FcopyOp.CLOSE: self._close,
            FcopyOp.LIST: self._list,
        }
        self._writes: dict[int, _Write] = {}
        self._reads: dict[int, _Read] = {}
        self._next = 1
        self._listings: dict[str, tuple[list[dict[str, Any]], list[str]]] = {}

    @property
    def _exec(self) -> bool:
        return self.link.agent.can_exec

    def _needs_exec(self, what: str) -> None:
        if not self._exec:
            raise RemoteServiceError(
                "unknown-op", f"{self.link.agent.label} cannot {what} without guest-exec "
                              "(blocked, or not a POSIX guest)")

    def _handle(self) -> int:
        handle = self._next
        self._next += 1
        return handle

    # Section: paths

    async def _what_is(self, path: str) -> GuestStat:
        return await exec_stat(self.link, path) if self._exec else await probe(self.link, path)

    async def _stat(self, payload: Payload, timeout: float | None) -> Received:
        return encode_json((await self._what_is(_path(json_body(payload).get("path")))).to_json())

    async def _mkdir(self, payload: Payload, timeout: float | None) -> Received:
        body = json_body(payload)
        path = _path(body.get("path")).rstrip("/") or "/"
        self._needs_exec("make directories")
        await self._make_directory(path, bool(body.get("parents")))
        return encode_json({"path": path})

    async def _make_directory(self, path: str, parents: bool) -> None:
        found = await exec_stat(self.link, path)
        if found.type == "dir":
            return
        if found.type != "none":
            raise RemoteServiceError("exists", f"{path} exists in the guest and is not a "
                                               "directory")
        try:
            await guest_exec.check_output(self.link, ["mkdir", *(["-p"] if parents else []),
                                                      "--", path])
        except RemoteServiceError as exc:
            if exc.code == "not-found":
                raise RemoteServiceError("not-found", f"{posixpath.dirname(path)} does not "
                                         "exist in the guest (-CreateFullPath creates it)"
                                         ) from None
            raise

    async def _destination(self, body: dict[str, Any]) -> str:
        """Where a file goes, by Copy-VMFile's rules (docs/services/fcopy.md §3.1)."""
        path, name = _path(body.get("path")), _name(body.get("name"))
        create = bool(body.get("create_path"))
        if body.get("exact"):
            destination = path
        elif path.endswith("/"):
            directory = path.rstrip("/") or "/"
            if create:
                self._needs_exec("create directories (-CreateFullPath)")
                await self._make_directory(directory, True)
            destination = posixpath.join(directory, name)
        else:
            found = await self._what_is(path)
            if found.type == "dir":
                return await self._check_target(posixpath.join(path, name), body)
            destination = path
            if create:
                self._needs_exec("create directories (-CreateFullPath)")
                await self._make_directory(posixpath.dirname(path) or "/", True)
        return await self._check_target(destination, body)

    async def _check_target(self, destination: str, body: dict[str, Any]) -> str:
        found = await self._what_is(destination)
        if found.type in ("dir", "other", "link"):
            raise RemoteServiceError("exists", f"{destination} exists in the guest and is not "
                                               "a file")
        if found.type == "file" and not body.get("force"):
            raise RemoteServiceError("exists", f"{destination} exists in the guest (-Force "
                                               "overwrites it)")
        return destination

    # Section: into the guest

    async def _open(self, path: str, mode: str) -> int:
        try:
            handle = int(await self.link.call("guest-file-open", {"path": path, "mode": mode}))
        except RemoteServiceError as exc:
            if exc.code == "not-found":
                raise RemoteServiceError("not-found", f"{posixpath.dirname(path)} does not exist "
                                         "in the guest (-CreateFullPath creates it)") from None
            raise
        self.link.handles.add(handle)
        return handle

    async def _close_qga(self, handle: int) -> None:
        self.link.handles.discard(handle)
        await self.link.call("guest-file-close", {"handle": handle})

    async def _start_write(self, body: dict[str, Any], resume: bool) -> tuple[_Write, str | None]:
        destination = await self._destination(body)
        size = int(body.get("size") or 0)
        partial, offset, prefix = destination, 0, None
        if self._exec:
            directory, name = posixpath.split(destination)
            token = str(body.get("token") or "")[:16]
            partial = posixpath.join(directory, f".{name}.{token}.vmis-part")
            found = await exec_stat(self.link, partial) if resume else None
            if found is not None and found.type == "file" and 0 < found.size <= size:
                offset = found.size
                prefix = await sha256_of(self.link, partial, offset)
            else:
                # a partial file of another token (the source changed) is stale
                await guest_exec.run(self.link, [
                    "sh", "-c", 'rm -f -- "$1"/."$2".*.vmis-part', "sh", directory, name])
        qga = await self._open(partial, "a" if offset else "w")
        write = _Write(qga, destination, partial, size, offset, int(body.get("mode") or 0o644),
                       int(body.get("atime_ns") or 0), int(body.get("mtime_ns") or 0),
                       bool(body.get("force")))
        return write, prefix

    async def _open_write(self, payload: Payload, timeout: float | None) -> Received:
        body = json_body(payload)
        write, prefix = await self._start_write(body, bool(body.get("resume")))
        handle = self._handle()
        self._writes[handle] = write
        return encode_json({"handle": handle, "path": write.destination,
                            "offset": write.expected, "prefix_sha256": prefix})

    async def _write(self, payload: Payload, timeout: float | None) -> Received:
        body, data = split_payload(payload)
        write = self._writes.get(body.get("handle"))  # type: ignore[arg-type]
        if write is None:
            raise RemoteServiceError("bad-request", f"no open copy {body.get('handle')}")
        if body.get("offset") != write.expected:
            raise RemoteServiceError("bad-request", f"WRITE at {body.get('offset')}, expected "
                                                    f"{write.expected}")
        write.expected += len(data)
        await self._write_data(write, data, timeout)
        return b""

    async def _write_data(self, write: _Write, data: memoryview | bytes,
                          timeout: float | None) -> None:
        answer = await self.link.call("guest-file-write", {
            "handle": write.qga, "buf-b64": base64.b64encode(data).decode("ascii")},
            timeout=timeout)
        if answer.get("count") != len(data):
            raise RemoteServiceError("failed", f"{write.partial}: qemu-ga wrote "
                                               f"{answer.get('count')} of {len(data)} bytes")

    async def _commit(self, payload: Payload, timeout: float | None) -> Received:
        body = json_body(payload)
        write = self._writes.pop(body.get("handle"), None)  # type: ignore[arg-type]
        if write is None:
            raise RemoteServiceError("bad-request", f"no open copy {body.get('handle')}")
        return encode_json(await self._finish(write, str(body.get("sha256")), timeout))

    async def _finish(self, write: _Write, digest: str, timeout: float | None) -> dict[str, Any]:
        await self._close_qga(write.qga)  # qemu-ga flushes its stdio buffer on close
        if write.expected != write.size:
            raise RemoteServiceError("failed", f"{write.destination}: {write.expected} of "
                                               f"{write.size} bytes arrived")
        if not self._exec:
            # The guest cannot hash: the host's digest of what qemu-ga counted as written.
            return {"path": write.destination, "size": write.size, "sha256": digest}
        done = await guest_exec.run(self.link, [
            "sh", "-c", _COMMIT, "sh", write.partial, write.destination,
            f"{write.mode & 0o7777:o}", _seconds(write.mtime_ns), _seconds(write.atime_ns),
            "force" if write.force else "", digest], timeout=timeout or 900)
        if done.exitcode == 3:
            raise RemoteServiceError("failed", f"{write.destination}: the guest's SHA-256 "
                                     f"{done.why().removeprefix('sha256 ')} is not the host's "
                                     f"{digest}; the partial file was removed")
        if not done.ok:
            code = "exists" if "File exists" in done.why() else "failed"
            raise RemoteServiceError(code, f"{write.destination}: {done.why()}")
        return {"path": write.destination, "size": write.size,
                "sha256": done.stdout.decode().strip()}

    async def _abort(self, payload: Payload, timeout: float | None) -> Received:
        body = json_body(payload)
        handle = body.get("handle")
        write = self._writes.pop(handle, None)  # type: ignore[arg-type]
        read = self._reads.pop(handle, None)  # type: ignore[arg-type]
        if write is not None:
            await self._close_qga(write.qga)
            if self._exec and not body.get("keep"):
                await guest_exec.run(self.link, ["rm", "-f", "--", write.partial])
        elif read is not None:
            await self._close_qga(read.qga)
        return encode_json({})

    async def _put(self, payload: Payload, timeout: float | None) -> Received:
        body, data = split_payload(payload)
        write, _ = await self._start_write(body, resume=False)
        try:
            parts = [data[i:i + WRITE_CHUNK] for i in range(0, len(data), WRITE_CHUNK)]
            for part in parts:
                write.expected += len(part)
                await self._write_data(write, part, timeout)
        except BaseException:
            await self._close_qga(write.qga)
            raise
        return encode_json(await self._finish(write, str(body.get("sha256")), timeout))

    async def _setmeta(self, payload: Payload, timeout: float | None) -> Received:
        body = json_body(payload)
        path = _path(body.get("path"))
        self._needs_exec("set a directory's mode and times")
        await guest_exec.check_output(self.link, [
            "sh", "-c", 'chmod "$2" -- "$1" && touch -m -d "@$3" -- "$1" && '
                        'touch -a -d "@$4" -- "$1"', "sh", path,
            f"{int(body.get('mode') or 0o755) & 0o7777:o}",
            _seconds(int(body.get("mtime_ns") or 0)), _seconds(int(body.get("atime_ns") or 0))])
        return encode_json({})

    # Section: out of the guest

    async def _open_read(self, payload: Payload, timeout: float | None) -> Received:
        body = json_body(payload)
        path = _path(body.get("path"))
        found = await self._what_is(path)
        if found.type == "none":
            raise RemoteServiceError("not-found", f"{path} does not exist in the guest")
        if found.type != "file":
            raise RemoteServiceError("bad-request", f"{path} is not a regular file")
        qga = await self._open(path, "r")
        read = _Read(qga, path, found.size, 0)
        info = found.to_json()
        inline = int(body.get("inline_max") or 0)
        if found.size > inline:
            handle = self._handle()
            self._reads[handle] = read
            return b"".join(encode_json_raw({**info, "handle": handle}))
        try:
            data = await self._read_data(read, found.size, timeout)
        finally:
            await self._close_qga(qga)
        digest = await self._digest(read)
        return b"".join(encode_json_raw({**info, "handle": 0, "size": len(data),
                                         "sha256": digest}, data))

    async def _read_data(self, read: _Read, length: int, timeout: float | None) -> bytes:
        parts = []
        while length > 0:
            count = min(length, READ_CHUNK)
            answer = await self.link.call("guest-file-read",
                                          {"handle": read.qga, "count": count}, timeout=timeout)
            data = base64.b64decode(answer.get("buf-b64", ""))
            read.hasher.update(data)
            parts.append(data)
            length -= len(data)
            if len(data) < count:
                if length:
                    raise RemoteServiceError("failed", f"{read.path} changed while being "
                                                       "copied (it is shorter now)")
                break
        return b"".join(parts)

    async def _digest(self, read: _Read) -> str:
        return await sha256_of(self.link, read.path) if self._exec else read.hasher.hexdigest()

    async def _read(self, payload: Payload, timeout: float | None) -> Received:
        body = json_body(payload)
        read = self._reads.get(body.get("handle"))  # type: ignore[arg-type]
        if read is None:
            raise RemoteServiceError("bad-request", f"no open copy {body.get('handle')}")
        if body.get("offset") != read.expected:
            raise RemoteServiceError("bad-request", f"READ at {body.get('offset')}, expected "
                                                    f"{read.expected}")
        length = int(body.get("length") or 0)
        read.expected += length
        answer = await self.link.call("guest-file-read", {"handle": read.qga, "count": length},
                                      timeout=timeout)
        data = base64.b64decode(answer.get("buf-b64", ""))
        if len(data) != length:
            raise RemoteServiceError("failed", f"{read.path} changed while being copied "
                                               f"({len(data)} of {length} bytes read)")
        read.hasher.update(data)
        return data

    async def _seek(self, payload: Payload, timeout: float | None) -> Received:
        body = json_body(payload)
        read = self._reads.get(body.get("handle"))  # type: ignore[arg-type]
        if read is None:
            raise RemoteServiceError("bad-request", f"no open copy {body.get('handle')}")
        offset = int(body.get("offset") or 0)
        # Only reached with guest-exec: without it a guest file's times are
        # unknown, so no two copies share a resume token.
        self._needs_exec("resume a copy")
        prefix = await sha256_of(self.link, read.path, offset)
        await self.link.call("guest-file-seek", {"handle": read.qga, "offset": offset,
                                                 "whence": "set"})
        read.expected = offset
        return encode_json({"prefix_sha256": prefix})

    async def _close(self, payload: Payload, timeout: float | None) -> Received:
        body = json_body(payload)
        read = self._reads.pop(body.get("handle"), None)  # type: ignore[arg-type]
        if read is None:
            raise RemoteServiceError("bad-request", f"no open copy {body.get('handle')}")
        await self._close_qga(read.qga)
        return encode_json({"size": read.size, "sha256": await self._digest(read)})

    async def _list(self, payload: Payload, timeout: float | None) -> Received:
        body = json_body(payload)
        path = _path(body.get("path"))
        self._needs_exec("list a directory (-Recurse)")
        start = int(body.get("start") or 0)
        if start == 0 or path not in self._listings:
            self._listings[path] = await listing(self.link, path)
        entries, skipped = self._listings[path]
        page = entries[start:start + LIST_PAGE]
        more = start + LIST_PAGE < len(entries)
        if not more:
            self._listings.pop(path, None)
        return encode_json({"path": path, "entries": page,
                            "next": start + LIST_PAGE if more else None,
                            "skipped": skipped if start == 0 else []})

    def close(self) -> None:
        self._writes.clear()
        self._reads.clear()

