"""Host half of Key-Value Pair Exchange, docs/services/kvp.md §3.

Two things live here per VM:

- **the guest's pools as last pushed** (POOL notifications): kept in memory
  only. They are the guest's to tell: after a host restart they come back
  with the first session, and until then there is nothing trustworthy to
  show. Get-VMKvp of a VM without a session shows what it last reported.
- **host writes not yet acknowledged**, in the table ``kvp_pending`` of the
  manager's database: every Set-VMKvp / Remove-VMKvp is written there first,
  in order, and a row is deleted only once the guest has answered it. So a
  write made while the VM is off, its agent down, the service disabled or
  the guest frozen is delivered later, in order, and survives a restart of
  the host manager as well.

Delivery (:meth:`VmKvp.deliver`) runs, one at a time per VM, when a host
write is made, when a session starts running (:meth:`VmKvp.on_running`; the
host facts are pushed to AutoExternal first), and when the guest pushes a
pool while writes are pending (its service just started or it just thawed).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from vmis.errors import (
    ChannelError,
    ConfigError,
    KvpFormatError,
    NotFoundError,
    ProtocolError,
    RemoteServiceError,
    ServiceUnavailable,
    VmisError,
)
from vmis.protocol import decode_json, encode_json
from vmis.services.catalog import by_key
from vmis.services.host_half import HostContext, HostService, VmContext, VmPart, metadata
from vmis.services.kvp import KvpOp, check_item, parse_pool, pool_name
from vmis.services.kvp.intrinsic import default_fqdn
from vmis.services.kvp.pool import Pool
from vmis.services.link import NotificationHandler

__all__ = ["SERVICE", "KvpHost", "VmKvp", "check_write", "enqueue", "kvp_pending",
           "pool_rows"]

SPEC = by_key("kvp")
#: seconds one KVP request may take (a pool rewrite is an fsync or two)
REQUEST_TIMEOUT = 15.0
#: seconds a delivery started by a guest push waits for the service to count
#: as running (the push of a starting service overtakes the SET_SERVICE answer)
SETTLE_TIMEOUT = 5.0
#: outcomes of writes nobody waited for that a part keeps, for a request from another
#: host that arrives after its write was delivered (docs/fleet.md)
RECENT_OUTCOMES = 1024
#: guest error codes after which a write can never succeed: it is dropped
_PERMANENT = ("bad-request", "too-large", "denied", "unknown-op")

kvp_pending = sa.Table(
    "kvp_pending",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("vm_id", sa.String(36), sa.ForeignKey("vms.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("pool", sa.Integer, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    #: NULL for a removal
    sa.Column("value", sa.Text),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    # ids are never reused, so a caller can tell its own write's fate by id
    sqlite_autoincrement=True,
)


class VmKvp(VmPart):
    """One VM's KVP state on the host (``session.part(KvpHost)``).

    :param vm: the VM's session.
    :param kvp: the manager's KVP half (database, host names).
    """

    def __init__(self, vm: VmContext, kvp: KvpHost) -> None:
        super().__init__(vm)
        self.kvp = kvp
        #: pool -> items, as the guest last pushed them
        self.pools: dict[Pool, list[tuple[str, str]]] = {}
        #: pool -> when the guest last pushed it
        self.reported: dict[Pool, datetime] = {}
        #: why pending writes are still pending ("" when none are or none failed)
        self.last_error = ""
        self._staging: dict[Pool, list[tuple[str, str]]] = {}
        self._lock = asyncio.Lock()
        self._facts_for: object | None = None
        self._waiting: set[int] = set()
        self._outcomes: dict[int, VmisError | None] = {}
        #: outcomes of writes no caller waited for, newest last
        self._recent: dict[int, VmisError | None] = {}
        # Kept in step with the table by _enqueue and _done: guest pushes (many,
        # on a big host) then cost no database query when nothing is pending.
        self._pending = len(self.pending_rows())
        self._tasks: set[asyncio.Task[None]] = set()

    def handlers(self) -> Mapping[int, NotificationHandler]:
        return {KvpOp.POOL: self.on_pool}

    @property
    def pending(self) -> int:
        """How many host writes wait for the guest (kept in step with ``kvp_pending``)."""
        return self._pending

    async def on_running(self) -> None:
        # In the background: a guest slow to write its pools must not hold up
        # the after-connect steps of the other services.
        self.spawn(self.deliver())

    # Section: guest pushes (docs/services/kvp.md §2.3)

    def on_pool(self, payload: bytes) -> None:
        """A POOL notification: one part of one pool's whole content."""
        try:
            body = decode_json(payload)
            pool = Pool(int(body["pool"]))
            items = [(str(k), str(v)) for k, v in body["items"]]
            first, last = int(body.get("part", 0)) == 0, bool(body.get("last", True))
        except (ProtocolError, KeyError, TypeError, ValueError, OverflowError) as exc:
            # OverflowError: int() of an infinite "pool" or "part" (json's Infinity)
            self.vm.log.warning("bad KVP POOL notification: %s", exc)
            return
        if first:
            self._staging[pool] = []
        elif pool not in self._staging:
            return  # a later part whose first part this session never saw
        self._staging[pool] += items
        if not last:
            return
        self.pools[pool] = self._staging.pop(pool)
        self.reported[pool] = datetime.now(UTC)
        self.vm.publish("kvp", Pool=pool_name(pool), Items=len(self.pools[pool]))
        if self._pending or self._facts_for is not self.vm.link:
            self.spawn(self.deliver(settle=SETTLE_TIMEOUT))

    def spawn(self, coro: Any) -> None:
        """Run a delivery in the background (kept referenced until it ends)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Section: pending writes

    def pending_rows(self) -> list[sa.Row[Any]]:
        """This VM's unacknowledged host writes, oldest first."""
        with self.kvp.host.engine.begin() as conn:
            return list(conn.execute(
                sa.select(kvp_pending).where(kvp_pending.c.vm_id == self.vm.vm.id)
                .order_by(kvp_pending.c.id)
            ))

    def _enqueue(self, key: str, value: str | None) -> int:
        with self.kvp.host.engine.begin() as conn:
            row_id = enqueue(conn, self.vm.vm.id, key, value)
        self._pending += 1
        return row_id

    def recount(self) -> None:
        """Count the pending writes again: another host wrote some (docs/fleet.md)."""
        self._pending = len(self.pending_rows())

    def _done(self, row_id: int, outcome: VmisError | None, key: str = "") -> None:
        with self.kvp.host.engine.begin() as conn:
            deleted = conn.execute(kvp_pending.delete().where(kvp_pending.c.id == row_id))
        self._pending -= deleted.rowcount
        self.vm.publish("kvp", Pool=pool_name(Pool.EXTERNAL), Key=key,
                        Delivered=outcome is None, Error=str(outcome) if outcome else None)
        if row_id in self._waiting:
            self._outcomes[row_id] = outcome
        else:  # another host's write, delivered before its request reached this one
            self._recent[row_id] = outcome
            while len(self._recent) > RECENT_OUTCOMES:
                self._recent.pop(next(iter(self._recent)))

    async def write(self, key: str, value: str | None) -> dict[str, Any]:
        """Set (or with ``value=None`` remove) *key* in External: saved, then delivered.

        :return: the row of docs/services/kvp.md §3.2 for this VM.
        """
        [result] = await self.delivered([(self._enqueue(key, value), key, value)])
        return result

    async def delivered(self, writes: Sequence[tuple[int, str, str | None]]
                        ) -> list[dict[str, Any]]:
        """Deliver what is pending and say what became of these saved writes
        (``(row id, key, value)``: this host's, or another host's, docs/fleet.md).

        :return: the row of docs/services/kvp.md §3.2 for this VM, per write.
        """
        ids = [row_id for row_id, _, _ in writes]
        self._waiting.update(ids)
        try:
            await self.deliver()
            outcomes = [self._outcomes.pop(row_id, self._recent.pop(row_id, "pending"))
                        for row_id in ids]
        finally:
            self._waiting.difference_update(ids)
        results = []
        for (_, key, value), outcome in zip(writes, outcomes, strict=True):
            result: dict[str, Any] = {
                "VMName": self.vm.vm.name, "Pool": pool_name(Pool.EXTERNAL), "Key": key,
                "Value": value, "Delivered": outcome is None, "Pending": outcome == "pending",
                "Reason": self.last_error if outcome == "pending" else "", "Error": None,
            }
            if isinstance(outcome, VmisError):
                result["Error"] = str(outcome)
            results.append(result)
        return results

    # Section: delivery

    async def _request(self, op: KvpOp, body: dict[str, Any]) -> None:
        await self.vm.request(SPEC, op, encode_json(body), timeout=REQUEST_TIMEOUT)

    async def _settled(self, timeout: float) -> None:
        # A guest push may arrive before the host learns (from the SET_SERVICE
        # answer) that the service runs: give that answer a moment.
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if self.kvp.host.current(self.vm.vm.id) is not self.vm:
                return  # the VM was removed or the manager closed meanwhile
            try:
                self.vm.require(SPEC)
                return
            except ServiceUnavailable:
                await asyncio.sleep(0.05)

    async def deliver(self, settle: float = 0.0) -> None:
        """Push the host facts (once per session) and every pending write, in order.

        Stops at the first write the guest cannot take now (no session,
        service off, ``busy``, ``failed``), which stays pending with the
        reason in :attr:`last_error`; a write the guest refuses for good
        (too large, bad request) is dropped and reported to its caller.
        """
        if settle:
            await self._settled(settle)
        async with self._lock:
            try:
                await self._deliver()
            except (ServiceUnavailable, ChannelError, ProtocolError) as exc:
                self.last_error = str(exc)
            except RemoteServiceError as exc:
                self.last_error = f"{self.vm.vm.name}: the guest answered: {exc}"
                self.vm.log.warning("KVP delivery paused: %s", exc)

    async def _deliver(self) -> None:
        link = self.vm.link
        self.vm.require(SPEC)
        if self._facts_for is not link:
            facts = await self.kvp.host_facts(self.vm)
            try:
                await self._request(KvpOp.SET, {"pool": int(Pool.AUTO_EXTERNAL),
                                                "items": [list(f) for f in facts]})
            except RemoteServiceError as exc:
                if exc.code not in _PERMANENT:
                    raise
                self.vm.log.warning("the guest refused the host facts: %s", exc)
            self._facts_for = link
        for row in self.pending_rows() if self._pending else []:
            try:
                if row.value is None:
                    await self._request(KvpOp.DELETE, {"pool": row.pool, "key": row.key})
                else:
                    await self._request(KvpOp.SET, {"pool": row.pool,
                                                    "items": [[row.key, row.value]]})
            except RemoteServiceError as exc:
                if exc.code == "not-found" and row.value is None:
                    self.vm.log.info("KVP removal of %r: the guest had no such key", row.key)
                    self._done(row.id, NotFoundError(
                        f"{self.vm.vm.name}: no key {row.key!r} in the "
                        f"{pool_name(row.pool)} pool"), row.key)
                    continue
                if exc.code in _PERMANENT:
                    self.vm.log.warning("KVP write of %r dropped: %s", row.key, exc)
                    self._done(row.id, ServiceUnavailable(f"{self.vm.vm.name}: {exc}"), row.key)
                    continue
                raise
            self._done(row.id, None, row.key)
        self.last_error = ""


class KvpHost(HostService[VmKvp]):
    """Key-Value Pair Exchange on the host: pending writes and the host's Get-/Set-VMKvp."""

    spec = SPEC
    tables = (kvp_pending,)
    needs = frozenset({KvpOp.SET, KvpOp.DELETE})

    def __init__(self, host: HostContext) -> None:
        super().__init__(host)
        self._names: tuple[str, str] | None = None

    def new_part(self, vm: VmContext) -> VmKvp:
        return VmKvp(vm, self)

    async def host_facts(self, vm: VmContext) -> list[tuple[str, str]]:
        """The AutoExternal items a Hyper-V host gives its guests (docs/services/kvp.md §3.3)."""
        if self._names is None:
            # The guest's own FQDN rule (hv_kvp_daemon's canonical-name lookup,
            # which socket.getfqdn is not: it may answer "localhost"). It may
            # ask DNS: not on the event loop, and only once.
            fqdn = await asyncio.to_thread(default_fqdn)
            self._names = (socket.gethostname().split(".")[0], fqdn)
        short, fqdn = self._names
        return [
            ("HostName", short),
            ("PhysicalHostName", short),
            ("PhysicalHostNameFullyQualified", fqdn),
            ("VirtualMachineName", vm.vm.name),
            ("VirtualMachineId", vm.vm.id),
        ]

    # Section: host operations (docs/services/kvp.md §3)

    def rows(self, patterns: list[str], pool: str | None = None) -> list[dict[str, Any]]:
        """Get-VMKvp: the pools of matching VMs as last pushed, and pending host writes.

        :raise NotFoundError: For an unknown VM or pool.
        """
        pools = [parse_pool(pool)] if pool else list(Pool)
        rows: list[dict[str, Any]] = []
        for vm in self.host.match(patterns):
            state = vm.part(KvpHost)
            reported = {p: (items, state.reported.get(p)) for p, items in state.pools.items()}
            rows += pool_rows(vm.vm.name, vm.connected, reported, state.pending_rows(), pools)
        return rows

    def limits(self, patterns: list[str]) -> list[dict[str, str]]:
        """What the guest agents of matching VMs cannot do of KVP (an agent's offer
        limit, e.g. qemu-ga's missing pools); for Get-VMKvp's warnings."""
        return [{"VMName": vm.vm.name, "Limit": offer.limit}
                for vm in self.host.match(patterns)
                if (offer := vm.guest.get(SPEC.key)) is not None and offer.limit]

    async def set(self, patterns: list[str], key: str, value: str) -> list[dict[str, Any]]:
        """Set-VMKvp: write *key* = *value* to the External pool of matching VMs.

        :raise ConfigError: When the key or value cannot be stored (sizes named);
            nothing is saved then.
        :raise NotFoundError: For an unknown VM.
        """
        check_write(key, value)
        return await self._write(patterns, key, value)

    async def remove(self, patterns: list[str], key: str) -> list[dict[str, Any]]:
        """Remove-VMKvp: remove *key* from the External pool of matching VMs.

        :raise ConfigError: For a key no pool can hold.
        :raise NotFoundError: For an unknown VM.
        """
        check_write(key, "")
        return await self._write(patterns, key, None)

    async def _write(self, patterns: Sequence[str], key: str,
                     value: str | None) -> list[dict[str, Any]]:
        vms = self.host.match(patterns)
        return list(await asyncio.gather(*(vm.part(KvpHost).write(key, value) for vm in vms)))


def enqueue(conn: Connection, vm_id: str, key: str, value: str | None) -> int:
    """Save a host write to a VM's External pool (``value`` None: a removal); its row id."""
    result = conn.execute(kvp_pending.insert().values(
        vm_id=vm_id, pool=int(Pool.EXTERNAL), key=key, value=value, created=datetime.now(UTC)))
    row_id = result.inserted_primary_key
    assert row_id is not None
    return int(row_id[0])


def pool_rows(vm_name: str, connected: bool,
              reported: Mapping[Pool, tuple[Sequence[Sequence[str]], datetime | None]],
              pending: Sequence[Any], pools: Sequence[Pool]) -> list[dict[str, Any]]:
    """Get-VMKvp's rows of one VM: *pools* as the guest last pushed them (pool -> items,
    when), and the pending host writes (kvp_pending rows) under External."""
    common = {"VMName": vm_name, "Connected": connected}
    rows: list[dict[str, Any]] = []
    for p in pools:
        items, at = reported.get(p, ((), None))
        rows += [{**common, "Pool": pool_name(p), "Key": k, "Value": v, "Pending": None,
                  "ReportedAt": at.isoformat() if at else None} for k, v in items]
        if p is Pool.EXTERNAL:
            rows += [{**common, "Pool": pool_name(p), "Key": r.key, "Value": r.value,
                      "Pending": "remove" if r.value is None else "set", "ReportedAt": None}
                     for r in pending]
    return rows


def check_write(key: str, value: str) -> None:
    """Refuse a key or value no pool record can hold, before anything is saved.

    :raise ConfigError: Naming the sizes.
    """
    try:
        check_item(key, value)
    except KvpFormatError as exc:
        raise ConfigError(str(exc)) from None


SERVICE = KvpHost
