"""``vmis-guest fcopy status``: the guest's copy policy and the copies open now.

Standard library only. docs/services/fcopy.md §7.
"""

from __future__ import annotations

import json
from typing import Any

from vmis.cli.table import Column, format_table
from vmis.psargs import Command, Param, pascal_keys

__all__ = ["COMMANDS"]


def cmd_status(g: Any, args: dict[str, Any]) -> int:
    status = g.client().call("fcopy.status")
    if args["json"]:
        print(json.dumps(pascal_keys(status), indent=2))
        return 0
    print(f"AllowedRoots: {' '.join(status['allowed_roots'])}")
    print(f"Frozen:       {status['frozen']}")
    if status["copies"]:
        print()
        print(format_table(
            [Column("Handle"), Column("Direction"), Column("Done"), Column("Size"),
             Column("Path")],
            [(c["handle"], c["direction"], c["done"], c["size"], c["path"])
             for c in status["copies"]]))
    return 0


COMMANDS: tuple[Command, ...] = (
    Command("fcopy status", "Show the file-copy policy (allowed roots) and open copies.",
            (Param("json", "switch", help="print JSON for scripts"),), cmd_status),
)
