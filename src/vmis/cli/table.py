"""PowerShell's Format-Table output shape, which administrators read and scripts grep.

Header, a dashed underline as long as each header, left-aligned cells one
space apart, trailing blanks trimmed. A column with a fixed ``width`` cuts
longer cells with ``...`` as PowerShell does (Get-Service's DisplayName);
otherwise a column is as wide as its widest cell, at least ``min_width``.
Standard library only: the guest tools use it as well.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from vmis.psargs import print_json, report_error

__all__ = ["Column", "format_list", "format_table", "format_uptime", "report_failures",
           "report_results"]


class Column(NamedTuple):
    """A table column."""

    header: str
    #: fixed width (cells cut with "..."), or None to fit the widest cell
    width: int | None = None
    #: least width when fitting
    min_width: int = 0


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


#: control characters (Unicode Cc) as escapes, so that a cell stays on its line
_CONTROLS = {c: repr(chr(c))[1:-1] for c in (*range(0x20), *range(0x7F, 0xA0))}


def format_uptime(seconds: object) -> str:
    """A TimeSpan as Get-VM's Uptime column writes it: ``hh:mm:ss``, ``d.hh:mm:ss``
    past a day; empty when unknown."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return ""
    days, rest = divmod(int(seconds), 86400)
    clock = f"{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"
    return f"{days}.{clock}" if days else clock


def _cell(value: object) -> str:
    return "" if value is None else str(value).translate(_CONTROLS)


def format_table(columns: Sequence[Column], rows: Sequence[Sequence[object]]) -> str:
    """Render *rows* under *columns*; ``None`` cells print empty, control characters
    as escapes (``\\n``)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = []
    for i, col in enumerate(columns):
        if col.width is not None:
            widths.append(col.width)
        else:
            widths.append(max([len(col.header), col.min_width, *(len(r[i]) for r in cells)]))
    lines = [
        " ".join(c.header.ljust(w) for c, w in zip(columns, widths, strict=True)),
        " ".join(("-" * len(c.header)).ljust(w) for c, w in zip(columns, widths, strict=True)),
    ]
    for row in cells:
        lines.append(" ".join(_cut(v, w).ljust(w) for v, w in zip(row, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def format_list(records: Sequence[Sequence[tuple[str, object]]]) -> str:
    """Render records as Format-List does: ``Name : value``, a blank line between records."""
    blocks = []
    for record in records:
        width = max((len(k) for k, _ in record), default=0)
        blocks.append(
            "\n".join(f"{k.ljust(width)} : {'' if v is None else v}".rstrip() for k, v in record)
        )
    return "\n\n".join(blocks)


def report_failures(results: Sequence[Mapping[str, Any]], verb: str, as_json: bool) -> int:
    """Each result's ``Error`` on stderr, one per VM: ``verb: error``, or with *as_json*
    one JSON object (vmis.psargs.report_error, with the VM's name); 1 if any failed."""
    failed = [r for r in results if r.get("Error")]
    for r in failed:
        report_error(verb, str(r["Error"]), as_json, Type=r.get("ErrorType"),
                     VMName=r.get("VMName"))
    return 1 if failed else 0


def report_results(results: Sequence[Mapping[str, Any]], verb: str, as_json: bool,
                   line: Callable[[Mapping[str, Any]], str]) -> int:
    """End a command run on several VMs: JSON (or a *line* per VM that worked),
    each VM's error on stderr (:func:`report_failures`); 1 if any failed."""
    if as_json:
        print_json(list(results))
    else:
        for r in results:
            if not r["Error"]:
                print(line(r))
    return report_failures(results, verb, as_json)
