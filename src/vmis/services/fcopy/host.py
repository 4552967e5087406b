"""Host half of the Guest Service Interface: Copy-VMFile, Get-VMFileCopy, Stop-VMFileCopy.

The host manager does every copy (it holds the link); the API and the CLI
only start it and show its progress (docs/services/fcopy.md §7). The copy
itself is :class:`~vmis.services.fcopy.engine.CopyEngine`'s; the copies in
progress are :class:`~vmis.services.fcopy.copies.CopyRegistry`'s, each a
task of the manager's that its client can only stop (§4.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vmis.errors import ConfigError, VmisError
from vmis.protocol import decode_json, encode_json
from vmis.services.catalog import by_key
from vmis.services.fcopy import PARTIAL_MAX_AGE, SWEEP_INTERVAL, TREES, FcopyOp
from vmis.services.fcopy.copies import CopyRegistry, RunningCopy
from vmis.services.fcopy.engine import CopyEngine
from vmis.services.fcopy.file_copier import CopyProgress
from vmis.services.fcopy.partials import PartialIndex
from vmis.services.fcopy.paths import RootedPaths, shown
from vmis.services.fcopy.tree_source import LINK_POLICIES
from vmis.services.host_half import HostService, VmContext, VmPart

__all__ = ["SERVICE", "SPEC", "FcopyHost"]

SPEC = by_key("fcopy")
FILE_SOURCES = ("Host", "Guest")


def _normal(path: str) -> str:
    """A host path without ``.`` and ``..`` components, a trailing "/" kept."""
    normal = os.path.normpath(path)
    return normal + "/" if path.endswith("/") and normal != "/" else normal


class FcopyHost(HostService[VmPart]):
    """The Guest Service Interface on the host: Copy-VMFile both ways."""

    spec = SPEC
    needs = frozenset(FcopyOp)

    def __init__(self, host: Any) -> None:
        super().__init__(host)
        self.copies = CopyRegistry()
        self._local = RootedPaths(Path("/"), ["/"])
        self._indexes: dict[str, PartialIndex] = {}
        self._sweeper: asyncio.Task[None] | None = None
        #: seconds a host partial file may stay untouched (tests shorten it)
        self.max_age = PARTIAL_MAX_AGE

    def new_part(self, vm: VmContext) -> VmPart:
        return VmPart(vm)

    # Section: partial files on this machine

    def index_of(self, vm_id: str) -> PartialIndex:
        """Where copies out of one VM's guest left partial files on this machine."""
        index = self._indexes.get(vm_id)
        if index is None:
            folder = getattr(self.host, "data_dir", None)
            index = PartialIndex(Path(folder) / "fcopy" / f"{vm_id}.json" if folder else None,
                                 self._local)
            self._indexes[vm_id] = index
        return index

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="fcopy-sweep")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for copy in self.copies.running():
            copy.stop("the host manager is stopping")

    async def _sweep_forever(self) -> None:
        folder = getattr(self.host, "data_dir", None)
        while True:
            if folder is not None and (Path(folder) / "fcopy").is_dir():
                for file in (Path(folder) / "fcopy").glob("*.json"):
                    self.index_of(file.stem)
            for index in list(self._indexes.values()):
                try:
                    await asyncio.to_thread(index.sweep, self.max_age)
                except OSError as exc:
                    self.log.warning("sweeping partial files: %s", exc)
            await asyncio.sleep(SWEEP_INTERVAL)

    # Section: Copy-VMFile

    def prepare_copy(self, vm: str, source: str, destination: str,
                     file_source: str, links: str = "skip") -> VmContext:
        """Check what can be checked before a copy starts; return the VM's session.

        :raise NotFoundError: For an unknown VM.
        :raise ServiceUnavailable: When the Guest Service Interface cannot answer.
        :raise ConfigError: For a relative path or an unknown -FileSource.
        """
        if file_source not in FILE_SOURCES:
            raise ConfigError(f"-FileSource must be Host or Guest, not {file_source!r}")
        if links not in LINK_POLICIES:
            raise ConfigError(f"links must be one of {', '.join(LINK_POLICIES)}")
        host_path, guest_path = (source, destination) if file_source == "Host" else \
            (destination, source)
        if not os.path.isabs(host_path):
            raise ConfigError(f"the host path must be absolute: {host_path!r}")
        if not guest_path.startswith("/"):
            raise ConfigError(f"the guest path must be absolute: {guest_path!r}")
        session = self.host.session(vm)
        session.require(SPEC)
        return session

    async def start_copy(self, vm: str, source: str, destination: str, file_source: str, *,
                         create_full_path: bool = False, force: bool = False,
                         recurse: bool = False, links: str = "skip") -> RunningCopy:
        """Start Copy-VMFile as a task of the manager's; its result is ``copy.task``'s.

        :raise TargetBusy: When the same copy is running already.
        :raise VmisError: What :meth:`prepare_copy` raises.
        """
        session = self.prepare_copy(vm, source, destination, file_source, links)
        if file_source == "Host":
            source = _normal(source)
        else:
            destination = _normal(destination)
        copy = await self.copies.begin(session.vm.id, session.vm.name, file_source, source,
                                       destination)
        try:
            engine = self._engine(session, copy, links)
        except BaseException:
            self.copies.end(copy)
            raise
        copy.progress = engine.progress
        copy.task = asyncio.ensure_future(self._run(session, copy, engine, create=create_full_path,
                                                    force=force, recurse=recurse))
        return copy

    def _engine(self, session: VmContext, copy: RunningCopy, links: str) -> CopyEngine:
        link = session.link
        if link is None:
            session.require(SPEC)
        assert link is not None
        offer = session.guest.get(SPEC.key)

        def request(op: int, payload: Any, timeout: float | None,
                    into: memoryview | None = None) -> Any:
            return session.request(SPEC, op, payload, timeout=timeout, into=into)

        return CopyEngine(request, peer_max_payload=link.peer_max_payload,
                          own_max_payload=link.max_payload, progress=copy.on_progress,
                          owner=copy.owner, index=self.index_of(session.vm.id),
                          version=offer.version if offer and offer.version else (1, 0),
                          links=links)

    async def _run(self, session: VmContext, copy: RunningCopy, engine: CopyEngine, *,
                   create: bool, force: bool, recurse: bool) -> dict[str, Any]:
        try:
            if copy.file_source == "Host":
                result = await engine.to_guest(Path(copy.source), copy.destination,
                                               create_full_path=create, force=force,
                                               recurse=recurse)
            else:
                result = await engine.from_guest(copy.source, copy.destination,
                                                 create_full_path=create, force=force,
                                                 recurse=recurse)
        except BaseException:
            if engine.streams:
                # However the copy ended, the guest lets go of everything it opened
                # for it (its partial files stay for a resume).
                with contextlib.suppress(BaseException):
                    await asyncio.shield(self._let_go(session, copy.owner))
            raise
        finally:
            engine.close()
            self.copies.end(copy)
        session.log.info("Copy-VMFile %s %s -> %s: %d files, %d bytes (%d sent) in %.3f s",
                         copy.file_source, shown(copy.source), result["Destination"],
                         result["Files"], result["Bytes"], result["BytesSent"],
                         result["Seconds"])
        return {"VMName": session.vm.name, **result}

    @staticmethod
    async def _let_go(session: VmContext, owner: str) -> None:
        with contextlib.suppress(VmisError, OSError):
            await session.request(SPEC, FcopyOp.ABORT, encode_json({"owner": owner,
                                                                    "keep": True}), timeout=10)

    async def copy_vm_file(self, vm: str, source: str, destination: str, file_source: str, *,
                           create_full_path: bool = False, force: bool = False,
                           recurse: bool = False, links: str = "skip",
                           progress: Callable[[CopyProgress], None] | None = None
                           ) -> dict[str, Any]:
        """Copy-VMFile: copy a file or, with *recurse*, a tree between host and guest.

        :param file_source: ``Host`` (host to guest, Hyper-V's only direction) or
            ``Guest`` (guest to host).
        :param links: what a tree's symbolic links become: ``skip``, ``copy``, ``follow``.
        :return: the result of docs/services/fcopy.md §7, with ``VMName``.
        :raise VmisError: Why the copy could not be made.
        """
        copy = await self.start_copy(vm, source, destination, file_source,
                                     create_full_path=create_full_path, force=force,
                                     recurse=recurse, links=links)
        if progress is not None:
            copy.listeners.append(progress)
        assert copy.task is not None
        try:
            return await asyncio.shield(copy.task)
        except asyncio.CancelledError:
            copy.stop("its caller was cancelled")
            raise

    # Section: Get-VMFileCopy, Stop-VMFileCopy

    async def list_copies(self, patterns: Sequence[str]) -> list[dict[str, Any]]:
        """Get-VMFileCopy: copies running on this host, and what each guest and this
        host hold of copies (open handles whose copy is gone, partial files)."""
        rows: list[dict[str, Any]] = []
        for session in self.host.match(list(patterns) or ["*"]):
            rows += [c.row() for c in self.copies.running(session.vm.id)]
            rows += await self._guest_rows(session)
            parts = await asyncio.to_thread(self.index_of(session.vm.id).scan)
            rows += [_partial_row(session.vm.name, "Guest", p.to_json()) for p in parts
                     if not p.writing]
        return rows

    async def _guest_rows(self, session: VmContext) -> list[dict[str, Any]]:
        offer = session.guest.get(SPEC.key)
        if offer is None or offer.version is None or offer.version < TREES or \
                not session.connected:
            return []
        try:
            answer = decode_json(await session.request(SPEC, FcopyOp.COPIES, encode_json({}),
                                                       timeout=30))
        except VmisError as exc:
            return [{"VMName": session.vm.name, "Id": None, "State": "Unknown",
                     "Error": f"cannot ask the guest: {exc}"}]
        owners = {c.owner for c in self.copies.running(session.vm.id)}
        rows = []
        for item in answer.get("open", []):
            if item.get("owner") in owners:
                continue  # shown as its running copy
            rows.append({"VMName": session.vm.name, "Id": None, "State": "Orphaned",
                         "FileSource": "Host" if item.get("direction") == "to-guest"
                         else "Guest", "Path": shown(str(item.get("path"))),
                         "Bytes": item.get("done"), "Size": item.get("size"),
                         "Handle": item.get("handle"), "Idle": item.get("idle")})
        rows += [_partial_row(session.vm.name, "Host", p) for p in answer.get("partials", [])
                 if not p.get("writing")]
        return rows

    async def stop_copies(self, vm: str, ids: Sequence[int] = (), paths: Sequence[str] = (),
                          everything: bool = False, discard: bool = False) -> dict[str, Any]:
        """Stop-VMFileCopy: stop running copies (by Id), give up what the guest holds of
        a destination (by path), or all of it; with *discard* remove their partial files.

        :raise NotFoundError: For an unknown VM or copy Id.
        """
        session = self.host.session(vm)
        chosen = self.copies.running(session.vm.id) if everything else \
            [self.copies.get(session.vm.id, i) for i in ids]
        for copy in chosen:
            copy.stop("Stop-VMFileCopy")
        tasks = [c.task for c in chosen if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        targets = list(paths)
        if discard:
            targets += [c.destination for c in chosen]
        closed: list[Any] = []
        removed: list[str] = []
        if targets or everything:
            closed, removed = await self._discard(session, targets, everything)
        return {"VMName": session.vm.name, "Stopped": [c.id for c in chosen],
                "Closed": closed, "Removed": [shown(p) for p in removed]}

    async def _discard(self, session: VmContext, targets: list[str],
                       everything: bool) -> tuple[list[Any], list[str]]:
        closed: list[Any] = []
        removed: list[str] = []
        offer = session.guest.get(SPEC.key)
        if offer is not None and offer.version is not None and offer.version >= TREES:
            for body in [{"all": True}] if everything else [{"path": p} for p in targets]:
                answer = decode_json(await session.request(SPEC, FcopyOp.DISCARD,
                                                           encode_json(body), timeout=60))
                closed += answer.get("closed", [])
                removed += answer.get("removed", [])
        wanted = {_normal(p) for p in targets}
        removed += await asyncio.to_thread(
            self.index_of(session.vm.id).discard,
            lambda p: not (everything or p.destination in wanted or p.path in wanted))
        return closed, removed


def _partial_row(vm: str, file_source: str, part: dict[str, Any]) -> dict[str, Any]:
    """A partial file's line in Get-VMFileCopy (*file_source*: where its copy came from)."""
    return {"VMName": vm, "Id": None, "State": "Partial", "FileSource": file_source,
            "Path": shown(str(part.get("destination"))), "Part": shown(str(part.get("part"))),
            "Bytes": part.get("size"), "Size": part.get("total"), "Age": part.get("age"),
            "Resumable": part.get("total") is not None and not part.get("tree")}


SERVICE = FcopyHost
