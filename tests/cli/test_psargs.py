"""vmis.psargs without a lab: name=value spellings, raw commands, verbs of two words,
arguments that are not UTF-8, errors as one line or one JSON object."""

from __future__ import annotations

import json

import pytest

from vmis.errors import RemoteServiceError, UsageError
from vmis.psargs import (
    Command,
    Param,
    find_verb,
    leading_options,
    parse,
    run_command,
    run_main,
    wants_json,
)


def _ran(args):
    return args


DAEMON = Command("kvp", "a daemon", (
    Param("Device"), Param("PidFile"), Param("NoPidFile", "switch"),
    Param("NoDaemon", "switch", aliases=("n",)), Param("NoIpInjection", "switch"),
), _ran)
GUEST = Command("lab guest", "words for another command line", (
    Param("Name", position=0),
), _ran, rest="args", raw=True)
EXEC = Command("Invoke-Command", "words after --", (
    Param("VMName", position=0), Param("TimeoutSec", "float"),
), _ran, rest="Command")


def test_gnu_spellings_of_parameter_names_and_values_holding_colons():
    args = parse(DAEMON, ["--device=unix:/run/a:b", "--pid-file", "/run/x.pid",
                          "--no-pid-file", "-n"])
    assert args == {"Device": "unix:/run/a:b", "PidFile": "/run/x.pid", "NoPidFile": True,
                    "NoDaemon": True, "NoIpInjection": False}
    assert parse(DAEMON, ["-Device:/dev/a:b", "--no-daemon"])["Device"] == "/dev/a:b"
    assert parse(DAEMON, ["-NoPidFile:$false"])["NoPidFile"] is False
    with pytest.raises(UsageError, match="ambiguous"):
        parse(DAEMON, ["-no"])


def test_a_raw_command_passes_on_every_word_after_its_positional_ones():
    assert parse(GUEST, ["DemoVM", "Get-Service", "-Name", "x", "-?"]) == {
        "Name": "DemoVM", "args": ["Get-Service", "-Name", "x", "-?"]}
    assert parse(GUEST, ["DemoVM", "--", "kvp", "--", "x"]) == {
        "Name": "DemoVM", "args": ["kvp", "--", "x"]}
    assert parse(GUEST, []) == {"Name": None, "args": []}
    assert parse(GUEST, ["--", "Get-Service"]) == {"Name": None, "args": ["Get-Service"]}


def test_help_words_count_only_where_the_command_parses(capsys):
    assert run_command(GUEST, ["-?"], lambda args: 7) == 0
    assert capsys.readouterr().out.startswith("lab guest [-Name <str>] [-- COMMAND ARGS...]")
    assert run_command(GUEST, ["DemoVM", "-?"], lambda args: 7) == 7
    assert run_command(EXEC, ["-h"], lambda args: 7) == 0
    assert run_command(EXEC, ["vm1", "--", "ls", "--help"], lambda args: 7) == 7
    assert capsys.readouterr().out.startswith("Invoke-Command ")


def test_a_raw_command_names_its_rest_parameter():
    with pytest.raises(ValueError, match="names its rest"):
        parse(Command("x", "", (), _ran, raw=True), ["a"])


def test_verbs_of_one_word_and_of_two():
    commands = (Command("vm add", "", (), _ran), Command("Get-VM", "", (), _ran,
                                                          aliases=("vms",)))
    assert find_verb(commands, ["VM", "Add", "web1"]) == (commands[0], ["web1"])
    assert find_verb(commands, ["vms", "-json"]) == (commands[1], ["-json"])
    with pytest.raises(UsageError, match="not a known command"):
        find_verb(commands, ["vm"])


def test_options_before_a_verb():
    options = (Param("CacheDir"), Param("Verbose", "switch", aliases=("v",)))
    assert leading_options("prog", options, ["--cache-dir", "/c", "-v", "build", "-v"]) == 3
    assert leading_options("prog", options, ["--cache-dir=/c", "build"]) == 1
    assert leading_options("prog", options, ["-?", "build"]) == 0
    assert leading_options("prog", options, ["build"]) == 0
    with pytest.raises(UsageError, match="'bogus'"):
        leading_options("prog", options, ["--bogus", "build"])


def test_an_argument_that_is_not_utf8_is_a_usage_error_naming_it():
    # what Python makes of the bytes b"caf\xe9" in argv on a UTF-8 system
    word = b"caf\xe9".decode("utf-8", "surrogateescape")
    with pytest.raises(UsageError, match=r"^kvp: -Device is not UTF-8 text \(byte 0xe9 at "
                                         r"character 4\)"):
        parse(DAEMON, ["-Device", word])
    run = Command("exec", "", (Param("VMName", position=0),), _ran, rest="Command")
    with pytest.raises(UsageError, match="the command after '--' is not UTF-8 text"):
        parse(run, ["vm", "--", "cat", word])
    # a raw rest is another command line's, which checks it itself
    assert parse(GUEST, ["vm", word])["args"] == [word]


def test_a_command_line_asks_for_json_before_its_double_dash():
    assert wants_json(["Get-VM", "--json"]) and wants_json(["Get-VM", "-JSON"])
    assert wants_json(["kvp", "list", "-json:$true"])
    assert not wants_json(["Get-VM", "-json:$false"]) and not wants_json(["Get-VM"])
    assert not wants_json(["exec", "vm", "--", "jq", "--json"])


def test_errors_under_json_are_one_json_object_on_stderr(capsys):
    def refused():
        raise RemoteServiceError("denied", "not allowed here")

    assert run_main(refused, lambda exc: "Invoke-Command", ["x", "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err) == {"Error": "not allowed here", "Type": "RemoteServiceError",
                                        "Code": "denied"}
    assert run_main(lambda: parse(DAEMON, ["-Nope"]), lambda exc: "vmis", ["-json"]) == 2
    error = json.loads(capsys.readouterr().err)
    assert error["Type"] == "UsageError" and error["Code"] is None
    assert run_main(refused, lambda exc: "Invoke-Command", ["x"]) == 1
    assert capsys.readouterr().err == "Invoke-Command: not allowed here\n"


def test_an_unexpected_error_is_one_line_too(capsys, monkeypatch):
    monkeypatch.delenv("VMIS_DEBUG", raising=False)

    def bug():
        return {}["missing"]

    assert run_main(bug, lambda exc: "vmis") == 1
    err = capsys.readouterr().err
    assert err == "vmis: internal error: KeyError: 'missing' (a bug in vmis; VMIS_DEBUG=1 " \
                  "shows where)\n"
    monkeypatch.setenv("VMIS_DEBUG", "1")
    with pytest.raises(KeyError):
        run_main(bug, lambda exc: "vmis")


def _exit_now(script, tmp_path):
    """Run *script*, which ends with psargs.exit_now, in a new interpreter."""
    import subprocess
    import sys

    prelude = (
        "import atexit, os, sys, threading, time\n"
        "from vmis.psargs import exit_now\n"
        f"MARK = {str(tmp_path / 'mark')!r}\n"
        "class TornDown:\n"
        "    def __del__(self):\n"
        "        os.write(1, b' torn down')\n"
        "kept = TornDown()\n"
        "atexit.register(lambda: open(MARK, 'a').write('atexit '))\n"
    )
    return subprocess.run([sys.executable, "-c", prelude + script], capture_output=True,
                          text=True, timeout=60)


def test_exit_now_flushes_runs_atexit_and_skips_the_teardown(tmp_path):
    done = _exit_now("print('answer', end='')\nexit_now(3)\n", tmp_path)
    assert done.returncode == 3 and done.stdout == "answer"
    assert (tmp_path / "mark").read_text() == "atexit "


def test_exit_now_waits_the_ordinary_way_for_a_thread_that_is_not_a_daemon(tmp_path):
    done = _exit_now(
        "def late():\n"
        "    time.sleep(0.2)\n"
        "    open(MARK, 'a').write('thread ')\n"
        "threading.Thread(target=late).start()\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "print('answer', end='')\n"
        "exit_now(0)\n", tmp_path)
    assert done.returncode == 0 and done.stdout == "answer torn down"
    assert (tmp_path / "mark").read_text() == "thread atexit "


def test_exit_now_leaves_a_profiler_its_report(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "command.py"
    script.write_text("from vmis.psargs import exit_now\nprint('answer')\nexit_now(0)\n")
    done = subprocess.run([sys.executable, "-m", "cProfile", str(script)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.startswith("answer")
    assert "function calls" in done.stdout


def test_json_is_indented_for_a_terminal_and_one_line_for_a_pipe():
    import os
    import pty
    import subprocess
    import sys

    code = "from vmis.psargs import print_json; print_json({'Files': 2, 'Items': [1, 2]})"
    piped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60, check=True).stdout
    assert piped == '{"Files": 2, "Items": [1, 2]}\n'
    leader, follower = pty.openpty()
    try:
        subprocess.run([sys.executable, "-c", code], stdout=follower, timeout=60, check=True)
        shown = os.read(leader, 4096).decode().replace("\r\n", "\n")
    finally:
        os.close(leader)
        os.close(follower)
    assert shown == '{\n  "Files": 2,\n  "Items": [\n    1,\n    2\n  ]\n}\n'
    assert json.loads(shown) == json.loads(piped)
