"""Guest half of Key-Value Pair Exchange (vmickvpexchange), docs/services/kvp.md.

The pools live in the hyperv-daemons' files (``[kvp] pool_dir``, default
``/var/lib/hyperv`` inside the agent's root), written through
:mod:`vmis.services.kvp.pool` only, so ``hv_kvp_daemon``, cloud-init,
azure-init and the Hyper-V daemon of :mod:`vmis.hyperv` read what this
service writes and the other way round.

What the service does:

- **host writes** (SET / DELETE requests) go to External, and the host facts
  to AutoExternal; **guest tools** (``vmis-guest kvp ...`` through the
  control socket) write Guest;
- **pushes, never polled**: the content of a pool goes to the host in POOL
  notifications when the session starts, when the service starts, after each
  write of its own, after a thaw, and when a pool file changes under it (a
  watcher stats the files every :data:`WATCH_INTERVAL` seconds and re-reads
  one whose inode, size or mtime moved; another process's write is seen at
  the next tick). The Auto items are recomputed every :data:`AUTO_INTERVAL`
  seconds and pushed when they differ;
- **frozen filesystems**: while ``ctx.frozen`` (a VSS backup) every write is
  refused with ``busy`` rather than queued in memory, so nothing acknowledged
  is ever lost with the process; the host keeps its writes pending and sends
  them again after the thaw, which the POOL pushes of the thaw announce.

Pool files are read and written in a worker thread: their ``fcntl`` lock may
be held by another process, and the event loop must not wait on it.

Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import vmis
from vmis.errors import KvpFormatError, KvpSizeError, NotFoundError, ServiceError
from vmis.protocol import RequestReceived, ServiceId, decode_json, encode_json
from vmis.services.catalog import by_key
from vmis.services.guest_half import GuestContext, GuestService
from vmis.services.kvp import (
    DEFAULT_POOL_DIR,
    HOST_POOLS,
    NOTIFY_CHUNK,
    KvpOp,
    check_item,
    parse_pool,
    pool_name,
    wire_text,
)
from vmis.services.kvp.intrinsic import Intrinsics, fqdn_for, read_os_info, release_root
from vmis.services.kvp.netinfo import NetInfo, NetlinkInfo
from vmis.services.kvp.pool import KvpPools, Pool

__all__ = ["AUTO_INTERVAL", "SERVICE", "WATCH_INTERVAL", "KvpService"]

#: seconds between two looks at the pool files' inode, size and mtime
WATCH_INTERVAL = 1.0
#: seconds between two computations of the Auto items (addresses change rarely)
AUTO_INTERVAL = 10.0
#: the pools kept in files (Auto is computed; its file stays empty, as with hv_kvp_daemon)
FILE_POOLS = (Pool.EXTERNAL, Pool.GUEST, Pool.AUTO_EXTERNAL, Pool.AUTO_INTERNAL)
#: where ``kvp get`` without a pool looks, in order
SEARCH_ORDER = (Pool.EXTERNAL, Pool.GUEST, Pool.AUTO, Pool.AUTO_EXTERNAL, Pool.AUTO_INTERNAL)

Items = list[tuple[str, str]]
_Signature = tuple[int, int, int, int] | None
_T = TypeVar("_T")


def _signature(path: Path) -> _Signature:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


def _frozen_error() -> ServiceError:
    return ServiceError(
        "busy", "the guest's filesystems are frozen for a backup (VSS); KVP writes are "
        "refused until the thaw"
    )


def _item_error(exc: KvpFormatError) -> ServiceError:
    return ServiceError("too-large" if isinstance(exc, KvpSizeError) else "bad-request",
                        str(exc))


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise ServiceError("bad-request", f"{name!r} must be a string")
    return value


def _pool_arg(body: dict[str, Any], default: Pool) -> Pool:
    raw = body.get("pool")
    if raw is None:
        return default
    if not isinstance(raw, str | int) or isinstance(raw, bool):
        raise ServiceError("bad-request", "'pool' must be a pool name or number")
    try:
        return parse_pool(raw)
    except NotFoundError as exc:
        raise ServiceError("bad-request", str(exc)) from None


class KvpService(GuestService):
    """vmickvpexchange: the pool files, the Auto items, and pushes to the host."""

    spec = by_key("kvp")

    def __init__(self, ctx: GuestContext) -> None:
        super().__init__(ctx)
        #: the five pool files
        self.pools = KvpPools(ctx.path(getattr(ctx.config, "pool_dir", DEFAULT_POOL_DIR)))
        self._watch_error = ""
        net: NetInfo = ctx.adapters.get("net") or NetlinkInfo()
        self._addresses = net.addresses
        #: the Auto pool (OS facts re-read at each start, as the C daemon reads them at its start)
        self.intrinsics = self._new_intrinsics()
        self.handlers = {KvpOp.SET: self._host_set, KvpOp.DELETE: self._host_delete}
        self.control_ops = {
            "kvp.get": self._tool_get,
            "kvp.set": self._tool_set,
            "kvp.delete": self._tool_delete,
            "kvp.list": self._tool_list,
        }
        # pool -> (file signature, items) as last pushed; forgotten to force a push
        self._pushed: dict[Pool, tuple[_Signature, Items]] = {}
        self._push_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        ctx.freeze_listeners.append(self._on_freeze)

    def _new_intrinsics(self) -> Intrinsics:
        root = self.ctx.root
        intrinsics = Intrinsics(read_os_info(release_root(root)), self._addresses,
                                fqdn_for(root))
        intrinsics.version = vmis.__version__
        return intrinsics

    # Section: lifecycle

    async def on_start(self) -> None:
        self.intrinsics = self._new_intrinsics()
        if not self.ctx.frozen:
            # As hv_kvp_daemon at its start: the directory (0755) and all five files (0644).
            try:
                await asyncio.to_thread(self.pools.create)
            except OSError as exc:
                # Not fatal (hv_kvp_daemon would exit): the Auto items still reach
                # the host, and each write will say what is wrong.
                self.log.error("cannot create the KVP pool files in %s: %s",
                               self.pools.directory, exc.strerror or exc)
        self._pushed.clear()
        self.spawn(self._watch(), "watch")

    def on_session(self, running: bool) -> None:
        if running:
            self._push_all_soon()

    def _on_freeze(self, frozen: bool) -> None:
        if not frozen and self.running:
            # The host holds writes the freeze refused; a push tells it to send them.
            self._push_all_soon()

    def _push_all_soon(self) -> None:
        self._pushed.clear()
        self._wake.set()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        auto_due = 0.0
        while True:
            self._wake.clear()
            try:
                for pool in FILE_POOLS:
                    await self._push_file_pool(pool)
            except ServiceError as exc:
                # e.g. a pool file made unreadable: say so once, keep watching
                if str(exc) != self._watch_error:
                    self.log.warning("cannot read the pools: %s", exc)
                self._watch_error = str(exc)
            else:
                self._watch_error = ""
            if Pool.AUTO not in self._pushed or loop.time() >= auto_due:
                auto_due = loop.time() + AUTO_INTERVAL
                await self._push_auto()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_INTERVAL):
                    await self._wake.wait()

    # Section: pushes (docs/services/kvp.md §2.3)

    async def _push_file_pool(self, pool: Pool) -> None:
        """Push *pool* if its file changed since the last push (or none was made)."""
        async with self._push_lock:
            path = self.pools[pool].path
            signature = _signature(path)
            last = self._pushed.get(pool)
            if last is not None and last[0] == signature:
                return
            items = await self._io(self.pools[pool].items)
            # Looked up again: a new session may have asked for everything meanwhile.
            last = self._pushed.get(pool)
            if last is None or last[1] != items:
                self._notify_pool(pool, items)
            self._pushed[pool] = (signature, items)

    async def _push_auto(self) -> None:
        async with self._push_lock:
            items = await asyncio.to_thread(self.intrinsics.items)
            last = self._pushed.get(Pool.AUTO)  # after the await, as above
            if last is None or last[1] != items:
                self._notify_pool(Pool.AUTO, items)
            self._pushed[Pool.AUTO] = (None, items)

    def _notify_pool(self, pool: Pool, items: Items) -> None:
        # In parts of at most NOTIFY_CHUNK bytes, so that any peer takes them.
        parts: list[list[list[str]]] = [[]]
        size = 0
        for key, value in items:
            pair = [wire_text(key), wire_text(value)]
            n = len(json.dumps(pair, ensure_ascii=False).encode()) + 1
            if parts[-1] and size + n > NOTIFY_CHUNK:
                parts.append([])
                size = 0
            parts[-1].append(pair)
            size += n
        for index, part in enumerate(parts):
            payload = {"pool": int(pool), "part": index, "last": index == len(parts) - 1,
                       "items": part}
            self.ctx.notify(ServiceId.KVP, KvpOp.POOL, encode_json(payload))

    async def _pushed_after_write(self, pool: Pool) -> None:
        # A write of our own is pushed at once (not at the watcher's next tick),
        # and only while the service runs: a stopped service exchanges nothing.
        if self.running:
            self._pushed.pop(pool, None)
            await self._push_file_pool(pool)

    # Section: pool access

    async def _io(self, work: Callable[[], _T]) -> _T:
        try:
            return await asyncio.to_thread(work)
        except OSError as exc:
            raise ServiceError("failed", f"KVP pool files in {self.pools.directory}: "
                               f"{exc.strerror or exc}") from exc

    async def _write(self, pool: Pool, work: Callable[[], _T]) -> _T:
        if self.ctx.frozen:
            raise _frozen_error()

        def run() -> _T:
            self.pools.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            return work()

        # Under the push lock: the watcher must not push a batch half-written.
        async with self._push_lock:
            result = await self._io(run)
        await self._pushed_after_write(pool)
        return result

    def _items(self, pool: Pool) -> Items:
        if pool is Pool.AUTO:
            return self.intrinsics.items()
        return self.pools[pool].items()

    def _set_items(self, pool: Pool, items: Sequence[tuple[str, str]]) -> int:
        # Only keys whose value differs are written: the host facts arrive at
        # every session start and are usually unchanged.
        target = self.pools[pool]
        changed = 0
        for key, value in items:
            if target.get(key) != value:
                target.set(key, value)
                changed += 1
        return changed

    # Section: host requests (docs/services/kvp.md §2.1, §2.2)

    def _host_pool(self, body: dict[str, Any]) -> Pool:
        pool = _pool_arg(body, Pool.EXTERNAL)
        if pool not in HOST_POOLS:
            raise ServiceError("bad-request", f"the host writes External and AutoExternal, "
                                              f"not {pool_name(pool)}")
        return pool

    async def _host_set(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        pool = self._host_pool(body)
        raw = body.get("items")
        if not isinstance(raw, list) or not all(
            isinstance(i, list) and len(i) == 2 and all(isinstance(s, str) for s in i)
            for i in raw
        ):
            raise ServiceError("bad-request", "'items' must be a list of [key, value] strings")
        items = [(str(k), str(v)) for k, v in raw]
        for key, value in items:
            try:
                check_item(key, value)
            except KvpFormatError as exc:
                raise _item_error(exc) from None
        changed = await self._write(pool, lambda: self._set_items(pool, items))
        if changed:
            self.log.info("host set %d item(s) in %s", changed, pool_name(pool))
        return encode_json({"changed": changed})

    async def _host_delete(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        pool = self._host_pool(body)
        key = _text(body, "key")
        if not await self._write(pool, lambda: self.pools[pool].delete(key)):
            raise ServiceError("not-found", f"no key {key!r} in the {pool_name(pool)} pool")
        self.log.info("host removed %r from %s", key, pool_name(pool))
        return encode_json({"deleted": True})

    # Section: guest tools (docs/services/kvp.md §4)

    async def _tool_get(self, body: dict[str, Any]) -> Any:
        key = _text(body, "key")
        pools = (_pool_arg(body, Pool.EXTERNAL),) if body.get("pool") is not None \
            else SEARCH_ORDER
        for pool in pools:
            if pool is Pool.AUTO:
                found = dict(await asyncio.to_thread(self.intrinsics.items)).get(key)
            else:
                found = await self._io(functools.partial(self.pools[pool].get, key))
            if found is not None:
                return {"Pool": pool_name(pool), "Key": key, "Value": wire_text(found)}
        where = f"the {pool_name(pools[0])} pool" if len(pools) == 1 else "any pool"
        raise ServiceError("not-found", f"no key {key!r} in {where}")

    async def _tool_set(self, body: dict[str, Any]) -> Any:
        key, value = _text(body, "key"), _text(body, "value")
        pool = _pool_arg(body, Pool.GUEST)
        if pool is not Pool.GUEST:
            raise ServiceError("denied", f"the guest writes the Guest pool, not "
                                         f"{pool_name(pool)} (External and AutoExternal come "
                                         "from the host, Auto from the OS)")
        try:
            check_item(key, value)
        except KvpFormatError as exc:
            raise _item_error(exc) from None
        await self._write(pool, lambda: self.pools[pool].set(key, value))
        return {"Pool": pool_name(pool), "Key": key, "Value": value}

    async def _tool_delete(self, body: dict[str, Any]) -> Any:
        key = _text(body, "key")
        pool = _pool_arg(body, Pool.GUEST)
        if pool is Pool.AUTO:
            raise ServiceError("denied", "the Auto items are computed from the OS; there is "
                                         "nothing to delete")
        # Any file pool may be cleaned up from inside the guest, e.g. stale host
        # facts before an image is captured (WALinuxAgent #3276).
        if not await self._write(pool, lambda: self.pools[pool].delete(key)):
            raise ServiceError("not-found", f"no key {key!r} in the {pool_name(pool)} pool")
        return {"Pool": pool_name(pool), "Key": key}

    async def _tool_list(self, body: dict[str, Any]) -> Any:
        pools = (_pool_arg(body, Pool.EXTERNAL),) if body.get("pool") is not None \
            else tuple(Pool)
        rows = []
        for pool in pools:
            items = await self._io(functools.partial(self._items, pool))
            rows += [{"Pool": pool_name(pool), "Key": wire_text(k), "Value": wire_text(v)}
                     for k, v in items]
        return rows


#: the agent offers the service this module defines (vmis.guest.services)
SERVICE = KvpService
