"""Guest path resolution and the allowed-roots policy (docs/services/fcopy.md §5)."""

import os

import pytest

from vmis.errors import ServiceError
from vmis.services.fcopy.paths import RootedPaths, parse_roots, split_path


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    for d in ("tmp", "home/alice", "etc", "srv"):
        (r / d).mkdir(parents=True)
    (r / "etc/passwd").write_text("root:x:0:0\n")
    return r


@pytest.fixture
def paths(root):
    return RootedPaths(root, ["/tmp", "/home"])


def code_of(call):
    with pytest.raises(ServiceError) as info:
        call()
    return info.value.code, str(info.value)


def test_paths_must_be_absolute_and_dotdot_is_refused():
    assert split_path("/a//b/./c/") == ["a", "b", "c"]
    assert code_of(lambda: split_path("tmp/x"))[0] == "bad-request"
    code, message = code_of(lambda: split_path("/tmp/../etc/passwd"))
    assert code == "denied" and "'..'" in message


def test_roots_setting_accepts_spaces_commas_and_colons():
    assert parse_roots("/tmp, /home:/srv  /opt") == ["/tmp", "/home", "/srv", "/opt"]
    assert code_of(lambda: parse_roots("/tmp relative"))[0] == "bad-request"


def test_a_plain_path_inside_a_root_is_allowed(paths):
    with paths.resolve("/tmp/new.txt") as r:
        assert r.path == "/tmp/new.txt" and r.st is None
        paths.check(r, "test")


def test_a_path_outside_every_root_is_denied(paths):
    with paths.resolve("/etc/passwd") as r:
        code, message = code_of(lambda: paths.check(r, "copying"))
    assert code == "denied" and "/etc/passwd is outside" in message


def test_absolute_symlink_is_followed_inside_the_root_and_then_denied(root, paths):
    # In a lab VM the link's "/etc" is the VM's /etc, never the machine's.
    os.symlink("/etc", root / "tmp/escape")
    with paths.resolve("/tmp/escape/passwd") as r:
        assert r.path == "/etc/passwd"
        assert r.st is not None and r.st.st_ino == os.stat(root / "etc/passwd").st_ino
        assert code_of(lambda: paths.check(r, "copying"))[0] == "denied"


def test_relative_symlink_climbing_past_the_root_stops_at_the_root(root, paths):
    os.symlink("../../../../../../etc", root / "tmp/up")
    with paths.resolve("/tmp/up/passwd") as r:
        assert r.path == "/etc/passwd"
        assert code_of(lambda: paths.check(r, "copying"))[0] == "denied"


def test_final_symlink_to_a_file_outside_is_denied(root, paths):
    os.symlink("/etc/passwd", root / "tmp/pw")
    with paths.resolve("/tmp/pw") as r:
        assert r.path == "/etc/passwd"
        assert code_of(lambda: paths.check(r, "copying"))[0] == "denied"


def test_symlink_between_allowed_places_is_followed(root, paths):
    os.symlink("/home/alice", root / "tmp/alice")
    with paths.resolve("/tmp/alice/notes.txt") as r:
        assert r.path == "/home/alice/notes.txt"
        paths.check(r, "copying")


def test_symlink_loop_is_an_error(root, paths):
    os.symlink("b", root / "tmp/a")
    os.symlink("a", root / "tmp/b")
    assert code_of(lambda: paths.resolve("/tmp/a/x"))[0] == "failed"


def test_create_dirs_only_inside_roots(root, paths):
    with paths.resolve("/tmp/a/b/c.txt", create_dirs=True) as r:
        assert r.path == "/tmp/a/b/c.txt"
    assert (root / "tmp/a/b").is_dir()
    code, _ = code_of(lambda: paths.resolve("/srv/new/x.txt", create_dirs=True))
    assert code == "denied"
    assert not (root / "srv/new").exists()


def test_missing_directory_without_create_is_not_found(paths):
    code, message = code_of(lambda: paths.resolve("/tmp/nope/x.txt"))
    assert code == "not-found" and "-CreateFullPath" in message


def test_an_allowed_root_that_does_not_exist_says_so(root):
    paths = RootedPaths(root, ["/opt"])
    with paths.resolve("/opt") as r:
        code, message = code_of(lambda: paths.check(r, "copying"))
    assert code == "denied" and "does not exist" in message


def test_allowed_root_that_is_a_symlink_is_resolved(root):
    (root / "var/home").mkdir(parents=True)
    os.rmdir(root / "home/alice")
    os.rmdir(root / "home")
    os.symlink("var/home", root / "home")
    paths = RootedPaths(root, ["/home"])
    with paths.resolve("/home/bob.txt") as r:
        assert r.path == "/var/home/bob.txt"
        paths.check(r, "copying")


def test_destination_rules(root, paths):
    (root / "tmp/dir").mkdir()
    (root / "tmp/file").write_text("x")
    with paths.destination("/tmp/dir", "src.bin", create=False, exact=False, force=False,
                           what="t") as r:
        assert r.path == "/tmp/dir/src.bin"
    with paths.destination("/tmp/newdir/", "src.bin", create=True, exact=False, force=False,
                           what="t") as r:
        assert r.path == "/tmp/newdir/src.bin"
    assert code_of(lambda: paths.destination("/tmp/file", "s", create=False, exact=False,
                                             force=False, what="t"))[0] == "exists"
    with paths.destination("/tmp/file", "s", create=False, exact=False, force=True,
                           what="t") as r:
        assert r.path == "/tmp/file"
    assert code_of(lambda: paths.destination("/tmp/dir", "s", create=False, exact=True,
                                             force=True, what="t"))[0] == "exists"
    assert code_of(lambda: paths.destination("/tmp/gone/", "s", create=False, exact=False,
                                             force=False, what="t"))[0] == "not-found"
    assert code_of(lambda: paths.destination("/tmp/dir", "../x", create=False, exact=False,
                                             force=False, what="t"))[0] == "bad-request"
