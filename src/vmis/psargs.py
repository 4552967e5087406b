"""PowerShell-style command lines: ``Verb-Noun -Param value -Switch``.

Administrators who know Hyper-V type ``Enable-VMIntegrationService -VMName
DemoVM -Name "Guest Service Interface"``. This parser accepts that the way
PowerShell does:

- command names and parameter names are case-insensitive;
- a parameter may be shortened to any unambiguous prefix (``-VMN``);
- list parameters take ``a,b`` or several words (``-Name Heartbeat VSS``);
- switches take no value (``-Force``), or ``-Force:$false``;
- parameters may be given by position where the command declares one;
- GNU spellings work too: ``--vm-name``, ``--vm-name=X``, ``--json``,
  ``-h``/``--help``, so a program moved here from argparse keeps its options.

Standard library only: the guest tools use it as well.
"""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmis.errors import UsageError, VmisError

__all__ = [
    "HELP_WORDS",
    "Command",
    "Param",
    "find_command",
    "find_verb",
    "leading_options",
    "parse",
    "run_command",
    "run_main",
    "usage",
]

#: words that ask for a command's usage instead of running it
HELP_WORDS = ("-h", "--help", "-?")


def run_main(body: Callable[[], int], prefix: Callable[[VmisError], str]) -> int:
    """Run a command line's body and turn how it ends into an exit status.

    A :class:`VmisError` is one line on stderr (``prefix: message``) and
    its class's ``exit_status`` (2 for a usage error, 75 for a busy target,
    1 otherwise); never a traceback. Ctrl-C is
    130, and a reader that went away (``| head``) is not an error.
    """
    try:
        return body()
    except VmisError as exc:
        print(f"{prefix(exc)}: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


@dataclass(frozen=True)
class Param:
    """One parameter of a command."""

    name: str
    #: "str", "list", "switch", "int" or "float"
    kind: str = "str"
    required: bool = False
    #: position for positional use, or None
    position: int | None = None
    help: str = ""
    #: allowed values (case-insensitive), normalised to these spellings
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    default: Any = None


@dataclass(frozen=True)
class Command:
    """One verb of a command line."""

    name: str
    summary: str
    params: tuple[Param, ...]
    run: Callable[..., Any]
    aliases: tuple[str, ...] = ()
    #: words after ``--`` are passed as the parameter of this name
    rest: str | None = None
    examples: tuple[str, ...] = field(default=())
    #: True: ``run(args)`` needs nothing but this machine; False: ``run(context, args)``
    #: with what the program gives every command (vmis: the host manager's API client)
    local: bool = False
    #: the words after the positional parameters go to ``rest`` as they are, dashes
    #: included (``--`` optional): a command that hands them to another command line
    raw: bool = False

    def __post_init__(self) -> None:
        if self.raw and self.rest is None:
            raise ValueError(f"{self.name}: a raw command names its rest parameter")


def _norm(name: str) -> str:
    return re.sub(r"[-_]", "", name).lower()


def find_command(commands: Sequence[Command], word: str) -> Command:
    """Look a verb up by name or alias, case-insensitively.

    :raise UsageError: Naming close matches.
    """
    key = word.lower()
    for cmd in commands:
        if key == cmd.name.lower() or key in (a.lower() for a in cmd.aliases):
            return cmd
    close = [c.name for c in commands if key.split("-")[-1] in c.name.lower()][:3]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UsageError(f"'{word}' is not a known command.{hint} See --help.")


def find_verb(commands: Sequence[Command], words: Sequence[str]) -> tuple[Command, list[str]]:
    """The command ``words`` start with, and the words after its name.

    A command's name is one word or two (``vm add``); the first word of a
    two-word name takes the next one along.

    :raise UsageError: Naming close matches.
    """
    groups = {c.name.split()[0].lower() for c in commands if " " in c.name}
    if len(words) > 1 and words[0].lower() in groups:
        return find_command(commands, f"{words[0]} {words[1]}"), list(words[2:])
    return find_command(commands, words[0]), list(words[1:])


def _lookup(where: str, params: Sequence[Param], raw: str) -> Param:
    wanted = _norm(raw)
    exact = [p for p in params if wanted in (_norm(p.name), *map(_norm, p.aliases))]
    if exact:
        return exact[0]
    prefixed = [p for p in params if _norm(p.name).startswith(wanted)]
    if len(prefixed) == 1:
        return prefixed[0]
    if len(prefixed) > 1:
        names = ", ".join(f"-{p.name}" for p in prefixed)
        raise UsageError(f"{where}: parameter -{raw} is ambiguous: {names}.")
    raise UsageError(
        f"{where}: a parameter cannot be found that matches parameter name '{raw}'."
    )


def _convert(cmd: Command, param: Param, values: list[str]) -> Any:
    if param.kind == "list":
        items = [v.strip() for value in values for v in value.split(",") if v.strip()]
        if not items:
            raise UsageError(f"{cmd.name}: -{param.name} needs a value.")
        if param.choices:
            return [_choose(cmd, param, v) for v in items]
        return items
    if len(values) != 1:
        raise UsageError(f"{cmd.name}: -{param.name} takes one value, got {len(values)}.")
    value = values[0]
    if param.kind == "int":
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"{cmd.name}: -{param.name} must be a whole number.") from None
    if param.kind == "float":
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"{cmd.name}: -{param.name} must be a number.") from None
    return _choose(cmd, param, value) if param.choices else value


def _choose(cmd: Command, param: Param, value: str) -> str:
    for choice in param.choices:
        if choice.lower() == value.lower():
            return choice
    raise UsageError(
        f"{cmd.name}: -{param.name} must be one of {', '.join(param.choices)}, not '{value}'."
    )


def _is_param(word: str) -> bool:
    # "-5" and "-" are values, not parameter names
    return len(word) > 1 and word[0] == "-" and not re.fullmatch(r"-[\d.]+", word)


def _split_word(word: str) -> tuple[str, str | None]:
    # "-Name:value" (PowerShell) and "--name=value" (GNU): the name ends at the
    # first ':' or '=', so a value may hold either ("--device=unix:/x").
    match = re.fullmatch(r"-+([^:=]*)(?:[:=](.*))?", word, re.DOTALL)
    assert match is not None
    return match[1], match[2]


def _split_rest(cmd: Command, argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """The words to parse, and those passed on as they are (None: no ``--``)."""
    words = list(argv)
    if cmd.raw:
        leading = sum(1 for p in cmd.params if p.position is not None)
        own = list(itertools.takewhile(lambda w: w != "--", words[:leading]))
        rest = words[len(own):]
        return own, rest[1:] if rest[:1] == ["--"] else rest
    if "--" in words:
        cut = words.index("--")
        return words[:cut], words[cut + 1:]
    return words, None


def leading_options(program: str, params: Sequence[Param], words: Sequence[str]) -> int:
    """How many of ``words`` are ``params`` (with their values) before the first
    other word: the options a program takes before its verb.

    :raise UsageError: For a parameter not in ``params``.
    """
    i = 0
    while i < len(words) and _is_param(words[i]) and words[i] not in ("--", *HELP_WORDS):
        name, inline = _split_word(words[i])
        param = _lookup(program, params, name)
        i += 1 if param.kind == "switch" or inline is not None else 2
    return min(i, len(words))


def parse(cmd: Command, argv: Sequence[str]) -> dict[str, Any]:
    """Parse the words after the verb into ``{param name: value}``.

    Every declared parameter appears in the result (its default when absent).

    :raise UsageError: For unknown, ambiguous, missing or malformed parameters.
    """
    given: dict[str, list[str]] = {}
    switches: dict[str, bool] = {}
    positional: list[str] = []
    words, rest = _split_rest(cmd, argv)
    if rest is not None and cmd.rest is None:
        raise UsageError(f"{cmd.name}: unexpected '--'.")
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not _is_param(word):
            positional.append(word)
            continue
        name, inline = _split_word(word)
        param = _lookup(cmd.name, cmd.params, name)
        if param.kind == "switch":
            switches[param.name] = (inline or "").lower() not in ("$false", "false", "0", "no")
            continue
        values = [] if inline is None else [inline]
        while i < len(words) and not _is_param(words[i]):
            values.append(words[i])
            i += 1
            if param.kind != "list":
                break
        if not values:
            raise UsageError(f"{cmd.name}: missing an argument for parameter '{param.name}'.")
        given.setdefault(param.name, []).extend(values)
    by_position = sorted((p for p in cmd.params if p.position is not None),
                         key=lambda p: p.position or 0)
    free = [p for p in by_position if p.name not in given]
    for word in positional:
        if not free:
            raise UsageError(f"{cmd.name}: a positional parameter cannot be found that accepts "
                             f"argument '{word}'.")
        param = free.pop(0)
        given[param.name] = [word]
    result: dict[str, Any] = {}
    for param in cmd.params:
        if param.kind == "switch":
            result[param.name] = switches.get(param.name, bool(param.default))
        elif param.name in given:
            result[param.name] = _convert(cmd, param, given[param.name])
        elif param.required:
            raise UsageError(f"{cmd.name}: missing mandatory parameter -{param.name}.")
        else:
            result[param.name] = param.default
    if cmd.rest is not None:
        result[cmd.rest] = rest or []
    return result


def run_command(cmd: Command, argv: Sequence[str],
                call: Callable[[dict[str, Any]], int] | None = None) -> int:
    """Print ``cmd``'s usage when ``argv`` asks for it (``-?``, ``-h``, ``--help``
    among the words parsed, not among those passed on), else run it.

    :param call: runs the parsed parameters (default ``cmd.run``).
    :return: the exit status.
    """
    own, _ = _split_rest(cmd, argv)
    if any(w in HELP_WORDS for w in own):
        print(usage(cmd))
        return 0
    status: int = (call or cmd.run)(parse(cmd, argv))
    return status


def usage(cmd: Command) -> str:
    """A help text for one command, in PowerShell's SYNTAX shape."""
    parts = []
    for p in cmd.params:
        value = "" if p.kind == "switch" else f" <{'String[]' if p.kind == 'list' else p.kind}>"
        if p.choices:
            value = f" {{{' | '.join(p.choices)}}}"
        text = f"-{p.name}{value}"
        parts.append(text if p.required else f"[{text}]")
    if cmd.rest:
        parts.append("[-- COMMAND ARGS...]")
    lines = [f"{cmd.name} {' '.join(parts)}", "", f"    {cmd.summary}"]
    if cmd.aliases:
        lines.append(f"    Aliases: {', '.join(cmd.aliases)}")
    details = [f"    -{p.name}: {p.help}" for p in cmd.params if p.help]
    if details:
        lines += ["", *details]
    if cmd.examples:
        lines += ["", "  Examples:", *(f"    {e}" for e in cmd.examples)]
    return "\n".join(lines)
