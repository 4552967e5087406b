"""The guest half of VSS: hook order, failure handling, the watchdog, nothing written while frozen.

Filesystems are frozen only through the lab freezer (a fake that records),
never for real.
"""

import asyncio
import errno
import json
import logging
import os
import time
from pathlib import Path

import pytest
from support.logs import kept_records
from support.pair import eventually, host_guest_pair
from vss_support import add_hook, hook_log, make_root

from vmis.errors import RemoteServiceError, ServiceError
from vmis.guest.adapters import LabFreezer
from vmis.guest.config import AgentConfig
from vmis.protocol import decode_json, encode_json
from vmis.services import vss as vss_pkg
from vmis.services.catalog import StartupType, by_key
from vmis.services.guest_half import GuestContext
from vmis.services.heartbeat.guest import HeartbeatService
from vmis.services.vss import VssOp
from vmis.services.vss import guest as vss_guest
from vmis.services.vss.freeze import IoctlFreezer
from vmis.services.vss.guest import VssService

VSS = by_key("vss")

async def start_service(root: Path, freezer=None, **config) -> tuple[VssService, GuestContext]:
    settings = {"freeze_timeout": 30.0, "hook_timeout": 10.0, **config}
    ctx = GuestContext(root=root, config=AgentConfig(**settings), notify=lambda *a: None,
                       adapters={"freezer": freezer if freezer is not None else LabFreezer(root)})
    service = VssService(ctx)
    await service.start()
    return service, ctx


# Section: order


async def test_freeze_hooks_in_name_order_then_filesystems_root_last_thaw_reversed(tmp_path):
    root = make_root(tmp_path)
    add_hook(root, "20-app")
    add_hook(root, "10-db")
    service, ctx = await start_service(root)
    freezer = ctx.adapters["freezer"]
    try:
        cycle = await service.freeze("c1", "nightly")
        assert service.state == "frozen" and ctx.frozen
        assert cycle.frozen == ["/var", "/"]
        assert freezer.calls == [("freeze", "/var"), ("freeze", "/")]
        # the freeze hooks ran before anything was frozen
        assert hook_log(root) == [("10-db freeze", []), ("20-app freeze", [])]
        answer = await service.thaw("c1", "host")
        assert answer["result"] == "thawed" and answer["state"] == "thawed"
        assert not ctx.frozen and freezer.frozen == set()
        assert freezer.calls[2:] == [("thaw", "/"), ("thaw", "/var")]
        # thaw hooks: reverse order, after the thaw, told why
        assert hook_log(root)[2:] == [("20-app thaw host", []), ("10-db thaw host", [])]
        assert "nightly" in (root / "hooks.log").read_text()
    finally:
        await service.stop()


async def test_failing_freeze_hook_runs_freezefail_in_reverse_and_freezes_nothing(tmp_path):
    root = make_root(tmp_path)
    add_hook(root, "10-db")
    add_hook(root, "20-app", "echo 'app refuses to quiesce'; exit 3")
    add_hook(root, "30-never")
    service, ctx = await start_service(root)
    try:
        with pytest.raises(ServiceError) as caught:
            await service.freeze("c1")
        assert caught.value.code == "failed"
        assert "20-app freeze: exit 3: app refuses to quiesce" in str(caught.value)
        assert "freezefail hooks ran; nothing is frozen" in str(caught.value)
        assert hook_log(root) == [
            ("10-db freeze", []), ("20-app freeze", []),
            ("20-app freezefail hook", []), ("10-db freezefail hook", []),
        ]
        assert ctx.adapters["freezer"].calls == []
        assert service.state == "thawed" and service.cycle.state == "failed"
        assert not ctx.frozen
        # a failed cycle does not block the next one
        (root / "etc/vmis/freeze.d/20-app").unlink()
        await service.freeze("c2")
        assert service.state == "frozen"
    finally:
        await service.stop()


async def test_filesystem_freeze_failure_rolls_back_and_runs_freezefail(tmp_path):
    root = make_root(tmp_path)
    add_hook(root, "10-db")
    add_hook(root, "20-app")
    freezer = LabFreezer(root)
    freezer.fail_freeze = {"/": errno.EIO}
    service, ctx = await start_service(root, freezer)
    try:
        with pytest.raises(ServiceError, match="freezing / failed"):
            await service.freeze("c1")
        # /var was frozen, / failed: both thawed again, nothing stays frozen
        assert freezer.calls == [("freeze", "/var"), ("freeze", "/"), ("thaw", "/var"),
                                 ("thaw", "/")]
        assert freezer.frozen == set() and not ctx.frozen
        assert [entry for entry, _ in hook_log(root)] == [
            "10-db freeze", "20-app freeze", "20-app freezefail freeze", "10-db freezefail freeze"]
    finally:
        await service.stop()


async def test_missing_mount_table_fails_cleanly(tmp_path):
    root = tmp_path / "root"
    root.mkdir()

    class NoTableFreezer(LabFreezer):
        def __init__(self, root):  # no mount table for this VM
            super().__init__(root)
            (root / "proc/mounts").unlink()

    service, ctx = await start_service(root, NoTableFreezer(root))
    try:
        with pytest.raises(ServiceError, match="cannot read the mount table"):
            await service.freeze("c1")
        assert not ctx.frozen and service.state == "thawed"
    finally:
        await service.stop()


# Section: the watchdog and concurrency


async def test_watchdog_thaws_by_itself_and_says_timed_out(tmp_path):
    root = make_root(tmp_path)
    add_hook(root, "10-db")
    service, ctx = await start_service(root)
    try:
        start = time.monotonic()
        cycle = await service.freeze("c1", timeout=0.4)
        assert cycle.timeout == 0.4
        await eventually(lambda: service.state == "timed-out", timeout=10)
        assert time.monotonic() - start >= 0.35
        assert not ctx.frozen and ctx.adapters["freezer"].frozen == set()
        await eventually(lambda: len(hook_log(root)) == 2, timeout=10)
        assert hook_log(root)[-1] == ("10-db thaw timeout", [])
        assert service.status()["cycle"]["reason"] == "timeout"
        # a THAW that arrives late learns that the guest thawed by itself
        answer = await service.thaw("c1", "host")
        assert answer["result"] == "timed-out" and answer["state"] == "timed-out"
        assert (await service.thaw("other", "host"))["result"] == "not-frozen"
    finally:
        await service.stop()


async def test_requested_timeout_is_capped_by_the_guest(tmp_path):
    service, _ = await start_service(make_root(tmp_path), freeze_timeout=5.0)
    try:
        assert (await service.freeze("c1", timeout=600)).timeout == 5.0
        await service.thaw(None, "guest")
        assert (await service.freeze("c2")).timeout == 5.0
    finally:
        await service.stop()


async def test_second_freeze_and_foreign_thaw_are_busy(tmp_path):
    service, ctx = await start_service(make_root(tmp_path))
    try:
        await service.freeze("c1", "first")
        with pytest.raises(ServiceError) as caught:
            await service.freeze("c2")
        assert caught.value.code == "busy" and "first" in str(caught.value)
        with pytest.raises(ServiceError) as caught:
            await service.thaw("c2", "host")
        assert caught.value.code == "busy"
        assert ctx.frozen
        assert (await service.thaw(None, "guest"))["cycle"]["reason"] == "guest"
    finally:
        await service.stop()


async def test_stopping_the_service_thaws_first(tmp_path):
    root = make_root(tmp_path)
    add_hook(root, "10-db")
    service, ctx = await start_service(root)
    await service.freeze("c1")
    await service.stop()
    assert not ctx.frozen and ctx.adapters["freezer"].frozen == set()
    assert service.cycle.reason == "stopping"
    assert hook_log(root)[-1] == ("10-db thaw stopping", [])


async def test_session_loss_does_not_thaw_but_a_freeze_nobody_will_hear_of_is_undone(tmp_path):
    root = make_root(tmp_path)
    service, ctx = await start_service(root)
    try:
        await service.freeze("c1")
        service.on_session(False)  # the host went away after it learned of the freeze
        await asyncio.sleep(0.2)
        assert service.state == "frozen" and ctx.frozen
        await service.thaw("c1", "host")  # ... and came back to thaw

        add_hook(root, "10-slow", "sleep 0.5")
        freezing = asyncio.ensure_future(service.freeze("c2"))
        await eventually(lambda: service.state == "freezing")
        service.on_session(False)  # the host went away while the hooks ran
        with pytest.raises(ServiceError, match="host session ended during the freeze"):
            await freezing
        assert not ctx.frozen and service.state == "thawed"
        assert ctx.adapters["freezer"].calls[-1][0] == "thaw" or \
            ctx.adapters["freezer"].frozen == set()
        assert [e for e, _ in hook_log(root)][-1] == "10-slow freezefail session"
    finally:
        await service.stop()


async def test_thaw_failure_keeps_the_guest_marked_frozen_and_retries(tmp_path, monkeypatch):
    monkeypatch.setattr(vss_guest, "THAW_RETRY", 0.2)
    root = make_root(tmp_path)
    freezer = LabFreezer(root)
    service, ctx = await start_service(root, freezer)
    try:
        await service.freeze("c1")
        freezer.fail_thaw = {"/var": errno.EIO}
        with pytest.raises(ServiceError, match="thawing failed for /var"):
            await service.thaw("c1", "host")
        assert service.state == "frozen" and ctx.frozen  # the agent still holds its writes
        freezer.fail_thaw = {}
        await eventually(lambda: service.state == "timed-out", timeout=10)
        assert not ctx.frozen and freezer.frozen == set()
    finally:
        await service.stop()


async def test_real_freezer_is_refused_in_a_lab_root(tmp_path):
    def ioctl(fd, request, arg):
        raise AssertionError("a real FIFREEZE was attempted")

    service, ctx = await start_service(make_root(tmp_path), IoctlFreezer(ioctl=ioctl))
    try:
        with pytest.raises(ServiceError) as caught:
            await service.freeze("c1")
        assert caught.value.code == "denied" and not ctx.frozen
    finally:
        await service.stop()


# Section: nothing written while frozen


async def test_log_records_wait_until_the_thaw(tmp_path):
    root = make_root(tmp_path)
    add_hook(root, "10-db", "echo 'db flushed'")
    with kept_records(logging.getLogger(), logging.DEBUG) as kept:
        service, _ = await start_service(root)
        try:
            await service.freeze("c1")
            before = len(kept.messages())
            logging.getLogger("vmis.guest.test").warning("written while frozen")
            assert len(kept.messages()) == before  # held, not emitted
            await service.thaw("c1", "host")
            messages = kept.messages()[before:]
            assert messages[0] == "written while frozen"
            # the hooks' output reaches the log only after the thaw
            assert any("db flushed" in m for m in messages)
            assert not any("db flushed" in m for m in kept.messages()[:before])
        finally:
            await service.stop()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under *root* with its size and mtime, but the fake kernel's state."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.name == "freezer.json" or path.is_socket():
                continue
            st = path.stat()
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


async def test_nothing_is_written_to_the_guest_root_while_frozen(short_tmp):
    async with host_guest_pair(short_tmp, services=[HeartbeatService, VssService]) as pair:
        add_hook(pair.root, "10-db")
        pair.root.joinpath("proc").mkdir(exist_ok=True)
        request = encode_json({"id": "c1", "name": "quiet", "timeout": 30})
        await pair.session.request(VSS, VssOp.FREEZE, request)
        frozen_tree = tree(pair.root)
        state_file = pair.root / "var/lib/vmis/services.json"
        before = state_file.read_bytes()
        # a guest administrator changes a start type; the host asks for status
        await pair.agent.manager.guest_set_startup(by_key("heartbeat"), StartupType.MANUAL)
        status = decode_json(await pair.session.request(VSS, VssOp.STATUS))
        assert status["state"] == "frozen" and status["cycle"]["thaw_in"] > 0
        await asyncio.sleep(0.3)  # heartbeats go on meanwhile
        assert tree(pair.root) == frozen_tree
        answer = decode_json(await pair.session.request(VSS, VssOp.THAW, encode_json({"id": "c1"})))
        assert answer["result"] == "thawed"
        # the held state write happens after the thaw
        assert state_file.read_bytes() != before
        assert json.loads(state_file.read_text())["services"]["vmicheartbeat"]["startup"] == \
            "manual"


# Section: the wire


async def test_wire_errors_and_status(short_tmp):
    async with host_guest_pair(short_tmp, services=[HeartbeatService, VssService]) as pair:
        with pytest.raises(RemoteServiceError) as caught:
            await pair.session.request(VSS, VssOp.FREEZE, encode_json({"timeout": -1}))
        assert caught.value.code == "bad-request"
        with pytest.raises(RemoteServiceError) as caught:
            await pair.session.request(VSS, VssOp.FREEZE, encode_json({"id": 5}))
        assert caught.value.code == "bad-request"
        status = decode_json(await pair.session.request(VSS, VssOp.STATUS))
        assert status["state"] == "thawed" and status["cycle"] is None
        assert status["freeze_timeout"] == vss_pkg.DEFAULT_FREEZE_TIMEOUT
        await pair.session.request(VSS, VssOp.FREEZE, encode_json({"id": "c1"}))
        with pytest.raises(RemoteServiceError) as caught:
            await pair.session.request(VSS, VssOp.FREEZE, encode_json({"id": "c2"}))
        assert caught.value.code == "busy"
        # disabling VSS on the host stops the guest service, which thaws first
        await pair.manager.set_enabled(["DemoVM"], ["VSS"], False)
        service = pair.agent.manager.services["vss"]
        assert not service.running and service.cycle.reason == "stopping"
        assert not pair.agent.ctx.frozen


# Section: an agent that died frozen


async def test_a_new_agent_thaws_what_an_agent_that_died_frozen_left_frozen(tmp_path):
    root = make_root(tmp_path)
    service, ctx = await start_service(root)
    await service.freeze("c-dead", "nightly")
    assert (root / "run/vmis/vss-frozen").read_text() == "c-dead"
    # The process dies: no thaw, no clean-up; the kernel (the lab freezer's state) keeps
    # the filesystems frozen, and a new agent's freezer sees that.
    assert service._watchdog is not None
    service._watchdog.cancel()  # it dies with the process
    reborn = VssService(GuestContext(root=root, config=AgentConfig(), notify=lambda *a: None,
                                     adapters={"freezer": LabFreezer(root)}))
    freezer = reborn.ctx.adapters["freezer"]
    assert freezer.frozen == {"/", "/var"}
    reborn.recover()
    assert freezer.frozen == set() and not (root / "run/vmis/vss-frozen").exists()
    reborn.recover()  # nothing left to do: no thaw call
    assert [c for c in freezer.calls if c[0] == "thaw"] == [("thaw", "/"), ("thaw", "/var")]


async def test_an_agent_that_thawed_leaves_no_mark_and_its_successor_thaws_nothing(tmp_path):
    root = make_root(tmp_path)
    service, ctx = await start_service(root)
    await service.freeze("c1")
    await service.thaw("c1", "host")
    assert not (root / "run/vmis/vss-frozen").exists()
    await service.stop()
    reborn = VssService(GuestContext(root=root, config=AgentConfig(), notify=lambda *a: None,
                                     adapters={"freezer": LabFreezer(root)}))
    reborn.recover()
    assert reborn.ctx.adapters["freezer"].calls == []
