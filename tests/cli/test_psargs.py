"""vmis.psargs without a lab: name=value spellings, raw commands, verbs of two words."""

from __future__ import annotations

import pytest

from vmis.errors import UsageError
from vmis.psargs import Command, Param, find_verb, leading_options, parse, run_command


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
        Command("x", "", (), _ran, raw=True)


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
