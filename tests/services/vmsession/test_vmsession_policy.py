"""VM Session policy: the [vmsession] settings, program resolution by real path, env rules."""

import os
from pathlib import Path

import pytest

from vmis.errors import ConfigError, ServiceError
from vmis.guest.config import load_config
from vmis.services.vmsession import exit_status, idle_deadline
from vmis.services.vmsession.policy import (
    SessionConfig,
    allowed,
    check_env,
    resolve_program,
)


def make_program(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho hi\n")
    path.chmod(0o755)
    return path


def test_defaults_allow_nothing_and_section_parses(tmp_path):
    assert load_config(tmp_path / "missing.conf").vmsession.allow == ()
    conf = tmp_path / "agent.conf"
    conf.write_text("[vmsession]\nallow = /usr/bin/uptime, /opt/tools/*\n  /usr/sbin/ip\n"
                    "user = backup\ncwd = /srv\nkeepalive = 0.5\nkill_grace = 2\n"
                    "max_sessions = 3\n")
    cfg = load_config(conf).vmsession
    assert cfg == SessionConfig(allow=("/usr/bin/uptime", "/opt/tools/*", "/usr/sbin/ip"),
                                user="backup", cwd="/srv", keepalive=0.5, kill_grace=2.0,
                                max_sessions=3)


@pytest.mark.parametrize("line, message", [
    ("allow = bin/*", "not an absolute path"),
    ("keepalive = soon", "expected seconds"),
    ("keepalive = 0", "between"),
    ("max_sessions = 0", "at least 1"),
    ("cwd = relative", "absolute path or ~"),
    ("colour = blue", "unknown setting"),
])
def test_bad_settings_are_config_errors_naming_the_file(tmp_path, line, message):
    conf = tmp_path / "agent.conf"
    conf.write_text(f"[vmsession]\n{line}\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_config(conf)
    assert str(conf) in str(info.value)


def test_programs_are_found_on_the_guest_path_and_resolved(tmp_path):
    prog = make_program(tmp_path / "real" / "tool")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").symlink_to(prog)
    assert resolve_program("tool", str(tmp_path / "bin")) == str(prog)
    assert resolve_program(str(tmp_path / "bin" / "tool"), "/nonexistent") == str(prog)
    with pytest.raises(ServiceError) as info:
        resolve_program("tool", "/nonexistent")
    assert info.value.code == "not-found" and "PATH (/nonexistent)" in str(info.value)
    with pytest.raises(ServiceError) as info:
        resolve_program("bin/tool", str(tmp_path))
    assert info.value.code == "bad-request"
    (tmp_path / "plain").write_text("not executable")
    with pytest.raises(ServiceError) as info:
        resolve_program(str(tmp_path / "plain"), "")
    assert info.value.code == "not-found"


def test_allow_list_compares_real_paths_and_stars_stay_in_one_directory(tmp_path):
    prog = make_program(tmp_path / "real" / "tool")
    nested = make_program(tmp_path / "real" / "sub" / "deep")
    assert allowed(str(prog), (f"{tmp_path}/real/*",))
    assert allowed(str(prog), (f"{tmp_path}/real/t??l",))
    assert not allowed(str(nested), (f"{tmp_path}/real/*",))
    assert not allowed(str(prog), (f"{tmp_path}/other/*",))
    # a pattern's directory is resolved as the program is: /bin/* covers /usr/bin on
    # a merged-/usr system, here a linked directory
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    assert allowed(str(prog), (f"{tmp_path}/linked/*",))
    assert allowed(str(prog), (f"{tmp_path}/linked/tool",))
    # a link to a program outside the list is judged by its target
    make_program(tmp_path / "danger" / "rm")
    (tmp_path / "real" / "innocent").symlink_to(tmp_path / "danger" / "rm")
    resolved = resolve_program(str(tmp_path / "real" / "innocent"), "")
    assert resolved == str(tmp_path / "danger" / "rm")
    assert not allowed(resolved, (f"{tmp_path}/real/*",))
    assert not allowed(str(prog), ())


def test_environment_rules():
    assert check_env(None) == {}
    assert check_env({"LANG": "C.UTF-8", "_X1": ""}) == {"LANG": "C.UTF-8", "_X1": ""}
    for bad in ({"1X": "a"}, {"A-B": "a"}, {"A": 1}, {"A": "nul\0"}, ["A=b"]):
        with pytest.raises(ServiceError) as info:
            check_env(bad)
        assert info.value.code == "bad-request"
    with pytest.raises(ServiceError) as info:
        check_env({"LD_PRELOAD": "/tmp/evil.so"})
    assert info.value.code == "denied" and "LD_PRELOAD" in str(info.value)


def test_exit_status_and_idle_deadline():
    assert exit_status(0, None) == 0
    assert exit_status(3, None) == 3
    assert exit_status(None, 2) == 130
    assert exit_status(None, 9) == 137
    assert exit_status(None, None) == 255
    assert exit_status(256 + 4, None) == 4
    assert idle_deadline(15) == 60
    assert idle_deadline(0.1) == 1.0


def test_default_search_path_finds_the_usual_tools():
    assert os.path.basename(resolve_program("sh", SessionConfig().path)) in ("dash", "bash", "sh")
