"""Copy-VMFile through the real channel: an in-process host manager and guest agent.

docs/services/fcopy.md: both directions, Hyper-V's flag semantics, trees,
the guest's policy, freezes, resume, and the API's progress stream.
"""

import asyncio
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from support.pair import eventually, host_guest_pair

from vmis.errors import RemoteServiceError, ServiceUnavailable, StateError, TargetBusy
from vmis.services.fcopy.receiver import PART_SUFFIX
from vmis.services.fcopy.guest_handles import WriteOpen
from vmis.services.fcopy.host import FcopyHost

MIB = 1024 * 1024
GSI = "Guest Service Interface"


def copy_vm_file(pair: Any, *args: Any, **kwargs: Any) -> Any:
    """Copy-VMFile through the pair's manager."""
    return pair.manager.service(FcopyHost).copy_vm_file(*args, **kwargs)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
async def pair(short_tmp):
    async with host_guest_pair(short_tmp) as p:
        for d in ("tmp", "home", "etc"):
            (p.root / d).mkdir(exist_ok=True)
        await p.manager.set_enabled(["DemoVM"], [GSI], True)
        await eventually(lambda: p.session.guest["fcopy"].state == "running")
        yield p


def host_file(directory: Path, name: str, data: bytes, mode: int = 0o640,
              mtime_ns: int = 1_500_000_000_000_000_000) -> Path:
    path = directory / name
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def fcopy(pair):
    return pair.agent.manager.services["fcopy"]


async def copy(pair, source, destination, file_source="Host", **kw):
    return await copy_vm_file(pair, "DemoVM", str(source), str(destination),
                              file_source, **kw)


async def remote_error(coro) -> tuple[str, str]:
    with pytest.raises(RemoteServiceError) as info:
        await coro
    return info.value.code, str(info.value)


# Section: single files


async def test_host_to_guest_keeps_content_mode_and_mtime(pair, short_tmp):
    data = os.urandom(5 * MIB + 17)
    src = host_file(short_tmp, "a.bin", data, 0o751)
    result = await copy(pair, src, "/tmp/")  # a directory: the source name is used
    dest = pair.root / "tmp/a.bin"
    assert dest.read_bytes() == data
    st = dest.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o751, 1_500_000_000_000_000_000)
    assert result["Sha256"] == sha(data)
    assert (result["Destination"], result["Files"], result["Bytes"]) == ("/tmp/a.bin", 1,
                                                                        len(data))
    assert result["BytesSent"] == len(data) and result["BytesResumed"] == 0
    assert [p.name for p in (pair.root / "tmp").iterdir()] == ["a.bin"]


async def test_guest_to_host_small_and_large(pair, short_tmp):
    for size in (0, 100, 3 * MIB + 1):
        data = os.urandom(size)
        host_file(pair.root / "tmp", f"g{size}", data, 0o600, 1_400_000_000_000_000_000)
        result = await copy(pair, f"/tmp/g{size}", short_tmp / f"back{size}", "Guest")
        back = short_tmp / f"back{size}"
        assert back.read_bytes() == data
        assert result["Sha256"] == sha(data)
        assert back.stat().st_mtime_ns == 1_400_000_000_000_000_000
        assert stat.S_IMODE(back.stat().st_mode) == 0o600


async def test_a_copy_out_of_the_guest_receives_its_chunks_in_reused_page_buffers(
        pair, short_tmp, monkeypatch):
    from vmis.services.fcopy import CHUNK_SIZE, WINDOW
    from vmis.services.fcopy.direct_io import PageBuffers
    from vmis.services.fcopy.receiver import Receiver

    data = os.urandom(12 * CHUNK_SIZE + 5)
    host_file(pair.root / "tmp", "big", data)
    made, seen = [], []
    take, submit = PageBuffers.take, Receiver.submit

    def counting_take(self):
        buffer = take(self)
        made.append(self.made)
        return buffer

    def recording_submit(self, offset, chunk, aligned=False):
        seen.append(aligned)
        return submit(self, offset, chunk, aligned=aligned)

    monkeypatch.setattr(PageBuffers, "take", counting_take)
    monkeypatch.setattr(Receiver, "submit", recording_submit)
    result = await copy(pair, "/tmp/big", short_tmp / "big", "Guest")
    assert (short_tmp / "big").read_bytes() == data and result["Sha256"] == sha(data)
    # every whole chunk came in a buffer of the copy's (the last 5 bytes, a small
    # answer, in none), and the buffers went round: no more were made than READs
    # and writes were in flight at once
    assert seen == [True] * 12 + [False]
    assert len(made) == 12 and max(made) <= 2 * WINDOW + 1


async def test_non_ascii_names_travel_intact(pair, short_tmp):
    src = host_file(short_tmp, "résumé ✓.txt", b"hello")
    await copy(pair, src, "/tmp/")
    assert (pair.root / "tmp/résumé ✓.txt").read_bytes() == b"hello"
    await copy(pair, "/tmp/résumé ✓.txt", f"{short_tmp}/out/", "Guest", create_full_path=True)
    assert (short_tmp / "out/résumé ✓.txt").read_bytes() == b"hello"


async def test_existing_destination_needs_force(pair, short_tmp):
    src = host_file(short_tmp, "f.txt", b"new")
    (pair.root / "tmp/f.txt").write_bytes(b"old")
    code, message = await remote_error(copy(pair, src, "/tmp/f.txt"))
    assert code == "exists" and "-Force" in message
    assert (pair.root / "tmp/f.txt").read_bytes() == b"old"
    big = host_file(short_tmp, "big.bin", os.urandom(3 * MIB))
    (pair.root / "tmp/big.bin").write_bytes(b"old")
    assert (await remote_error(copy(pair, big, "/tmp/")))[0] == "exists"
    await copy(pair, src, "/tmp/f.txt", force=True)
    await copy(pair, big, "/tmp/", force=True)
    assert (pair.root / "tmp/f.txt").read_bytes() == b"new"
    assert (pair.root / "tmp/big.bin").read_bytes() == big.read_bytes()


async def test_create_full_path_creates_missing_directories(pair, short_tmp):
    src = host_file(short_tmp, "f.txt", b"x")
    code, message = await remote_error(copy(pair, src, "/tmp/a/b/f.txt"))
    assert code == "not-found" and "-CreateFullPath" in message
    assert not (pair.root / "tmp/a").exists()
    await copy(pair, src, "/tmp/a/b/f.txt", create_full_path=True)
    assert (pair.root / "tmp/a/b/f.txt").read_bytes() == b"x"
    assert stat.S_IMODE((pair.root / "tmp/a").stat().st_mode) == 0o755
    await copy(pair, src, "/tmp/c/", create_full_path=True)  # "dir/": copied into it
    assert (pair.root / "tmp/c/f.txt").read_bytes() == b"x"


async def test_guest_to_host_follows_the_same_rules(pair, short_tmp):
    (pair.root / "tmp/g.txt").write_bytes(b"guest")
    (short_tmp / "exists.txt").write_bytes(b"host")
    with pytest.raises(Exception, match="-Force") as info:
        await copy(pair, "/tmp/g.txt", short_tmp / "exists.txt", "Guest")
    assert getattr(info.value, "code", "") == "exists"
    await copy(pair, "/tmp/g.txt", short_tmp / "exists.txt", "Guest", force=True)
    assert (short_tmp / "exists.txt").read_bytes() == b"guest"
    with pytest.raises(Exception, match="CreateFullPath"):
        await copy(pair, "/tmp/g.txt", short_tmp / "x/y/g.txt", "Guest")
    await copy(pair, "/tmp/g.txt", short_tmp / "x/y/g.txt", "Guest", create_full_path=True)
    assert (short_tmp / "x/y/g.txt").read_bytes() == b"guest"


async def test_missing_sources_are_clear(pair, short_tmp):
    with pytest.raises(Exception, match="does not exist on the host"):
        await copy(pair, short_tmp / "nope", "/tmp/")
    with pytest.raises(Exception, match="does not exist in the guest"):
        await copy(pair, "/tmp/nope", short_tmp / "x", "Guest")


# Section: policy


async def test_destinations_outside_the_allowed_roots_are_denied(pair, short_tmp):
    src = host_file(short_tmp, "evil", b"x")
    code, message = await remote_error(copy(pair, src, "/etc/evil"))
    assert code == "denied" and "allowed roots" in message
    code, message = await remote_error(copy(pair, src, "/tmp/../etc/evil"))
    assert code == "denied" and "'..'" in message
    os.symlink("/etc", pair.root / "tmp/etc-link")
    assert (await remote_error(copy(pair, src, "/tmp/etc-link/evil")))[0] == "denied"
    os.symlink("../../../../../../../../etc/passwd", pair.root / "tmp/pw")
    assert (await remote_error(copy(pair, src, "/tmp/pw", force=True)))[0] == "denied"
    assert not (pair.root / "etc/evil").exists()


async def test_sources_outside_the_allowed_roots_are_denied(pair, short_tmp):
    (pair.root / "etc/shadow").write_text("secret")
    code, _ = await remote_error(copy(pair, "/etc/shadow", short_tmp / "s", "Guest"))
    assert code == "denied"
    os.symlink("/etc/shadow", pair.root / "tmp/shadow")
    assert (await remote_error(copy(pair, "/tmp/shadow", short_tmp / "s", "Guest")))[0] == \
        "denied"
    assert not (short_tmp / "s").exists()


async def test_disabled_service_is_a_clear_error(pair, short_tmp):
    await pair.manager.set_enabled(["DemoVM"], [GSI], False)
    src = host_file(short_tmp, "f", b"x")
    with pytest.raises(ServiceUnavailable, match="disabled on the host"):
        await copy(pair, src, "/tmp/")


# Section: trees


async def test_recurse_copies_a_tree_both_ways_with_modes_and_mtimes(pair, short_tmp):
    tree = short_tmp / "site"
    (tree / "a/b").mkdir(parents=True)
    (tree / "empty").mkdir()
    files = {"index.html": (b"<html/>", 0o644), "a/app.bin": (os.urandom(2 * MIB + 3), 0o755),
             "a/b/deep.txt": (b"deep", 0o600)}
    for i, (rel, (data, mode)) in enumerate(files.items()):
        host_file(tree, rel, data, mode, 1_300_000_000_000_000_000 + i)
    os.symlink("/etc/passwd", tree / "a/link")
    os.chmod(tree / "a/b", 0o700)
    for i, d in enumerate(("a/b", "a", "empty", "")):
        os.utime(tree / d, ns=(1_200_000_000_000_000_000 + i,) * 2)
    with pytest.raises(StateError, match="-Recurse"):
        await copy(pair, tree, "/tmp/")
    result = await copy(pair, tree, "/tmp/", recurse=True)
    assert result["Destination"] == "/tmp/site"
    assert (result["Files"], result["Directories"]) == (3, 4)
    assert result["Skipped"] == [{"Path": str(tree / "a/link"), "Reason": "a symbolic link"}]
    assert {i["Path"]: i["Sha256"] for i in result["Items"]} == {
        f"/tmp/site/{rel}": sha(data) for rel, (data, _) in files.items()}

    def check(top: Path) -> None:
        for i, (rel, (data, mode)) in enumerate(files.items()):
            st = (top / rel).stat()
            assert (top / rel).read_bytes() == data
            assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == \
                (mode, 1_300_000_000_000_000_000 + i)
        for i, d in enumerate(("a/b", "a", "empty", "")):
            assert (top / d).stat().st_mtime_ns == 1_200_000_000_000_000_000 + i
        assert stat.S_IMODE((top / "a/b").stat().st_mode) == 0o700
        assert not (top / "a/link").exists()

    check(pair.root / "tmp/site")
    back = await copy(pair, "/tmp/site", short_tmp / "restored", "Guest", recurse=True)
    assert back["Destination"] == str(short_tmp / "restored")
    check(short_tmp / "restored")
    # Into an existing directory: the tree goes inside it, under its own name.
    await copy(pair, "/tmp/site", short_tmp / "restored", "Guest", recurse=True)
    check(short_tmp / "restored/site")
    # Again without -Force: the files exist.
    with pytest.raises(Exception, match="-Force"):
        await copy(pair, tree, "/tmp/", recurse=True)
    await copy(pair, tree, "/tmp/", recurse=True, force=True)


# Section: freezes


async def test_copies_into_a_frozen_guest_are_refused_and_out_of_it_allowed(pair, short_tmp):
    src = host_file(short_tmp, "f", b"x")
    (pair.root / "tmp/out").write_bytes(b"data")
    pair.agent.ctx.set_frozen(True)
    try:
        with pytest.raises(TargetBusy, match="frozen") as info:
            await copy(pair, src, "/tmp/")
        assert info.value.code == "busy"
        await copy(pair, "/tmp/out", short_tmp / "out", "Guest")
        assert (short_tmp / "out").read_bytes() == b"data"
    finally:
        pair.agent.ctx.set_frozen(False)
    await copy(pair, src, "/tmp/")


async def test_a_freeze_pauses_a_copy_in_progress_until_the_thaw(pair, short_tmp):
    data = os.urandom(40 * MIB)
    src = host_file(short_tmp, "big", data)
    frozen = asyncio.Event()

    def progress(p):
        if p.bytes_done >= 4 * MIB and not frozen.is_set():
            pair.agent.ctx.set_frozen(True)
            frozen.set()

    task = asyncio.ensure_future(copy_vm_file(pair, "DemoVM", str(src), "/tmp/",
                                              "Host", progress=progress))
    await asyncio.wait_for(frozen.wait(), 30)
    await asyncio.sleep(0.3)  # what was already being written finishes
    writers = [w.receiver for w in [w for _, w in fcopy(pair).handles.items()] if isinstance(w, WriteOpen)]
    assert len(writers) == 1
    held = writers[0].written
    await asyncio.sleep(0.5)
    assert writers[0].written == held < len(data)
    assert not task.done()
    pair.agent.ctx.set_frozen(False)
    result = await asyncio.wait_for(task, 60)
    assert result["Sha256"] == sha(data)
    assert (pair.root / "tmp/big").read_bytes() == data


# Section: resume


async def interrupted(pair, coro_factory, at_least: int) -> None:
    """Start a copy and cancel it once *at_least* bytes went through."""
    reached = asyncio.Event()

    def progress(p):
        if p.bytes_done >= at_least:
            reached.set()

    task = asyncio.ensure_future(coro_factory(progress))
    await asyncio.wait_for(reached.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_interrupted_copy_into_the_guest_resumes(pair, short_tmp):
    data = os.urandom(48 * MIB)
    src = host_file(short_tmp, "big", data)
    await interrupted(pair, lambda progress: copy_vm_file(
        pair, "DemoVM", str(src), "/tmp/", "Host", progress=progress), 24 * MIB)
    assert not (pair.root / "tmp/big").exists()
    parts = [p for p in (pair.root / "tmp").iterdir() if p.name.endswith(PART_SUFFIX)]
    assert len(parts) == 1
    await eventually(lambda: not len(fcopy(pair).handles))  # the guest let go of it
    result = await copy(pair, src, "/tmp/")
    assert result["BytesResumed"] >= 16 * MIB
    assert result["BytesSent"] == len(data) - result["BytesResumed"]
    assert (pair.root / "tmp/big").read_bytes() == data
    assert result["Sha256"] == sha(data)
    assert sorted(p.name for p in (pair.root / "tmp").iterdir()) == ["big"]


async def test_an_interrupted_copy_out_of_the_guest_resumes(pair, short_tmp):
    data = os.urandom(48 * MIB)
    host_file(pair.root / "tmp", "big", data)
    dest = short_tmp / "got.bin"
    await interrupted(pair, lambda progress: copy_vm_file(
        pair, "DemoVM", "/tmp/big", str(dest), "Guest", progress=progress), 24 * MIB)
    assert not dest.exists()
    result = await copy(pair, "/tmp/big", dest, "Guest")
    assert result["BytesResumed"] >= 16 * MIB
    assert result["BytesSent"] == len(data) - result["BytesResumed"]
    assert dest.read_bytes() == data
    assert [p.name for p in short_tmp.iterdir() if PART_SUFFIX in p.name] == []


async def test_a_changed_source_starts_over_and_drops_the_old_partial(pair, short_tmp):
    data = os.urandom(32 * MIB)
    src = host_file(short_tmp, "big", data)
    await interrupted(pair, lambda progress: copy_vm_file(
        pair, "DemoVM", str(src), "/tmp/", "Host", progress=progress), 16 * MIB)
    await eventually(lambda: not len(fcopy(pair).handles))
    data2 = os.urandom(32 * MIB)
    host_file(short_tmp, "big", data2, mtime_ns=1_600_000_000_000_000_000)
    result = await copy(pair, src, "/tmp/")
    assert result["BytesResumed"] == 0
    assert (pair.root / "tmp/big").read_bytes() == data2
    assert sorted(p.name for p in (pair.root / "tmp").iterdir()) == ["big"]


async def test_partial_data_that_differs_from_the_source_is_not_kept(pair, short_tmp):
    # Same token (path, size, mtime), other content: the prefix hashes differ.
    data = os.urandom(32 * MIB)
    src = host_file(short_tmp, "big", data)
    await interrupted(pair, lambda progress: copy_vm_file(
        pair, "DemoVM", str(src), "/tmp/", "Host", progress=progress), 16 * MIB)
    await eventually(lambda: not len(fcopy(pair).handles))
    other = bytearray(data)
    other[:100] = bytes(100)
    host_file(short_tmp, "big", bytes(other))  # same mtime as before
    result = await copy(pair, src, "/tmp/")
    assert result["BytesResumed"] == 0
    assert (pair.root / "tmp/big").read_bytes() == bytes(other)


# Section: the API


async def test_api_streams_progress_then_the_result(pair, short_tmp):
    data = os.urandom(20 * MIB)
    src = host_file(short_tmp, "s.bin", data)
    body = {"source": str(src), "destination": "/tmp/", "file_source": "Host"}
    lines = []
    async with pair.api.stream("POST", "/v1/vms/DemoVM/copy?stream=true", json=body,
                               timeout=60) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.strip():
                lines.append(json.loads(line))
    assert lines[-1]["type"] == "result" and lines[-1]["Sha256"] == sha(data)
    assert all(line["type"] == "progress" for line in lines[:-1])
    assert all(0 <= line["bytes"] <= line["total"] == len(data) for line in lines[:-1])


async def test_api_answers_a_plain_call_with_the_streams_result(pair, short_tmp):
    tree = short_tmp / "tree"
    (tree / "d").mkdir(parents=True)
    for i in range(30):
        (tree / "d" / f"f{i}\u00e9").write_bytes(os.urandom(i))
    body = {"source": str(tree), "destination": "/tmp/", "file_source": "Host",
            "recurse": True, "force": True}
    plain = await pair.api.post("/v1/vms/DemoVM/copy", json=body, timeout=60)
    assert plain.status_code == 200
    assert plain.headers["content-type"] == "application/json"
    async with pair.api.stream("POST", "/v1/vms/DemoVM/copy?stream=true", json=body,
                               timeout=60) as response:
        lines = [json.loads(line) async for line in response.aiter_lines() if line.strip()]
    streamed = {k: v for k, v in lines[-1].items() if k != "type"}
    answer = plain.json()
    assert len(answer["Items"]) == 30 and answer["Items"][0]["Path"].endswith("\u00e9")
    for result in (answer, streamed):
        result.pop("Seconds"), result.pop("BytesPerSecond")
    assert answer == streamed


async def test_api_reports_errors_before_and_during_the_copy(pair, short_tmp):
    bad = await pair.api.post("/v1/vms/NoSuchVM/copy",
                              json={"source": "/x", "destination": "/tmp/"})
    assert bad.status_code == 404
    rel = await pair.api.post("/v1/vms/DemoVM/copy",
                              json={"source": "rel/path", "destination": "/tmp/"})
    assert rel.status_code == 400 and "absolute" in rel.json()["error"]
    src = host_file(short_tmp, "f", b"x")
    lines = []
    async with pair.api.stream("POST", "/v1/vms/DemoVM/copy?stream=true",
                               json={"source": str(src), "destination": "/etc/f"}) as response:
        async for line in response.aiter_lines():
            if line.strip():
                lines.append(json.loads(line))
    assert lines[-1]["type"] == "error" and lines[-1]["code"] == "denied"


# Section: the guest's answers to malformed requests


async def test_malformed_requests_are_refused_without_leaking(pair):
    from vmis.protocol import decode_json, encode_json, encode_json_raw
    from vmis.services.catalog import by_key
    from vmis.services.fcopy import FcopyOp

    spec = by_key("fcopy")

    async def ask(op, payload):
        return await pair.session.request(spec, op, payload, timeout=10)

    def guest_fds():
        # descriptors of this process (the agent runs in it) under the guest's /tmp
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(pair.root / "tmp")):
                found.append(target)
        return found

    assert guest_fds() == []
    good = {"path": "/tmp/x.bin", "name": "x.bin", "size": 10, "token": "t" * 32}
    for bad in ({**good, "size": -1}, {**good, "size": "10"}, {**good, "token": 5},
                {**good, "name": "../x"}, {**good, "path": "relative"}, {"path": "/tmp/x"}):
        code, _ = await remote_error(ask(FcopyOp.OPEN_WRITE, encode_json(bad)))
        assert code == "bad-request", bad
    assert guest_fds() == []
    opened = decode_json(await ask(FcopyOp.OPEN_WRITE, encode_json(good)))
    handle = opened["handle"]
    code, message = await remote_error(ask(FcopyOp.WRITE, encode_json_raw(
        {"handle": handle, "offset": 5}, b"12345")))
    assert code == "bad-request" and "expected 0" in message
    code, _ = await remote_error(ask(FcopyOp.WRITE, encode_json_raw(
        {"handle": handle, "offset": 0}, b"x" * 11)))
    assert code == "bad-request"
    code, _ = await remote_error(ask(FcopyOp.READ, encode_json(
        {"handle": handle, "offset": 0, "length": 1})))
    assert code == "bad-request"  # a write handle is not a read handle
    await ask(FcopyOp.ABORT, encode_json({"handle": handle, "keep": False}))
    code, _ = await remote_error(ask(FcopyOp.COMMIT, encode_json({"handle": handle,
                                                                  "sha256": "0"})))
    assert code == "bad-request"
    await eventually(lambda: guest_fds() == [])
    assert os.listdir(pair.root / "tmp") == []


async def test_a_failing_disk_in_the_guest_ends_the_copy_with_its_reason(pair, short_tmp,
                                                                        monkeypatch):
    # The guest's writer thread fails (the disk is full): the copy stops with
    # that reason, nothing reaches the destination, and the partial file is
    # good only up to its last checkpoint, so a rerun completes the copy.
    from vmis.errors import ServiceError
    from vmis.services.fcopy.receiver import Receiver

    data = os.urandom(40 * MIB + 5)
    src = host_file(short_tmp, "full.bin", data)
    real = Receiver._pwrite

    def failing(self, offset, chunk, direct=None, aligned=False):
        if offset >= 16 * MIB:
            raise ServiceError("too-large", f"writing {self.display}: No space left on device")
        real(self, offset, chunk)

    monkeypatch.setattr(Receiver, "_pwrite", failing)
    code, message = await remote_error(copy(pair, src, "/tmp/full.bin"))
    assert code == "too-large" and "No space left on device" in message
    assert not (pair.root / "tmp/full.bin").exists()
    await eventually(lambda: not len(fcopy(pair).handles))
    monkeypatch.setattr(Receiver, "_pwrite", real)
    result = await copy(pair, src, "/tmp/full.bin")
    assert (pair.root / "tmp/full.bin").read_bytes() == data
    assert 0 < result["BytesResumed"] <= 16 * MIB
    assert [p.name for p in (pair.root / "tmp").iterdir()] == ["full.bin"]


async def test_a_failing_disk_on_the_host_ends_the_copy_out_of_the_guest(pair, short_tmp,
                                                                        monkeypatch):
    from vmis.errors import ServiceError, VmisError
    from vmis.services.fcopy.receiver import Receiver

    data = os.urandom(20 * MIB)
    (pair.root / "tmp/out.bin").write_bytes(data)

    def failing(self, offset, chunk, direct=None, aligned=False):
        raise ServiceError("failed", f"writing {self.display}: Input/output error")

    monkeypatch.setattr(Receiver, "_pwrite", failing)
    with pytest.raises(VmisError, match="Input/output error"):
        await copy(pair, "/tmp/out.bin", short_tmp / "out.bin", "Guest")
    assert [p.name for p in short_tmp.iterdir() if p.name.startswith(".out.bin")
            or p.name == "out.bin"] == []


def _last_write_held(pair, monkeypatch, last):
    """A file of three chunks in the guest whose last chunk the host writes only once it
    has sent CLOSE (*last* then runs in the writer's thread, and may raise); returns the
    file's bytes and the fcopy ops the host sent but READ, in order, with the writer's
    events among them."""
    import threading

    from vmis.services.fcopy import CHUNK_SIZE
    from vmis.services.fcopy.file_copier import FileCopier
    from vmis.services.fcopy.receiver import Receiver

    data = os.urandom(3 * CHUNK_SIZE)
    host_file(pair.root / "tmp", "big", data)
    events, close_sent = [], threading.Event()
    call, pwrite = FileCopier._call, Receiver._pwrite

    def recording(self, op, payload, timeout):
        events.append(op.name)
        if op.name == "CLOSE":
            close_sent.set()
        return call(self, op, payload, timeout)

    def held(self, offset, chunk, *args, **kwargs):
        if offset == 2 * CHUNK_SIZE:
            close_sent.wait(10)  # the old order, CLOSE after the writes, times out here
            last(self, events)
        return pwrite(self, offset, chunk, *args, **kwargs)

    monkeypatch.setattr(FileCopier, "_call", recording)
    monkeypatch.setattr(Receiver, "_pwrite", held)
    return data, events


async def test_the_guest_closes_its_file_while_the_last_chunks_are_written(
        pair, short_tmp, monkeypatch):
    data, events = _last_write_held(pair, monkeypatch,
                                    lambda receiver, events: events.append("last write"))
    result = await copy(pair, "/tmp/big", short_tmp / "big", "Guest")
    assert (short_tmp / "big").read_bytes() == data and result["Sha256"] == sha(data)
    assert events.index("CLOSE") < events.index("last write")
    assert len(fcopy(pair).handles) == 0


async def test_a_last_write_that_fails_after_the_guest_closed_sends_no_abort(
        pair, short_tmp, monkeypatch):
    from vmis.errors import ServiceError, VmisError

    def failing(receiver, events):
        raise ServiceError("failed", f"writing {receiver.display}: Input/output error")

    _, events = _last_write_held(pair, monkeypatch, failing)
    with pytest.raises(VmisError, match="Input/output error"):
        await copy(pair, "/tmp/big", short_tmp / "big", "Guest")
    assert "CLOSE" in events and "ABORT" not in events
    assert len(fcopy(pair).handles) == 0
    assert not (short_tmp / "big").exists()
