"""The command lines' parameter parser (vmis.psargs) over every real command of
``vmis`` and ``vmis-guest``, with any words.

Words are made of the commands' own names, parameter names (whole,
shortened, in either case, GNU spelling, with ``:value`` or ``=value``),
values of every kind and arbitrary text. Nothing is run: the verb is found
and its parameters parsed, as ``run_command`` does before it calls the
command.

May raise: UsageError (``find_verb``, ``parse``, ``leading_options``), as
documented. Checked: every declared parameter is in the result, a switch
is a bool, an int parameter an int, a list a non-empty list of strings, a
choice one of its choices, and ``usage()`` renders.
"""

from __future__ import annotations

import atheris

from vmis.cli.guest import _all_commands as guest_commands
from vmis.cli.host import _all_commands as host_commands
from vmis.errors import UsageError
from vmis.psargs import HELP_WORDS, Command, Param, find_verb, leading_options, parse, usage
from vmis.qemu.image.__main__ import OPTIONS

_COMMANDS: tuple[Command, ...] = (*host_commands(), *guest_commands())
_NAMES = sorted({w for c in _COMMANDS for w in (c.name, *c.aliases)})
_PARAMS = sorted({p.name for c in _COMMANDS for p in c.params})
_VALUES = ["0", "-1", "-5", "1.5", "1e400", "nan", "9" * 5000, "$false", "false", "no", "x,y",
           ",", "", "-", "--", "Heartbeat", "Guest Service Interface", "DemoVM", "Host",
           "Guest", "Production", "Automatic", "a\0b", "é", "\udcff", "-?", "--help"]


def _word(fdp: atheris.FuzzedDataProvider) -> str:
    roll = fdp.ConsumeIntInRange(0, 9)
    if roll <= 2:
        name = str(fdp.PickValueInList(_PARAMS))
        name = name[: fdp.ConsumeIntInRange(1, len(name))] if fdp.ConsumeBool() else name
        name = name.lower() if fdp.ConsumeBool() else name
        dashes = "--" if fdp.ConsumeProbability() > 0.8 else "-"
        word = dashes + name
        if fdp.ConsumeProbability() > 0.8:
            word += fdp.PickValueInList([":", "="]) + str(fdp.PickValueInList(_VALUES))
        return word
    if roll <= 6:
        return str(fdp.PickValueInList(_VALUES))
    if roll == 7:
        return str(fdp.PickValueInList([*HELP_WORDS, "--json", "-Force:$false", "-Passthru"]))
    return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 12))


def _check(cmd: Command, result: dict[str, object]) -> None:
    for param in cmd.params:
        assert param.name in result, param.name
        value = result[param.name]
        if param.kind == "switch":
            assert isinstance(value, bool)
        elif value is None or value == param.default:
            continue
        elif param.kind == "int":
            assert isinstance(value, int)
        elif param.kind == "float":
            assert isinstance(value, float)
        elif param.kind == "list":
            assert isinstance(value, list) and value and all(isinstance(v, str) for v in value)
            if param.choices:
                assert all(v in param.choices for v in value)
        elif param.choices:
            assert value in param.choices, (param.name, value)


def _options(params: tuple[Param, ...], words: list[str]) -> None:
    try:
        n = leading_options("vmis-image", params, words)
    except UsageError:
        return
    assert 0 <= n <= len(words)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    words = [str(fdp.PickValueInList(_NAMES))] if fdp.ConsumeProbability() < 0.9 else []
    words += [_word(fdp) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    if not words:
        return
    try:
        cmd, rest = find_verb(_COMMANDS, words)
    except UsageError:
        return
    usage(cmd)
    try:
        result = parse(cmd, rest)
    except UsageError:
        pass
    else:
        _check(cmd, result)
    _options(tuple(OPTIONS), rest)
