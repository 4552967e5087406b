"""Time sync's sample parsing on the host: a burst of SAMPLE answers and the APPLY
answer, as ``VmTimeSync.sync`` reads them, then what Get-VMTimeSync shows.

The host manager and guest link of the host_handlers harness; the host's
clock is replaced by one that reads the times the input gives (t1 and t4
of each exchange), and the guest's answers carry t2, t3 and the rest. The
session's own burst loop is stopped so that only this harness asks.

May raise: nothing. ``sync()`` turns what a guest can get wrong into
``False`` and an error line (the documented errors of ``sync_once``:
ProtocolError, ValueError for a burst without a usable sample, and the
link's errors); the figures it keeps (``TimeSyncMonitor.record``, ``row``,
``next_wait_ms``) must then be readable whatever the guest said.
"""

from __future__ import annotations

import functools
import json

import atheris

from support.fuzz.harnesses import host_handlers
from support.fuzz.values import json_object
from vmis.services.catalog import by_key
from vmis.services.timesync import TimeSyncOp
from vmis.services.timesync.host import TimeSyncHost, VmTimeSync

_TIMESYNC = int(by_key("timesync").id)
_SAMPLE_KEYS = ["t2", "t3", "mode", "pending", "seq"]
_APPLY_KEYS = ["state", "action", "mode", "daemon", "offset_ns", "rtt_ns", "note",
               "last_step_ns", "last_step_delta_ns"]
_NOW = 1_700_000_000_000_000_000


@functools.cache
def setup() -> host_handlers._Host:
    host = host_handlers.setup()
    part = host.session.part(TimeSyncHost)
    if part.monitor.task is not None:
        part.monitor.task.cancel()
    return host


def _reading(fdp: atheris.FuzzedDataProvider) -> int:
    # the host's own clock: now, give or take a jump of up to four months
    if fdp.ConsumeIntInRange(0, 9) == 0:
        return _NOW + fdp.ConsumeIntInRange(-10**16, 10**16)
    return _NOW + fdp.ConsumeIntInRange(-10**12, 10**12)


def _sample_answer(fdp: atheris.FuzzedDataProvider, t1: int) -> bytes:
    body = json_object(fdp, keys=_SAMPLE_KEYS)
    if fdp.ConsumeProbability() < 0.7:
        t2 = t1 + fdp.ConsumeIntInRange(-10**13, 10**13)
        body.update(t2=t2, t3=t2 + fdp.ConsumeIntInRange(-10**6, 10**9))
    if fdp.ConsumeBool():
        body["mode"] = fdp.PickValueInList(["own", "chrony", "ntp", "other"])
    return json.dumps(body).encode()


def one_input(data: bytes) -> None:
    host = setup()
    fdp = atheris.FuzzedDataProvider(data)
    part: VmTimeSync = host.session.part(TimeSyncHost)
    mon = part.monitor
    mon.sync_pending = fdp.ConsumeBool()
    mon.backoff = fdp.PickValueInList([1, 2, 32])
    # the APPLY answer first: what is read last of an input is often what it lacks
    apply = json.dumps(json_object(fdp, keys=_APPLY_KEYS)).encode()
    readings = [_reading(fdp) for _ in range(16)]
    clock = iter(readings)
    part.timesync.clock = lambda: next(clock, _NOW)
    answers: list[bytes | str] = [_sample_answer(fdp, t) for t in readings[::2]]
    if fdp.ConsumeProbability() > 0.9:  # (an exhausted input reads 0: no refusal)
        answers.insert(fdp.ConsumeIntInRange(0, len(answers)), "failed")
    host.link.answers[(_TIMESYNC, TimeSyncOp.SAMPLE)] = answers
    host.link.answers[(_TIMESYNC, TimeSyncOp.APPLY)] = [apply]
    try:
        host.loop.run_until_complete(part.sync())
        row = part.timesync.row(host.session)
        json.dumps(row)
        assert mon.next_wait_ms >= 0
        if mon.verdict is not None:
            json.dumps(mon.verdict)
    finally:
        host.link.answers.clear()
    host.failures.raise_first()
