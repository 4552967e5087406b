"""The host's LISTEN connection: how a change made on another host reaches this one.

One dedicated psycopg 3 async connection per host manager listens on the
host's channel (:func:`channel_of`). Whoever writes something this host
must act on (a request, a VM given to it) notifies that channel in the same
transaction, so the notification arrives when the change is committed and
only then. A notification sent while the connection is down is lost, which
is why every (re)connect first runs the catch-up (the requests and VMs the
host may have missed), after its LISTEN: nothing falls between the two.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import Engine

__all__ = ["Listener", "channel_of"]

_log = logging.getLogger("vmis.host.fleet")

#: seconds between two checks that a quiet connection still works
PROBE_SECONDS = 10.0
#: reconnect delays: the first, doubling up to the last
RETRY_FIRST, RETRY_LIMIT = 0.5, 10.0


def channel_of(host_key: str) -> str:
    """The NOTIFY channel of a host: a fixed-length name, since PostgreSQL cuts
    identifiers at 63 bytes and a host name may be longer."""
    return "vmis_host_" + hashlib.sha256(host_key.encode()).hexdigest()[:32]


def connect_args(engine: Engine) -> dict[str, Any]:
    """What psycopg needs to connect where the engine connects: its URL's parts,
    password included, handed over in memory only (libpq reads PGPASSFILE as usual)."""
    _, kwargs = engine.dialect.create_connect_args(engine.url)
    kwargs.pop("context", None)  # SQLAlchemy's type adapters, not a connection option
    return dict(kwargs)


class Listener:
    """Listens on one channel until closed, reconnecting as needed.

    :param engine: the store (its URL says where to connect).
    :param channel: the channel to listen on.
    :param on_notify: called with each notification's payload, on the event loop.
    :param catch_up: awaited after every (re)connect, once LISTEN is in force.
    :param name: what ``pg_stat_activity`` shows of the connection (application_name).
    """

    def __init__(self, engine: Engine, channel: str, on_notify: Callable[[str], None],
                 catch_up: Callable[[], Awaitable[None]], name: str = "vmis") -> None:
        self._args = {**connect_args(engine), "application_name": name[:63]}
        self.channel = channel
        self._on_notify = on_notify
        self._catch_up = catch_up
        self._task: asyncio.Task[None] | None = None
        #: set while LISTEN is in force
        self.listening = asyncio.Event()
        #: how many times the connection was (re)made
        self.connects = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="fleet-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        delay = RETRY_FIRST
        failing = ""
        while True:
            connects = self.connects
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                if reason != failing:
                    _log.warning("the fleet's notifications stopped: %s; reconnecting", reason)
                    failing = reason
            except Exception:
                _log.exception("the fleet's listener failed; reconnecting")
            finally:
                self.listening.clear()
            if self.connects != connects:  # it worked a while: start the delays again
                delay, failing = RETRY_FIRST, ""
            else:
                delay = min(delay * 2, RETRY_LIMIT)
            await asyncio.sleep(delay)

    async def _listen(self) -> None:
        conn = await psycopg.AsyncConnection.connect(**self._args, autocommit=True)
        async with conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            self.connects += 1
            self.listening.set()
            await self._catch_up()
            while True:
                async for notify in conn.notifies(timeout=PROBE_SECONDS):
                    self._on_notify(notify.payload)
                # Quiet for a while: a connection the server or the network dropped
                # without a word fails here rather than never.
                await conn.execute("SELECT 1")
