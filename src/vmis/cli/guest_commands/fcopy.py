"""``vmis-guest fcopy status``: the guest's copy policy, the copies open now, partial files.

Standard library only. docs/services/fcopy.md §7.
"""

from __future__ import annotations

from typing import Any

from vmis.cli.table import Column, format_table
from vmis.psargs import Command, Param, pascal_keys, print_json

__all__ = ["COMMANDS"]


def cmd_status(g: Any, args: dict[str, Any]) -> int:
    # here, not above: every guest command loads this module, and paths.py imports pathlib
    from vmis.services.fcopy.paths import shown

    status = g.client().call("fcopy.status")
    if args["json"]:
        print_json(pascal_keys(status))
        return 0
    print(f"AllowedRoots:  {' '.join(status['allowed_roots'])}")
    print(f"Frozen:        {status['frozen']}")
    print(f"PartialMaxAge: {status.get('partial_max_age', 0):.0f} s")
    if status["copies"]:
        print()
        print(format_table(
            [Column("Handle"), Column("Kind"), Column("Direction"), Column("Done"),
             Column("Size"), Column("Idle"), Column("Path")],
            [(c["handle"], c.get("kind", ""), c["direction"], c["done"], c.get("size", ""),
              c.get("idle", ""), shown(c["path"])) for c in status["copies"]]))
    if status.get("partials"):
        print()
        print(format_table(
            [Column("Partial"), Column("Bytes"), Column("Size"), Column("Age"),
             Column("Destination")],
            [(shown(p["part"]), p["size"], p["total"] if p["total"] is not None else "",
              f"{p['age']:.0f} s", shown(p["destination"])) for p in status["partials"]]))
    return 0


COMMANDS: tuple[Command, ...] = (
    Command("fcopy status",
            "Show the file-copy policy (allowed roots), open copies and partial files.",
            (Param("json", "switch", help="print JSON for scripts"),), cmd_status),
)
