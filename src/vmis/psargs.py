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

What a command line prints follows the same conventions: an error is one
line on stderr, or one JSON object under ``--json`` (:func:`run_main`,
:func:`report_error`), and ``--json`` keys are PascalCase (:func:`pascal_keys`).
An argument that is not UTF-8 is a usage error naming it.

Standard library only: the guest tools use it as well.
"""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, NoReturn

from vmis.errors import InternalError, RequestRefused, UsageError, VmisError

__all__ = [
    "HELP_WORDS",
    "Command",
    "Param",
    "exit_now",
    "find_command",
    "find_verb",
    "leading_options",
    "parse",
    "pascal_keys",
    "print_json",
    "report_error",
    "run_command",
    "run_main",
    "usage",
    "wants_json",
]

#: words that ask for a command's usage instead of running it
HELP_WORDS = ("-h", "--help", "-?")
#: a switch's values that turn it off (``-Force:$false``)
_FALSE = ("$false", "false", "0", "no")


def run_main(body: Callable[[], int], prefix: Callable[[VmisError], str],
             words: Sequence[str] = ()) -> int:
    """Run a command line's body and turn how it ends into an exit status.

    A :class:`VmisError` is one line on stderr (``prefix: message``), or one
    JSON object when *words* (the command line) ask for JSON (:func:`report_error`),
    and its class's ``exit_status`` (2 for a usage error, 75 for a busy target,
    1 otherwise). Anything else is a bug: one line too (its traceback in the log
    of a program that keeps one, or with ``$VMIS_DEBUG`` set), status 1. Ctrl-C
    is 130, and a reader that went away (``| head``) is not an error.
    """
    as_json = wants_json(words)
    try:
        return body()
    except VmisError as exc:
        report_error(prefix(exc), exc, as_json)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        import logging
        import os

        if os.environ.get("VMIS_DEBUG"):
            raise
        if logging.getLogger().handlers:  # a daemon's log: the traceback belongs there
            logging.getLogger("vmis").exception("unexpected error")
        bug = InternalError(f"internal error: {type(exc).__name__}: {exc} (a bug in vmis; "
                            "VMIS_DEBUG=1 shows where)")
        report_error(prefix(bug), bug, as_json)
        return 1


def exit_now(status: int) -> NoReturn:
    """End a command line's process with *status*, without tearing the interpreter down.

    A command's work is done once its output is flushed; unloading the modules
    it imported and freeing their objects one by one took 4 ms of a 35 ms
    ``vmis Copy-VMFile`` (bench/cli_start.py). The functions registered with
    :mod:`atexit` still run and stdout and stderr are flushed. A process
    with another thread that is not a daemon (the interpreter waits for it),
    whose output cannot be flushed, or that runs under a profiler or a
    debugger (``python -m cProfile`` reports on the way out) ends the
    ordinary way.
    """
    threading = sys.modules.get("threading")
    waited = threading is not None and any(
        not t.daemon and t is not threading.current_thread() for t in threading.enumerate())
    if waited or sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(status)
    import atexit
    import os

    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # the ordinary exit reports it
        sys.exit(status)
    os._exit(status)


def print_json(data: Any) -> None:
    """Print a ``--json`` answer: indented for a person at a terminal, on one line for a
    program that reads a pipe.

    Indented JSON comes from the json module's Python encoder; one line from its C
    encoder: the 2,000 items of a tree copy's result took 13-14 ms indented and
    3.4 ms on one line.
    """
    import json

    print(json.dumps(data, indent=2) if sys.stdout.isatty() else json.dumps(data))


def wants_json(words: Sequence[str]) -> bool:
    """Whether a command line asks for JSON (``--json``, ``-JSON``, ``-json:$true``)
    among the words it parses itself (before ``--``)."""
    for word in words:
        if word == "--":
            return False
        if _is_param(word):
            name, inline = _split_word(word)
            if _norm(name) == "json":
                return (inline or "").lower() not in _FALSE
    return False


def report_error(where: str, error: VmisError | str, as_json: bool, **fields: Any) -> None:
    """One error on stderr: ``where: message``, or with *as_json* one line of JSON,
    ``{"Error": message, "Type": class name, "Code": code, **fields}``.

    *Code* is the machine-readable code of a refusal (:class:`RequestRefused`,
    docs/protocol.md §5.1: ``denied``, ``service-disabled`` ...), else null.
    A message given as text names its class in ``fields["Type"]``, if known.
    """
    if not as_json:
        print(f"{where}: {error}", file=sys.stderr)
        return
    import json

    body: dict[str, Any] = {"Error": str(error), "Type": None, "Code": None}
    if isinstance(error, VmisError):
        body["Type"] = type(error).__name__
        body["Code"] = error.code if isinstance(error, RequestRefused) else None
    body.update(fields)
    print(json.dumps(body), file=sys.stderr)


def pascal_keys(value: Any) -> Any:
    """*value* with every mapping key in PascalCase (``allowed_roots`` ->
    ``AllowedRoots``), all the way down: what ``--json`` prints, as
    PowerShell's objects are named. For answers whose keys are field names,
    not data (a KVP key must stay as it is)."""
    if isinstance(value, dict):
        return {_pascal(str(k)): pascal_keys(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [pascal_keys(v) for v in value]
    return value


def _pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


# NamedTuples, not dataclasses: every command line builds its table of these at
# start, and dataclasses would import inspect (bench/cli_start.py).


class Param(NamedTuple):
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


class Command(NamedTuple):
    """One verb of a command line.

    A raw command (:attr:`raw`) names its :attr:`rest` parameter.
    """

    name: str
    summary: str
    params: tuple[Param, ...]
    run: Callable[..., Any]
    aliases: tuple[str, ...] = ()
    #: words after ``--`` are passed as the parameter of this name
    rest: str | None = None
    examples: tuple[str, ...] = ()
    #: True: ``run(args)`` needs nothing but this machine; False: ``run(context, args)``
    #: with what the program gives every command (vmis: the host manager's API client)
    local: bool = False
    #: the words after the positional parameters go to ``rest`` as they are, dashes
    #: included (``--`` optional): a command that hands them to another command line
    raw: bool = False


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
        if cmd.rest is None:
            raise ValueError(f"{cmd.name}: a raw command names its rest parameter")
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
            switches[param.name] = (inline or "").lower() not in _FALSE
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
            for value in given[param.name]:
                _check_text(cmd, f"-{param.name}", value)
            result[param.name] = _convert(cmd, param, given[param.name])
        elif param.required:
            raise UsageError(f"{cmd.name}: missing mandatory parameter -{param.name}.")
        else:
            result[param.name] = param.default
    if cmd.rest is not None:
        if not cmd.raw:  # a raw rest is another command line's, which checks its own
            for word in rest or []:
                _check_text(cmd, "the command after '--'", word)
        result[cmd.rest] = rest or []
    return result


def _check_text(cmd: Command, what: str, value: str) -> None:
    """Refuse an argument that is not UTF-8: Python carries its bytes as lone
    surrogates, which no JSON request, file name or KVP record can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        byte = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise UsageError(f"{cmd.name}: {what} is not UTF-8 text ({byte} at character "
                         f"{exc.start + 1}); vmis takes names, keys, values, paths and "
                         "commands as UTF-8") from None


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
