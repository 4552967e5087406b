"""Trees as a stream (fcopy 1.1), both ways, through the real channel; and a 1.0 guest.

docs/services/fcopy.md §3.2: batches of small files, large files streamed
into the same tree, the whole tree placed at once; symbolic links by
policy; every other skip named; names that are not UTF-8 kept byte for
byte; an older agent still served through the old operations.
"""

import asyncio
import hashlib
import os
import socket
import stat
from pathlib import Path

import pytest
from support.pair import eventually, host_guest_pair

from vmis.errors import RemoteServiceError, StateError
from vmis.protocol import decode_json, decode_json_raw
from vmis.services.fcopy import BATCH_FILES, FcopyOp
from vmis.services.fcopy.host import FcopyHost
from vmis.services.fcopy.partials import PART_SUFFIX

MIB = 1024 * 1024
GSI = "Guest Service Interface"
#: a name that is not UTF-8: Latin-1 "café", and a byte that is never UTF-8
ODD = b"caf\xe9-\xff.txt"


async def _ready(p):
    for d in ("tmp", "home", "etc"):
        (p.root / d).mkdir(exist_ok=True)
    await p.manager.set_enabled(["DemoVM"], [GSI], True)
    await eventually(lambda: p.session.guest["fcopy"].state == "running")
    return p


@pytest.fixture
async def pair(short_tmp):
    async with host_guest_pair(short_tmp) as p:
        yield await _ready(p)


def copy(p, source, destination, file_source="Host", **kw):
    return p.manager.service(FcopyHost).copy_vm_file("DemoVM", str(source), str(destination),
                                                     file_source, recurse=True, **kw)


def make_tree(top: Path, files: int = 30, big: int = 0) -> dict[str, bytes]:
    """A tree of small files in a few directories (and *big* MiB in one large file)."""
    made = {}
    for i in range(files):
        rel = f"d{i % 3}/sub{i % 2}/f{i:04}.bin"
        made[rel] = os.urandom(i * 37 % 9000)
    if big:
        made["d0/large.bin"] = os.urandom(big * MIB + 123)
    for i, (rel, data) in enumerate(made.items()):
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(data)
        os.chmod(top / rel, 0o640 + (i % 2) * 0o100)
        os.utime(top / rel, ns=(1_300_000_000_000_000_000 + i,) * 2)
    (top / "empty").mkdir()
    return made


def tree_of(top: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file below *top*: content, mode, mtime (names as bytes where they must be)."""
    found = {}
    for base, _, names in os.walk(top):
        for name in names:
            path = Path(base) / name
            st = path.lstat()
            found[str(path.relative_to(top))] = (
                path.read_bytes() if stat.S_ISREG(st.st_mode) else os.readlink(path).encode(),
                stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return found


# Section: the stream


async def test_a_tree_of_many_batches_and_a_large_file_both_ways(pair, short_tmp):
    src = short_tmp / "src"
    made = make_tree(src, files=BATCH_FILES + 200, big=5)
    os.utime(src / "d1", ns=(1_200_000_000_000_000_000,) * 2)
    os.chmod(src / "d2", 0o700)
    requests = []
    session_request = pair.session.request

    async def counting(spec, op, payload=b"", timeout=30.0, into=None):
        if spec.key == "fcopy":
            requests.append(FcopyOp(op))
        return await session_request(spec, op, payload, timeout=timeout, into=into)

    pair.session.request = counting
    result = await copy(pair, src, "/tmp/dst")
    assert (result["Files"], result["Directories"], result["Skipped"]) == (len(made), 11, [])
    assert tree_of(pair.root / "tmp/dst") == tree_of(src)
    assert os.stat(pair.root / "tmp/dst/d1").st_mtime_ns == 1_200_000_000_000_000_000
    assert stat.S_IMODE(os.stat(pair.root / "tmp/dst/d2").st_mode) == 0o700
    assert {i["Path"]: i["Sha256"] for i in result["Items"]} == {
        f"/tmp/dst/{rel}": hashlib.sha256(data).hexdigest() for rel, data in made.items()}
    # Batches, not a request per file: the tree cost a handful of round trips.
    assert 2 <= requests.count(FcopyOp.TREE_PUT) <= 8
    assert FcopyOp.PUT not in requests and FcopyOp.MKDIR not in requests
    assert len(requests) < 16
    assert not [p for p in os.listdir(pair.root / "tmp") if PART_SUFFIX in p]

    requests.clear()
    back = await copy(pair, "/tmp/dst", short_tmp / "back", "Guest")
    assert back["Files"] == len(made) and back["Skipped"] == []
    assert tree_of(short_tmp / "back") == tree_of(src)
    assert 2 <= requests.count(FcopyOp.TREE_GET) <= 8 and FcopyOp.LIST not in requests
    assert len(requests) < 16
    assert not [p for p in os.listdir(short_tmp) if PART_SUFFIX in p]


async def test_nothing_of_a_tree_is_in_place_until_all_of_it_is(pair, short_tmp):
    src = short_tmp / "src"
    make_tree(src, files=BATCH_FILES * 3)
    seen = []
    fcopy_guest = pair.agent.manager.services["fcopy"]
    put = fcopy_guest.trees.put

    async def watching(request):
        seen.append((pair.root / "tmp/dst").exists())
        return await put(request)

    fcopy_guest.handlers[FcopyOp.TREE_PUT] = watching
    await copy(pair, src, "/tmp/dst")
    assert seen and not any(seen)
    assert (pair.root / "tmp/dst").is_dir()


async def test_a_tree_into_an_existing_tree_needs_force_and_then_merges(pair, short_tmp):
    src = short_tmp / "src"
    make_tree(src, files=12)
    await copy(pair, src, "/tmp/")  # an existing directory: the tree goes inside it
    assert tree_of(pair.root / "tmp/src") == tree_of(src)
    (src / "d0/new.txt").write_bytes(b"new")
    (src / "d0/sub0/f0000.bin").write_bytes(b"changed")
    with pytest.raises(RemoteServiceError, match="-Force") as info:
        await copy(pair, src, "/tmp/")
    assert info.value.code == "exists"
    # Refused before anything was placed: the new file is not there either.
    assert not (pair.root / "tmp/src/d0/new.txt").exists()
    (pair.root / "tmp/src/d0/theirs").write_bytes(b"theirs")
    result = await copy(pair, src, "/tmp/", force=True)
    assert result["Destination"] == "/tmp/src"
    assert (pair.root / "tmp/src/d0/theirs").read_bytes() == b"theirs"  # merged, not replaced
    assert (pair.root / "tmp/src/d0/new.txt").read_bytes() == b"new"
    assert (pair.root / "tmp/src/d0/sub0/f0000.bin").read_bytes() == b"changed"
    assert not [p for p in os.listdir(pair.root / "tmp/src/d0") if PART_SUFFIX in p]


async def stop_then_resume(pair, src, after_bytes, change=None):
    """Stop a tree copy into the guest once *after_bytes* went, check that nothing of it is
    in place, run *change* on the source, and run the copy again; its result."""
    reached = asyncio.Event()

    def progress(p):
        if p.bytes_done >= after_bytes:
            reached.set()

    task = asyncio.ensure_future(copy(pair, src, "/tmp/dst", progress=progress))
    await asyncio.wait_for(reached.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not (pair.root / "tmp/dst").exists()
    staging = [p for p in os.listdir(pair.root / "tmp") if p.endswith(PART_SUFFIX)]
    assert len(staging) == 1  # the whole tree, hidden beside its destination
    if change is not None:
        change()
    result = await copy(pair, src, "/tmp/dst")
    assert tree_of(pair.root / "tmp/dst") == tree_of(src)
    assert os.listdir(pair.root / "tmp") == ["dst"]
    return result


async def test_an_interrupted_tree_resumes_its_large_file_and_drops_what_changed(pair,
                                                                                 short_tmp):
    src = short_tmp / "src"
    make_tree(src, files=40, big=40)
    # a file gone from the source before the rerun
    result = await stop_then_resume(pair, src, 20 * MIB,
                                    change=(src / "d1/sub1/f0001.bin").unlink)
    assert result["BytesResumed"] >= 8 * MIB


async def test_a_trees_large_files_are_copied_side_by_side_both_ways(pair, short_tmp):
    from vmis.services.fcopy.tree_copier import LARGE_WINDOW

    src = short_tmp / "src"
    made = make_tree(src, files=20)
    for i in range(7):
        made[f"big/b{i}.bin"] = os.urandom(4 * MIB + 4096 * i + 7)  # streamed, not inline
        (src / "big").mkdir(exist_ok=True)
        (src / f"big/b{i}.bin").write_bytes(made[f"big/b{i}.bin"])
    open_now, most = 0, 0
    session_request = pair.session.request

    async def counting(spec, op, payload=b"", timeout=30.0, into=None):
        nonlocal open_now, most
        opens = spec.key == "fcopy" and op in (FcopyOp.OPEN_WRITE, FcopyOp.OPEN_READ) \
            and b'"tree"' in bytes(payload)
        answer = await session_request(spec, op, payload, timeout=timeout, into=into)
        if opens and (decode_json_raw(answer)[0] if op == FcopyOp.OPEN_READ
                      else decode_json(answer)).get("handle"):
            open_now += 1
            most = max(most, open_now)
        if spec.key == "fcopy" and op in (FcopyOp.COMMIT, FcopyOp.CLOSE):
            open_now -= 1
        return answer

    pair.session.request = counting
    result = await copy(pair, src, "/tmp/dst")
    assert tree_of(pair.root / "tmp/dst") == tree_of(src)
    assert {i["Path"]: i["Sha256"] for i in result["Items"]} == {
        f"/tmp/dst/{rel}": hashlib.sha256(data).hexdigest() for rel, data in made.items()}
    assert (most, open_now) == (LARGE_WINDOW, 0)
    most = 0
    back = await copy(pair, "/tmp/dst", short_tmp / "back", "Guest")
    assert tree_of(short_tmp / "back") == tree_of(src) and back["Files"] == len(made)
    assert (most, open_now) == (LARGE_WINDOW, 0)


async def test_a_tree_stopped_among_its_large_files_leaves_nothing_and_resumes(pair,
                                                                               short_tmp):
    src = short_tmp / "src"
    make_tree(src, files=10)
    (src / "big").mkdir()
    for i in range(5):
        (src / f"big/b{i}.bin").write_bytes(os.urandom(12 * MIB + i))
    result = await stop_then_resume(pair, src, 30 * MIB)
    assert result["BytesResumed"] >= 8 * MIB


# Section: what is not a regular file


async def test_links_and_special_files_are_skipped_and_named(pair, short_tmp):
    src = short_tmp / "src"
    make_tree(src, files=3)
    os.symlink("/etc/passwd", src / "link")
    os.mkfifo(src / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "sock"))
        result = await copy(pair, src, "/tmp/dst")
    assert sorted((s["Path"], s["Reason"]) for s in result["Skipped"]) == [
        (str(src / "fifo"), "a FIFO"), (str(src / "link"), "a symbolic link"),
        (str(src / "sock"), "a socket")]
    guest = pair.root / "tmp/g"
    (guest / "sub").mkdir(parents=True)
    (guest / "sub/file").write_bytes(b"x")
    os.symlink("file", guest / "sub/link")
    os.mkfifo(guest / "fifo")
    back = await copy(pair, "/tmp/g", short_tmp / "back", "Guest")
    assert sorted((s["Path"], s["Reason"]) for s in back["Skipped"]) == [
        ("/tmp/g/fifo", "a FIFO"), ("/tmp/g/sub/link", "a symbolic link")]
    assert os.listdir(short_tmp / "back/sub") == ["file"]


async def test_copy_symlinks_copies_links_as_they_read_both_ways(pair, short_tmp):
    src = short_tmp / "src"
    make_tree(src, files=3)
    os.symlink("d0/sub0/f0000.bin", src / "rel-link")
    os.symlink("/nowhere/at/all", src / "d1/dangling")
    result = await copy(pair, src, "/tmp/dst", links="copy")
    assert result["Skipped"] == []
    assert os.readlink(pair.root / "tmp/dst/rel-link") == "d0/sub0/f0000.bin"
    assert os.readlink(pair.root / "tmp/dst/d1/dangling") == "/nowhere/at/all"
    await copy(pair, "/tmp/dst", short_tmp / "back", "Guest", links="copy")
    assert tree_of(short_tmp / "back") == tree_of(pair.root / "tmp/dst")


async def test_follow_symlinks_copies_targets_but_never_a_loop_nor_outside_the_roots(
        pair, short_tmp):
    src = short_tmp / "src"
    make_tree(src, files=3)
    outside = short_tmp / "outside"
    outside.mkdir()
    (outside / "o.txt").write_bytes(b"outside")
    os.symlink(outside, src / "dirlink")
    os.symlink("..", src / "d0/up")  # a loop
    result = await copy(pair, src, "/tmp/dst", links="follow")
    assert (pair.root / "tmp/dst/dirlink/o.txt").read_bytes() == b"outside"
    assert not (pair.root / "tmp/dst/dirlink").is_symlink()
    assert [s["Path"] for s in result["Skipped"]] == [str(src / "d0/up")]
    # In the guest a link is followed inside the guest, and the policy holds.
    (pair.root / "etc/secret").write_bytes(b"no")
    g = pair.root / "tmp/g"
    g.mkdir()
    os.symlink("/etc/secret", g / "secret")
    os.symlink("/tmp/dst/d1", g / "d1")
    back = await copy(pair, "/tmp/g", short_tmp / "back", "Guest", links="follow")
    assert [(s["Path"], s["Reason"]) for s in back["Skipped"]] == [
        ("/tmp/g/secret", "a symbolic link to outside the allowed roots")]
    assert tree_of(short_tmp / "back/d1") == tree_of(pair.root / "tmp/dst/d1")


# Section: names


async def test_names_that_are_not_utf8_keep_their_bytes_both_ways(pair, short_tmp):
    odd = os.fsdecode(ODD)
    src = short_tmp / "src"
    (src / odd).mkdir(parents=True)
    (src / odd / odd).write_bytes(b"bytes")
    (short_tmp / odd).write_bytes(b"single")
    result = await copy(pair, src, "/tmp/dst")
    assert result["Skipped"] == []
    assert os.listdir(os.fsencode(pair.root / "tmp/dst")) == [ODD]
    assert (pair.root / "tmp/dst" / odd / odd).read_bytes() == b"bytes"
    assert result["Items"][0]["Path"] == "/tmp/dst/caf\\xe9-\\xff.txt/caf\\xe9-\\xff.txt"
    back = await copy(pair, "/tmp/dst", short_tmp / "back", "Guest")
    assert (short_tmp / "back" / odd / odd).read_bytes() == b"bytes"
    assert back["Skipped"] == []
    fcopy = pair.manager.service(FcopyHost)
    one = await fcopy.copy_vm_file("DemoVM", str(short_tmp / odd), "/tmp/", "Host")
    assert (pair.root / "tmp" / odd).read_bytes() == b"single"
    assert one["Destination"] == "/tmp/caf\\xe9-\\xff.txt"
    await fcopy.copy_vm_file("DemoVM", f"/tmp/{odd}", str(short_tmp / "again") + "/", "Guest",
                             create_full_path=True)
    assert (short_tmp / "again" / odd).read_bytes() == b"single"


# Section: an older guest


async def test_a_guest_that_speaks_fcopy_1_0_gets_trees_file_by_file(short_tmp):
    async with host_guest_pair(short_tmp, versions={"fcopy": [(1, 0)]}) as p:
        await _ready(p)
        assert p.session.guest["fcopy"].version == (1, 0)
        src = short_tmp / "src"
        made = make_tree(src, files=10)
        os.symlink("x", src / "link")
        result = await copy(p, src, "/tmp/dst")
        assert result["Files"] == len(made)
        assert result["Skipped"] == [{"Path": str(src / "link"), "Reason": "a symbolic link"}]
        (src / "link").unlink()
        assert tree_of(p.root / "tmp/dst") == tree_of(src)
        back = await copy(p, "/tmp/dst", short_tmp / "back", "Guest")
        assert tree_of(short_tmp / "back") == tree_of(p.root / "tmp/dst")
        assert back["Files"] == len(made)
        with pytest.raises(StateError, match="fcopy 1.1"):
            await copy(p, src, "/tmp/other", links="copy")
