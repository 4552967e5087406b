"""Guest half of the heartbeat: periodic beats and application health checks.

Health checks are executables in ``/etc/vmis/health.d/`` (inside the agent's
root). Each runs every ``health_interval`` seconds with a timeout; any check
that exits non-zero or times out makes the application health ``critical``,
which reaches the host at once as a HEALTH notification and turns its
Heartbeat secondary status to Application Critical.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmis.protocol import ServiceId, encode_json
from vmis.services.catalog import by_key
from vmis.services.guest_half import GuestContext, GuestService
from vmis.services.heartbeat import DEFAULT_INTERVAL_MS, HeartbeatOp, beat_delay, encode_beat

__all__ = ["SERVICE", "HeartbeatService", "run_checks"]

HEALTH_DIR = "/etc/vmis/health.d"
_MIN_INTERVAL_MS = 100
#: and at most an hour: a longer wait is no heartbeat
_MAX_INTERVAL_MS = 3_600_000


async def _run_check(path: Path, timeout: float) -> bool:
    try:
        proc = await asyncio.create_subprocess_exec(
            str(path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return False
    try:
        async with asyncio.timeout(timeout):
            return await proc.wait() == 0
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()
        return False


async def run_checks(directory: Path, timeout: float) -> list[str]:
    """Run every executable in *directory* at once; return the names that failed."""
    try:
        checks = sorted(
            p for p in directory.iterdir()
            if p.is_file() and os.access(p, os.X_OK) and not p.name.startswith(".")
        )
    except FileNotFoundError:
        return []
    results = await asyncio.gather(*(_run_check(p, timeout) for p in checks))
    return [p.name for p, ok in zip(checks, results, strict=True) if not ok]


class HeartbeatService(GuestService):
    """vmicheartbeat: beats every interval, health pushed on change."""

    spec = by_key("heartbeat")

    def __init__(self, ctx: GuestContext) -> None:
        super().__init__(ctx)
        self.seq = 0
        self.health = "ok"
        self.failed: list[str] = []
        self._wake = asyncio.Event()

    @property
    def interval(self) -> float:
        """Seconds between beats (host setting ``interval_ms``; the default if it is no
        whole number, and within the bounds the beat loop can keep)."""
        ms = self.settings.get("interval_ms", DEFAULT_INTERVAL_MS)
        if not isinstance(ms, int) or isinstance(ms, bool):
            ms = DEFAULT_INTERVAL_MS
        return min(max(ms, _MIN_INTERVAL_MS), _MAX_INTERVAL_MS) / 1000

    def configure(self, settings: Mapping[str, Any]) -> None:
        super().configure(settings)
        self._wake.set()

    def on_session(self, running: bool) -> None:
        if running:
            # Beat at once so a new session leaves No Contact without waiting
            # a whole interval.
            self._wake.set()

    async def on_start(self) -> None:
        self.spawn(self._beat_loop(), "beat")
        self.spawn(self._health_loop(), "health")

    def _beat(self) -> None:
        self.seq += 1
        self.ctx.notify(ServiceId.HEARTBEAT, HeartbeatOp.BEAT, encode_beat(self.seq, self.health))

    def _now_ns(self) -> int:
        # The guest's own wall clock: the one time sync keeps on the host's.
        clock = self.ctx.adapters.get("clock")
        return int(clock.now_ns()) if clock is not None else time.time_ns()

    async def _beat_loop(self) -> None:
        while True:
            self._beat()
            self._wake.clear()
            delay = beat_delay(self._now_ns(), int(self.interval * 1e9)) / 1e9
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _health_loop(self) -> None:
        directory = self.ctx.path(HEALTH_DIR)
        while True:
            cfg = self.ctx.config  # each round: a reloaded configuration applies (SIGHUP)
            failed = await run_checks(directory, cfg.health_timeout)
            health = "critical" if failed else "ok"
            if health != self.health or failed != self.failed:
                changed = health != self.health
                self.health, self.failed = health, failed
                if changed:
                    self.log.warning("application health is now %s %s", health, failed or "")
                self.ctx.notify(
                    ServiceId.HEARTBEAT,
                    HeartbeatOp.HEALTH,
                    encode_json({"health": health, "failed": failed}),
                )
            await asyncio.sleep(cfg.health_interval)


#: the agent offers the service this module defines (vmis.guest.services)
SERVICE = HeartbeatService
