"""The receiving end of a tree (tree_writer.py): durable before visible, never written
through a name someone else made (docs/services/fcopy.md §3.2, §4)."""

import hashlib
import os
import stat

import pytest

from vmis.errors import ServiceError
from vmis.services.fcopy import tree_writer
from vmis.services.fcopy.partials import part_names
from vmis.services.fcopy.paths import RootedPaths
from vmis.services.fcopy.tree_writer import open_tree

TAG = "0123456789abcdef"
TIMES = dict(mode=0o644, atime_ns=10**18, mtime_ns=10**18)


@pytest.fixture
def paths(tmp_path):
    return RootedPaths(tmp_path, ["/"])


def put(writer, rel, data):
    return writer.put(rel, data, sha256=hashlib.sha256(data).hexdigest(), **TIMES)


def opened(paths, path="/dst", name="src", force=False):
    return open_tree(paths, path, name, create=False, force=force, tag=TAG, what="")


@pytest.fixture
def steps(monkeypatch):
    """The order of the steps that make a tree durable and visible."""
    seen = []
    sync, place, rename = tree_writer.sync_filesystem, tree_writer.place_file, os.rename
    monkeypatch.setattr(tree_writer, "sync_filesystem",
                        lambda fd: (seen.append("sync"), sync(fd))[1])
    monkeypatch.setattr(tree_writer, "place_file",
                        lambda *a: (seen.append("place"), place(*a))[1])
    monkeypatch.setattr(os, "rename", lambda *a, **k: (seen.append("rename"), rename(*a, **k))[1])
    return seen


def test_a_new_tree_is_staged_made_durable_then_renamed_into_place(paths, tmp_path, steps):
    w = opened(paths)
    w.make_dirs(["a", "a/b"])
    put(w, "a/b/f", b"data")
    staging = tmp_path / part_names("dst", TAG)[0]
    assert not (tmp_path / "dst").exists()
    assert (staging / "a/b/f").read_bytes() == b"data"
    assert stat.S_IMODE(staging.stat().st_mode) == 0o700
    w.commit([("a/b", 0o750, 10**18, 10**18), ("", 0o755, 10**18, 2 * 10**18)])
    assert steps == ["sync", "rename"]
    assert (tmp_path / "dst/a/b/f").read_bytes() == b"data"
    assert stat.S_IMODE((tmp_path / "dst/a/b").stat().st_mode) == 0o750
    assert (tmp_path / "dst").stat().st_mtime_ns == 2 * 10**18
    assert sorted(os.listdir(tmp_path)) == ["dst"]


def test_a_merged_tree_is_durable_before_its_first_file_is_placed(paths, tmp_path, steps):
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst/old").write_bytes(b"old")
    with pytest.raises(ServiceError, match="-Force") as info:
        put(opened(paths, "/", "dst"), "old", b"new")
    assert info.value.code == "exists"
    w = opened(paths, "/", "dst", force=True)
    put(w, "old", b"new")
    put(w, "other", b"x")
    w.commit([])
    assert steps[0] == "sync" and steps.count("place") == 2 and steps[-1] == "sync"
    assert (tmp_path / "dst/old").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path / "dst")) == ["old", "other"]


def test_a_planted_link_at_a_partial_files_name_is_not_written_through(paths, tmp_path):
    (tmp_path / "dst").mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.link(victim, tmp_path / "dst" / part_names("f", TAG)[0])
    w = opened(paths, "/", "dst")
    put(w, "f", b"copied")
    w.commit([])
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / "dst/f").read_bytes() == b"copied"


def test_a_staging_directory_someone_else_made_is_not_used(paths, tmp_path):
    planted = tmp_path / part_names("dst", TAG)[0]
    planted.mkdir()
    os.chmod(planted, 0o777)
    (planted / "f").write_bytes(b"theirs")
    w = opened(paths)
    put(w, "f", b"mine")
    w.commit([])
    assert (tmp_path / "dst/f").read_bytes() == b"mine"
    assert (planted / "f").read_bytes() == b"theirs"


def test_a_rerun_reuses_its_staging_directory_and_drops_what_the_source_lost(paths, tmp_path):
    w = opened(paths)
    w.make_dirs(["gone", "kept"])
    put(w, "kept/a", b"a")
    put(w, "gone/b", b"b")
    w.large("kept/big")  # a large file was under way: the staging directory stays
    w.abort()
    assert (tmp_path / part_names("dst", TAG)[0] / "gone/b").exists()
    again = opened(paths)
    again.make_dirs(["kept"])
    put(again, "kept/a", b"a2")
    again.commit([])
    assert sorted(os.listdir(tmp_path / "dst")) == ["kept"]
    assert os.listdir(tmp_path / "dst/kept") == ["a"]
    assert (tmp_path / "dst/kept/a").read_bytes() == b"a2"


def test_a_tree_given_up_leaves_nothing_unless_it_can_resume(paths, tmp_path):
    w = opened(paths)
    put(w, "f", b"x")
    w.abort()
    assert os.listdir(tmp_path) == []


def test_two_copies_to_one_new_tree_the_second_is_busy(paths, tmp_path):
    w = opened(paths)
    with pytest.raises(ServiceError, match="being written by another copy") as info:
        opened(paths)
    assert info.value.code == "busy"
    w.abort()
    opened(paths).abort()


def test_a_peers_paths_must_stay_below_the_top(paths, tmp_path):
    w = opened(paths)
    for rel in ("../x", "/etc/x", "a/../../x", "", "a//b"):
        with pytest.raises(ServiceError) as info:
            put(w, rel, b"x")
        assert info.value.code == "bad-request", rel
    w.abort()
    assert os.listdir(tmp_path) == []
