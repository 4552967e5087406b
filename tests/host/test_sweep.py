"""The manager's sweep: one pass over all VMs per heartbeat interval watches them all.

It replaced a timer per VM (bench/heartbeat_scale.py), so these check that it
keeps the watchdog's promises: a guest that goes silent with its channel open
turns Lost Communication on time, is PINGed, dropped when the PING goes
unanswered, and is OK again once it answers.
"""

from __future__ import annotations

import asyncio
import logging
import time

from support.pair import eventually, host_guest_pair

import vmis.host.session as session_module
from vmis.host.manager import MIN_SWEEP_INTERVAL, SWEEP_INTERVAL
from vmis.services.catalog import by_key
from vmis.services.heartbeat.host import HeartbeatHost
from vmis.services.status import OperationalStatus

HB = by_key("heartbeat")


async def test_the_sweep_follows_the_shortest_heartbeat_interval(short_tmp):
    async with host_guest_pair(short_tmp, heartbeat_interval_ms=300) as pair:
        assert pair.manager.sweep_once() == 0.3
        pair.manager.update_vm("DemoVM", heartbeat_interval_ms=5000)
        assert pair.manager.sweep_once() == SWEEP_INTERVAL
        pair.manager.update_vm("DemoVM", heartbeat_interval_ms=20)
        assert pair.manager.sweep_once() == MIN_SWEEP_INTERVAL


async def test_a_silent_guest_turns_lost_on_time_is_dropped_and_comes_back(
        short_tmp, monkeypatch, caplog):
    monkeypatch.setattr(session_module, "PING_TIMEOUT", 0.5)
    caplog.set_level(logging.INFO, logger="vmis.host")
    async with host_guest_pair(short_tmp, heartbeat_interval_ms=200) as pair:
        session = pair.session
        lost_after = session.part(HeartbeatHost).monitor.settings.lost_after  # 2 x 0.2 s + 1 s
        beats = pair.agent.manager.services["heartbeat"]
        channel = pair.agent.channel
        assert channel is not None and channel.transport is not None
        # A hung guest on a port without connection semantics: no beats, no
        # answers, and the socket stays open.
        await beats.stop()
        channel.transport.pause_reading()  # type: ignore[attr-defined]
        silent = time.monotonic()
        await eventually(lambda: session.status(HB).primary
                         is OperationalStatus.LOST_COMMUNICATION, timeout=10, interval=0.01)
        assert time.monotonic() - silent < lost_after + 3.0  # generous on a loaded machine
        # the sweep logged it and PINGed; the unanswered PING drops the session
        await eventually(lambda: not session.connected, timeout=10, interval=0.01)
        dropped = time.monotonic() - silent
        assert session_module.PING_TIMEOUT < dropped < lost_after + 0.5 + 3.0
        assert "stopped answering" in session.last_error
        assert "heartbeat: Lost Communication" in caplog.text
        assert session.status(HB).primary is OperationalStatus.LOST_COMMUNICATION
        # the guest wakes up: a new session, beats, OK
        channel.transport.resume_reading()  # type: ignore[attr-defined]
        await beats.start()
        await eventually(lambda: session.connected, timeout=15)
        await eventually(lambda: session.status(HB).primary is OperationalStatus.OK, timeout=10)


def count_pings(monkeypatch) -> list[float]:
    """The times of the liveness PINGs every session sends from now on."""
    pings: list[float] = []
    ping = session_module.VmSession._ping_agent

    async def counted(self: session_module.VmSession, channel: object) -> None:
        pings.append(time.monotonic())
        await ping(self, channel)  # type: ignore[arg-type]

    monkeypatch.setattr(session_module.VmSession, "_ping_agent", counted)
    return pings


async def test_a_quiet_guest_that_answers_its_ping_keeps_its_session(short_tmp, monkeypatch):
    monkeypatch.setattr(session_module, "PING_TIMEOUT", 0.5)
    pings = count_pings(monkeypatch)
    async with host_guest_pair(short_tmp, heartbeat_interval_ms=200) as pair:
        session = pair.session
        assert not pings  # beats are current: nothing to ask
        await pair.agent.manager.services["heartbeat"].stop()
        await eventually(lambda: session.status(HB).primary
                         is OperationalStatus.LOST_COMMUNICATION, timeout=10)
        await asyncio.sleep(2)
        # PINGed about once an interval (0.2 s) after each answer, answered, kept
        assert len(pings) >= 3 and session.connected
        await pair.agent.manager.services["heartbeat"].start()
        await eventually(lambda: session.status(HB).primary is OperationalStatus.OK)
        await asyncio.sleep(0.5)
        count = len(pings)
        await asyncio.sleep(1)
        assert len(pings) == count  # beating again: no more PINGs


async def test_an_answered_ping_waits_an_interval_however_often_the_sweep_passes(
        short_tmp, monkeypatch):
    pings = count_pings(monkeypatch)
    async with host_guest_pair(short_tmp, heartbeat_interval_ms=500) as pair:
        await pair.agent.manager.services["heartbeat"].stop()
        await eventually(lambda: pair.session.status(HB).primary
                         is OperationalStatus.LOST_COMMUNICATION, timeout=10)
        # a sweep every 10 ms, as another VM with a short interval would cause
        start = len(pings)
        for _ in range(100):
            pair.manager.sweep_once()
            await asyncio.sleep(0.01)
        asked = pings[start:]
        assert asked and pair.session.connected
        assert all(b - a >= 0.5 for a, b in zip(asked, asked[1:]))
