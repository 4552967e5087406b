"""Copies that end badly: stopped callers, leaked handles, leases, races, stale partial files.

docs/services/fcopy.md §4.1 (issue 16): a copy belongs to the host
manager, not to its client; a client that goes away stops it at once and
the guest lets go of everything it held, so the same copy can be resumed
right away; handles a host forgot are taken over or expire; two copies to
one destination: the second is told the target is busy; partial files
nobody resumes are swept; Get-VMFileCopy and Stop-VMFileCopy list and stop.
"""

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from support.pair import eventually, host_guest_pair

from vmis.errors import StateError, TargetBusy
from vmis.protocol import decode_json, encode_json
from vmis.services.catalog import by_key
from vmis.services.fcopy import FcopyOp, resume_token
from vmis.services.fcopy.host import FcopyHost
from vmis.services.fcopy.partials import PART_SUFFIX

MIB = 1024 * 1024
GSI = "Guest Service Interface"
SPEC = by_key("fcopy")


@pytest.fixture
async def pair(short_tmp):
    async with host_guest_pair(short_tmp) as p:
        (p.root / "tmp").mkdir(exist_ok=True)
        await p.manager.set_enabled(["DemoVM"], [GSI], True)
        await eventually(lambda: p.session.guest["fcopy"].state == "running")
        yield p


def guest(pair):
    return pair.agent.manager.services["fcopy"]


def big_file(directory: Path, size: int = 48 * MIB, name: str = "big") -> Path:
    path = directory / name
    path.write_bytes(os.urandom(size))
    return path


async def until_bytes(copy, at_least: int) -> None:
    await eventually(lambda: copy.progress.bytes_done >= at_least, timeout=60, interval=0.005)


async def copying(fcopy, at_least: int, *args, **kwargs) -> asyncio.Task:
    """Copy-VMFile(*args) as a task, once it has sent *at_least* bytes."""
    reached = asyncio.Event()

    def progress(p):
        if p.bytes_done >= at_least:
            reached.set()

    task = asyncio.ensure_future(fcopy.copy_vm_file(*args, progress=progress, **kwargs))
    await asyncio.wait_for(reached.wait(), 60)
    return task


async def ask(pair, op, body):
    return decode_json(await pair.session.request(SPEC, op, encode_json(body), timeout=10))


# Section: a client that goes away


async def test_a_stopped_caller_stops_its_copy_which_resumes_at_once(pair, short_tmp):
    src = big_file(short_tmp)
    fcopy = pair.manager.service(FcopyHost)
    caller = await copying(fcopy, 16 * MIB, "DemoVM", str(src), "/tmp/", "Host")
    # Cancelled again and again, as an ASGI server cancels a handler whose
    # client left: the copy still lets go of what the guest holds for it.
    for _ in range(20):
        caller.cancel()
        await asyncio.sleep(0)
    with pytest.raises(asyncio.CancelledError):
        await caller
    # No waiting for a lease: the same copy right away, and it resumes.
    result = await fcopy.copy_vm_file("DemoVM", str(src), "/tmp/", "Host")
    assert result["BytesResumed"] >= 8 * MIB
    assert (pair.root / "tmp/big").read_bytes() == src.read_bytes()
    assert len(guest(pair).handles) == 0
    assert os.listdir(pair.root / "tmp") == ["big"]


async def test_the_same_copy_twice_at_once_is_busy_naming_the_first(pair, short_tmp):
    src = big_file(short_tmp)
    fcopy = pair.manager.service(FcopyHost)
    first = await fcopy.start_copy("DemoVM", str(src), "/tmp/", "Host")
    with pytest.raises(TargetBusy, match=f"Id {first.id}"):
        await fcopy.start_copy("DemoVM", str(src), "/tmp/", "Host")
    assert (await first.task)["Sha256"]


# Section: handles the host forgot


async def test_a_handle_left_open_is_taken_over_by_the_same_copy(pair, short_tmp):
    src = big_file(short_tmp, 6 * MIB)
    st = src.stat()
    token = resume_token("to-guest", str(src), st.st_size, st.st_mtime_ns, "/tmp/\0big")
    # A host that opened the copy and then forgot it (its task died mid-request).
    opened = await ask(pair, FcopyOp.OPEN_WRITE, {
        "path": "/tmp/", "name": "big", "size": st.st_size, "token": token, "owner": "ghost",
        "resume": True})
    assert opened["handle"] in dict(guest(pair).handles.items())
    result = await pair.manager.service(FcopyHost).copy_vm_file("DemoVM", str(src), "/tmp/",
                                                                "Host")
    assert result["Sha256"] and len(guest(pair).handles) == 0


async def test_abort_by_owner_closes_everything_of_that_copy(pair):
    for name in ("a", "b"):
        await ask(pair, FcopyOp.OPEN_WRITE, {"path": "/tmp/", "name": name, "size": 10,
                                             "token": name * 32, "owner": "gone"})
    await ask(pair, FcopyOp.OPEN_WRITE, {"path": "/tmp/", "name": "c", "size": 10,
                                         "token": "c" * 32, "owner": "alive"})
    assert (await ask(pair, FcopyOp.ABORT, {"owner": "gone", "keep": False}))["closed"] == 2
    assert [item.owner for _, item in guest(pair).handles.items()] == ["alive"]


async def test_a_handle_nobody_uses_expires_keeping_its_partial_file(pair):
    opened = await ask(pair, FcopyOp.OPEN_WRITE, {"path": "/tmp/", "name": "x", "size": 10,
                                                  "token": "d" * 32, "owner": "o"})
    admin = guest(pair).admin
    admin.lease = 30
    admin.expire()
    assert len(guest(pair).handles) == 1  # not idle long enough yet
    admin.lease = 0.2
    await asyncio.sleep(0.3)
    admin.expire()
    await eventually(lambda: len(guest(pair).handles) == 0)
    assert any(p.endswith(PART_SUFFIX) for p in os.listdir(pair.root / "tmp"))
    assert opened["handle"]


# Section: two copies, one destination


async def test_two_copies_to_one_destination_the_second_is_told_it_is_busy(pair, short_tmp):
    a = big_file(short_tmp, name="a")
    b = big_file(short_tmp, name="b")
    fcopy = pair.manager.service(FcopyHost)
    first = await copying(fcopy, 4 * MIB, "DemoVM", str(a), "/tmp/target", "Host")
    with pytest.raises(TargetBusy, match="being written by another copy") as info:
        await fcopy.copy_vm_file("DemoVM", str(b), "/tmp/target", "Host")
    assert info.value.code == "busy" and info.value.exit_status == 75
    await first
    assert (pair.root / "tmp/target").read_bytes() == a.read_bytes()
    # ... and out of the guest, onto one host file.
    c = short_tmp / "c"
    first = await copying(fcopy, 4 * MIB, "DemoVM", "/tmp/target", str(c), "Guest")
    with pytest.raises(TargetBusy):
        await fcopy.copy_vm_file("DemoVM", "/tmp/target", str(c), "Guest", force=True)
    await first
    assert c.read_bytes() == a.read_bytes()


# Section: Get-VMFileCopy, Stop-VMFileCopy


async def test_copies_are_listed_and_stopped_and_their_partial_files_discarded(pair, short_tmp):
    src = big_file(short_tmp)
    write = guest(pair).handlers[FcopyOp.WRITE]

    async def slow(request):
        await asyncio.sleep(0.2)  # a slow disk: the copy is still running when listed
        return await write(request)

    guest(pair).handlers[FcopyOp.WRITE] = slow
    fcopy = pair.manager.service(FcopyHost)
    running = await fcopy.start_copy("DemoVM", str(src), "/tmp/", "Host")
    await eventually(lambda: any(getattr(item, "receiver", None) and
                                 item.receiver.written >= 12 * MIB
                                 for _, item in guest(pair).handles.items()), timeout=60)
    rows = (await pair.api.get("/v1/copies", params={"vm": "Demo*"})).json()
    assert [(r["Id"], r["State"], r["Path"], r["File"]) for r in rows] == [
        (running.id, "Running", "/tmp/", str(src))]
    stopped = await pair.api.post("/v1/vms/DemoVM/copies/stop", json={"id": [running.id]})
    assert stopped.json()["Stopped"] == [running.id]
    with pytest.raises(asyncio.CancelledError):
        await running.task
    rows = (await pair.api.get("/v1/copies")).json()
    assert [(r["State"], r["FileSource"], r["Path"], r["Resumable"]) for r in rows] == [
        ("Partial", "Host", "/tmp/big", True)]
    assert rows[0]["Bytes"] >= 8 * MIB and rows[0]["Size"] == 48 * MIB
    gone = await pair.api.post("/v1/vms/DemoVM/copies/stop",
                               json={"path": ["/tmp/big"], "discard": True})
    assert gone.json()["Removed"] == [rows[0]["Part"]]
    assert (await pair.api.get("/v1/copies")).json() == []
    assert os.listdir(pair.root / "tmp") == []


async def test_stopping_a_copy_that_is_not_running_is_an_error(pair):
    answer = await pair.api.post("/v1/vms/DemoVM/copies/stop", json={"id": [42]})
    assert answer.status_code == 404 and "Get-VMFileCopy" in answer.json()["error"]


async def test_a_host_partial_file_is_listed_under_its_vm(pair, short_tmp):
    (pair.root / "tmp/big").write_bytes(os.urandom(48 * MIB))
    fcopy = pair.manager.service(FcopyHost)
    running = await fcopy.start_copy("DemoVM", "/tmp/big", str(short_tmp / "got"), "Guest")
    await until_bytes(running, 16 * MIB)
    running.stop("test")
    with pytest.raises(asyncio.CancelledError):
        await running.task
    rows = await fcopy.list_copies(["DemoVM"])
    assert [(r["State"], r["FileSource"], r["Path"]) for r in rows] == [
        ("Partial", "Guest", str(short_tmp / "got"))]
    result = await fcopy.stop_copies("DemoVM", paths=[str(short_tmp / "got")], discard=True)
    assert len(result["Removed"]) == 1
    assert not [p for p in os.listdir(short_tmp) if PART_SUFFIX in p]


# Section: the sweep


async def test_partial_files_nobody_resumes_are_swept(pair, short_tmp):
    src = big_file(short_tmp, 20 * MIB)
    fcopy = pair.manager.service(FcopyHost)
    running = await fcopy.start_copy("DemoVM", str(src), "/tmp/", "Host")
    await until_bytes(running, 9 * MIB)
    running.stop("test")
    with pytest.raises(asyncio.CancelledError):
        await running.task
    admin = guest(pair).admin
    assert await admin.sweep() == []  # young: kept for a resume
    old = time.time() - admin.max_age - 60
    for name in os.listdir(pair.root / "tmp"):
        os.utime(pair.root / "tmp" / name, (old, old))
    parts = [n for n in os.listdir(pair.root / "tmp") if n.endswith(PART_SUFFIX)]
    removed = await admin.sweep()
    assert [Path(p).name for p in removed] == parts and len(parts) == 1
    assert os.listdir(pair.root / "tmp") == []  # its resume record went with it
    assert guest(pair).index.entries() == []


async def test_a_dead_agents_tree_is_swept_when_the_next_one_starts(short_tmp):
    async with host_guest_pair(short_tmp) as p:
        (p.root / "tmp").mkdir(exist_ok=True)
        await p.manager.set_enabled(["DemoVM"], [GSI], True)
        await eventually(lambda: p.session.guest["fcopy"].state == "running")
        src = short_tmp / "src"
        (src / "d").mkdir(parents=True)
        for i in range(50):
            (src / f"d/f{i}").write_bytes(b"x" * 100)
        fcopy = p.manager.service(FcopyHost)
        g = guest(p)
        writing = asyncio.Event()
        put = g.trees.put

        async def stalled(request):
            answer = await put(request)
            writing.set()
            await asyncio.sleep(3600)  # the agent dies before the tree is committed
            return answer

        g.handlers[FcopyOp.TREE_PUT] = stalled
        task = asyncio.ensure_future(fcopy.copy_vm_file("DemoVM", str(src), "/tmp/dst", "Host",
                                                        recurse=True))
        await asyncio.wait_for(writing.wait(), 10)
        assert [n for n in os.listdir(p.root / "tmp") if n.endswith(PART_SUFFIX)]
        g.handles._open.clear()  # killed: nothing closes its copies
        await p.restart_agent()
        task.cancel()
        await eventually(lambda: os.listdir(p.root / "tmp") == [])


def test_how_long_partial_files_stay_is_a_setting_of_the_guest(tmp_path):
    from vmis.guest.config import load_config

    conf = tmp_path / "agent.conf"
    conf.write_text("[fcopy]\npartial_max_age = 3600\n")
    assert load_config(conf).partial_max_age == 3600.0
    conf.write_text("[fcopy]\npartial_max_age = never\n")
    with pytest.raises(Exception, match="partial_max_age"):
        load_config(conf)
