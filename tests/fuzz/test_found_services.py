"""Defects the fuzz harnesses found in the services, each pinned by its input.

A notification handler that raised took the whole session down: the
exception left the channel's receive callback and asyncio closed the
transport (the host then dialled again, the guest's commands were killed).
Those are shown end to end, over a real host-guest pair; the rest on the
function that failed.

Harnesses: host_handlers, guest_handlers, timesync_samples, kvp_pool, wire_helpers.
"""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
from support.pair import eventually, host_guest_pair, quick_config

from vmis.errors import NotFoundError, RemoteProtocolError, RemoteServiceError
from vmis.guest.config import AgentConfig
from vmis.protocol import encode_json
from vmis.protocol.services import CONTROL, ControlOp
from vmis.protocol.session import encode_json_raw
from vmis.services.catalog import StartupType, by_key
from vmis.services.fcopy import FcopyOp
from vmis.services.kvp import KvpOp, parse_pool
from vmis.services.kvp.pool import KEY_SIZE, KvpPool, Pool
from vmis.services.shutdown import ShutdownOp
from vmis.services.timesync import Flag, Sample, TimeSyncOp
from vmis.services.timesync.burst import TimeSyncMonitor
from vmis.services.vmsession import VmSessionOp
from vmis.services.vss import MAX_FREEZE_TIMEOUT, VssOp

KVP, TIMESYNC, VSS = by_key("kvp"), by_key("timesync"), by_key("vss")
VMSESSION, SHUTDOWN = by_key("vmsession"), by_key("shutdown")
FCOPY = by_key("fcopy")


async def _still_the_same_session(pair, link) -> None:
    """The link survived: it answers, and the session did not dial again."""
    await link.ping(5)
    assert pair.session.link is link and link.running


@pytest.mark.parametrize("op, payload", [
    (KvpOp.POOL, b'{"pool": Infinity, "items": []}'),
    (KvpOp.POOL, b'{"pool": 1, "items": [], "part": -Infinity}'),
], ids=["pool Infinity", "part -Infinity"])
async def test_a_kvp_push_with_an_infinite_number_is_dropped_not_the_session(
        short_tmp, caplog, op, payload):
    # host_handlers: int(inf) raised OverflowError out of the POOL handler
    async with host_guest_pair(short_tmp) as pair:
        link = pair.session.link
        with caplog.at_level(logging.WARNING, "vmis.host"):
            pair.agent.notify(KVP.id, op, payload)
            await eventually(lambda: "bad KVP POOL notification" in caplog.text)
        await _still_the_same_session(pair, link)


async def test_a_clock_event_with_a_400_digit_delta_syncs_and_keeps_the_session(
        short_tmp, caplog):
    # host_handlers: formatting delta / 1e9 raised OverflowError in the handler
    async with host_guest_pair(short_tmp) as pair:
        link = pair.session.link
        with caplog.at_level(logging.INFO, "vmis.host"):
            pair.agent.notify(TIMESYNC.id, TimeSyncOp.CLOCK_EVENT,
                              b'{"event": "jump", "delta_ns": 1' + b"0" * 400 + b"}")
            await eventually(lambda: "guest reports a clock jump (? s)" in caplog.text)
        await _still_the_same_session(pair, link)


async def test_vm_session_notifications_naming_no_number_keep_the_guest_session(short_tmp):
    # guest_handlers: dict.get(["a list"]) and iterating a number raised TypeError
    # out of the guest's handlers; the guest's channel closed under the host
    startup = {**AgentConfig().startup, "vmicvmsession": StartupType.AUTOMATIC}
    async with host_guest_pair(short_tmp, config=quick_config(startup=startup)) as pair:
        link = pair.session.link
        for op, body in [(VmSessionOp.KEEPALIVE, {"sessions": 5}),
                         (VmSessionOp.KEEPALIVE, {"sessions": [[1], {"a": 1}, 2]}),
                         (VmSessionOp.WINDOW, {"session": [1], "bytes": 10}),
                         (VmSessionOp.INPUT, None)]:
            if body is None:  # json+raw with an unhashable session
                head = encode_json({"session": {"x": 1}, "eof": True})
                payload = len(head).to_bytes(4, "little") + head
            else:
                payload = encode_json(body)
            link.notify(VMSESSION.id, op, payload)
        with pytest.raises(RemoteServiceError) as refused:
            await link.request(VMSESSION.id, VmSessionOp.SIGNAL,
                               encode_json({"session": [1], "signal": "TERM"}))
        assert refused.value.code == "not-found"
        await _still_the_same_session(pair, link)


async def test_a_freeze_timeout_past_any_limit_is_the_longest_freeze_and_nan_is_refused(
        short_tmp):
    # guest_handlers: float(10**400) raised OverflowError ("failed: internal error")
    async with host_guest_pair(short_tmp) as pair:
        link = pair.session.link
        answer = json.loads(await link.request(VSS.id, VssOp.FREEZE, b'{"timeout": 1'
                                               + b"0" * 400 + b"}"))
        assert answer["state"] == "frozen" and answer["timeout"] <= MAX_FREEZE_TIMEOUT
        await link.request(VSS.id, VssOp.THAW, encode_json({"id": answer["id"]}))
        with pytest.raises(RemoteServiceError) as refused:
            await link.request(VSS.id, VssOp.FREEZE, b'{"timeout": NaN}')
        assert refused.value.code == "bad-request"


async def test_set_service_without_enabled_is_a_bad_request(short_tmp):
    # guest_handlers: body["enabled"] raised KeyError ("failed: internal error: 'enabled'")
    async with host_guest_pair(short_tmp) as pair:
        for body in ({"service": "kvp"}, {"service": "kvp", "enabled": "yes"}):
            with pytest.raises(RemoteServiceError) as refused:
                await pair.session.link.request(CONTROL, ControlOp.SET_SERVICE,
                                                encode_json(body))
            assert refused.value.code == "bad-request"


async def test_a_shutdown_reason_that_is_not_text_is_refused(short_tmp):
    # guest_handlers: reason.encode() raised UnicodeEncodeError on a lone surrogate
    async with host_guest_pair(short_tmp) as pair:
        with pytest.raises(RemoteServiceError) as refused:
            await pair.session.link.request(SHUTDOWN.id, ShutdownOp.SHUTDOWN, encode_json(
                {"action": "poweroff", "reason": "maintenance \ud800"}))
        assert refused.value.code == "bad-request"
        assert "not valid text" in str(refused.value)


async def test_a_time_sample_past_64_bits_is_a_bad_request_in_the_guest(short_tmp):
    # timesync_samples: the offset of such a sample overflowed float() when logged
    async with host_guest_pair(short_tmp) as pair:
        with pytest.raises(RemoteServiceError) as refused:
            await pair.session.link.request(TIMESYNC.id, TimeSyncOp.APPLY, encode_json(
                {"t1": 0, "t2": 10**30, "t3": 10**30, "t4": 1, "flag": "sync"}))
        assert refused.value.code == "bad-request"


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**400], ids=["2^63", "-2^63-1", "10^400"])
def test_sample_timestamps_are_64_bit_nanoseconds(value):
    with pytest.raises(RemoteProtocolError, match="64 bits"):
        Sample.from_json({"t1": 0, "t2": value, "t3": 0, "t4": 0})
    assert Sample.from_json({"t1": 2**63 - 1, "t2": -(2**63), "t3": 0, "t4": 0}).t2 == -(2**63)


@pytest.mark.parametrize("step_ns", [10**30, -(10**30), 10**400], ids=["10^30", "-10^30", "10^400"])
def test_get_vmtimesync_shows_a_last_step_no_calendar_holds_as_unknown(step_ns):
    # timesync_samples: datetime.fromtimestamp raised OverflowError / ValueError in row()
    monitor = TimeSyncMonitor()
    sample = Sample(0, 5, 6, 10)
    monitor.record(sample, Flag.SYNC, {"state": "Stepped", "action": "step",
                                       "last_step_ns": step_ns}, 1_700_000_000 * 10**9)
    row = monitor.row("DemoVM")
    assert row["LastStep"] is None and row["LastSample"].startswith("2023-")


def test_a_slew_the_guest_reports_past_64_bits_does_not_stop_time_sync():
    # timesync_samples: abs(offset) / SLEW_RATE raised OverflowError in record()
    monitor = TimeSyncMonitor()
    monitor.record(Sample(0, 5, 6, 10), Flag.SAMPLE,
                   {"state": "Slewing", "action": "slew", "offset_ns": 10**400}, 10**18)
    assert monitor.slew_ms == 0 and monitor.syncs == 1


def test_a_kvp_key_with_a_nul_names_no_record(tmp_path):
    # kvp_pool: the key "\0" matched the record whose key is empty, and deleted it
    pool = KvpPool(tmp_path, Pool.GUEST)
    pool.path.write_bytes(bytes(KEY_SIZE) + b"empty key".ljust(2048, b"\0")
                          + b"a".ljust(KEY_SIZE, b"\0") + b"1".ljust(2048, b"\0"))
    assert pool.items() == [("", "empty key"), ("a", "1")]
    assert pool.get("\0") is None and pool.get("a\0") is None
    assert pool.delete("\0") is False and pool.delete("a\0b") is False
    assert pool.items() == [("", "empty key"), ("a", "1")]


async def _fcopy_running(pair):
    """The guest's copy service, running, with /tmp in the guest's root."""
    (pair.root / "tmp").mkdir(exist_ok=True)
    await pair.manager.set_enabled(["DemoVM"], ["Guest Service Interface"], True)
    await eventually(lambda: pair.session.guest["fcopy"].state == "running")
    return pair.agent.manager.services["fcopy"]


_NO_FILE_HOLDS = [{"mode": 2**40}, {"mode": -1}, {"atime_ns": 2**63 * 10**9},
                  {"mtime_ns": -(2**63) * 10**9 - 1}, {"mtime_ns": 1.5}]


@pytest.mark.parametrize("meta", _NO_FILE_HOLDS)
async def test_a_copy_with_a_mode_or_time_no_file_can_hold_is_refused_at_once(short_tmp, meta):
    # guest_handlers: stat.S_IMODE and os.utime raised OverflowError ("failed: internal
    # error"); the time only at COMMIT, after the whole file had been sent
    async with host_guest_pair(short_tmp) as pair:
        fcopy = await _fcopy_running(pair)
        body = {"path": "/tmp/", "name": "x", "size": 10, "token": "d" * 32, "owner": "o",
                "mode": 0o644, "atime_ns": 1, "mtime_ns": 1, **meta}
        with pytest.raises(RemoteServiceError) as refused:
            await pair.session.link.request(FCOPY.id, FcopyOp.OPEN_WRITE, encode_json(body))
        assert refused.value.code == "bad-request"
        data = b"0123456789"
        with pytest.raises(RemoteServiceError) as refused:
            await pair.session.link.request(FCOPY.id, FcopyOp.PUT, encode_json_raw(
                {**body, "sha256": hashlib.sha256(data).hexdigest()}, data))
        assert refused.value.code == "bad-request"
        assert len(fcopy.handles) == 0 and not (pair.root / "tmp/x").exists()


async def test_a_freeze_id_that_is_not_text_is_refused_and_nothing_stays_frozen(short_tmp):
    # guest_handlers: the freeze's mark file could not hold the id's lone surrogate
    # (UnicodeEncodeError, "failed: internal error") after the guest had frozen
    async with host_guest_pair(short_tmp) as pair:
        with pytest.raises(RemoteServiceError) as refused:
            await pair.session.link.request(VSS.id, VssOp.FREEZE, encode_json(
                {"id": "a\udadd", "timeout": 5}))
        assert refused.value.code == "bad-request"
        assert not pair.agent.ctx.frozen


@pytest.mark.parametrize("text", ["\u00b2", "\u09e9", "1\u00b2", "\u0661"])
def test_a_pool_named_by_digits_int_refuses_is_no_pool(text):
    # wire_helpers: digits to str.isdigit() but not to int() raised ValueError out of
    # parse_pool (Get-VMKvp -Pool ... was a traceback)
    with pytest.raises(NotFoundError, match="no KVP pool"):
        parse_pool(text)


def test_a_pool_number_between_spaces_still_names_it():
    # wire_helpers' input: strip() takes the separator \x1d around the digit, int() did not
    assert parse_pool("\r\r\x1d\r\r\r\r0\r\r\r\r") == Pool.EXTERNAL
    assert parse_pool(" 0\n") == Pool.EXTERNAL and parse_pool("\t4 ") == Pool.AUTO_INTERNAL
    assert parse_pool(2) == Pool.AUTO and parse_pool(" auto ") == Pool.AUTO


async def _fuzz_guest_manager(tmp_path):
    """A host manager whose VM's guest answers what the test queues (the link seam)."""
    from support.fuzz.harnesses.host_handlers import FuzzKind

    from vmis.host.manager import HostManager
    from vmis.host.store import Store

    kind = FuzzKind()
    manager = HostManager(Store(f"sqlite:///{tmp_path / 'host.db'}"), guest_kinds={"vmis": kind})
    await manager.start()
    manager.add_vm("FakeVM", "unix:/nonexistent")
    assert await manager.session("FakeVM").wait_connected(10)
    return manager, kind.link


async def test_a_malformed_freeze_answer_still_ends_in_a_thaw(tmp_path):
    # host_handlers: float("abc") and iterating 5 raised out of CheckpointRun.run after
    # the guest had frozen: no THAW was sent, the guest stayed frozen until its watchdog
    from vmis.services.vss.host import VssHost

    manager, link = await _fuzz_guest_manager(tmp_path)
    try:
        link.answers[(VSS.id, VssOp.FREEZE)] = [
            b'{"frozen": 5, "freeze_ms": "abc", "thaw_in": [1], "timeout": 30}']
        link.answers[(VSS.id, VssOp.THAW)] = [b'{"result": "thawed", "cycle": {"thawed": 3}}']
        report = await manager.service(VssHost).checkpoint("FakeVM", command="true")
        assert report.status == "Completed", report.error
        assert link.answers[(VSS.id, VssOp.THAW)] == [], "no THAW was sent"
    finally:
        await manager.close()


async def test_a_malformed_start_answer_gives_a_command_with_the_defaults(tmp_path):
    # host_handlers: int(None) / int("") of keepalive_ms or input_window raised out of
    # RemoteCommand.start (Invoke-Command failed with an internal error)
    from vmis.services.vmsession.host import RemoteCommand

    manager, link = await _fuzz_guest_manager(tmp_path)
    try:
        link.answers[(VMSESSION.id, VmSessionOp.START)] = [
            b'{"keepalive_ms": null, "input_window": "", "pid": 7}']
        cmd = await RemoteCommand.start(manager.session("FakeVM"), ["true"], stdin=True)
        assert cmd.pid == 7 and cmd.input_window == 0
        cmd.abandon()
    finally:
        await manager.close()


@pytest.mark.parametrize("token", ["ab\0" + "c" * 29, "../../../../tmp/x" + "0" * 16, "short",
                                   "é" * 32, "a" * 65, 32])
async def test_a_copy_whose_token_cannot_name_a_partial_file_is_refused(short_tmp, token):
    # guest_handlers: the token's start names the partial file; one with a NUL raised
    # ValueError in os.unlink ("failed: internal error"), and a '/' named another path
    async with host_guest_pair(short_tmp) as pair:
        fcopy = await _fcopy_running(pair)
        body = {"path": "/tmp/", "name": "x", "size": 10, "token": token, "owner": "o",
                "mode": 0o644, "atime_ns": 1, "mtime_ns": 1}
        data = b"0123456789"
        for op, payload in ((FcopyOp.OPEN_WRITE, encode_json(body)),
                            (FcopyOp.PUT, encode_json_raw(
                                {**body, "sha256": hashlib.sha256(data).hexdigest()}, data))):
            with pytest.raises(RemoteServiceError) as refused:
                await pair.session.link.request(FCOPY.id, op, payload)
            assert refused.value.code == "bad-request", refused.value
            assert "token" in str(refused.value)
        assert len(fcopy.handles) == 0 and list((pair.root / "tmp").iterdir()) == []
