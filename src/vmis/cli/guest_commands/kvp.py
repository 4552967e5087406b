"""``vmis-guest kvp get|set|delete|list``: the KVP pools from inside the guest.

Through the agent's control socket (ops ``kvp.*``, docs/services/kvp.md §4),
so a write is checked, refused while the filesystems are frozen, and pushed
to the host at once. Writes go to the Guest pool; ``get`` without ``--pool``
looks in External, Guest, Auto, AutoExternal, AutoInternal in that order.

Standard library only.
"""

from __future__ import annotations

from typing import Any

from vmis.cli.table import Column, format_table
from vmis.psargs import Command, Param, print_json

__all__ = ["COMMANDS"]

JSON = Param("json", "switch", help="print JSON for scripts")
POOL_HELP = "External, Guest, Auto, AutoExternal or AutoInternal (or 0-4)"


def _pool(args: dict[str, Any]) -> dict[str, Any]:
    return {"pool": args["Pool"]} if args["Pool"] else {}


def cmd_get(g: Any, args: dict[str, Any]) -> int:
    item = g.client().call("kvp.get", key=args["Key"], **_pool(args))
    if args["json"]:
        print_json(item)
    else:
        # the bare value, so that scripts can say $(vmis-guest kvp get Role)
        print(item["Value"])
    return 0


def cmd_set(g: Any, args: dict[str, Any]) -> int:
    item = g.client().call("kvp.set", key=args["Key"], value=args["Value"], **_pool(args))
    if args["json"]:
        print_json(item)
    return 0


def cmd_delete(g: Any, args: dict[str, Any]) -> int:
    item = g.client().call("kvp.delete", key=args["Key"], **_pool(args))
    if args["json"]:
        print_json(item)
    return 0


def cmd_list(g: Any, args: dict[str, Any]) -> int:
    rows = g.client().call("kvp.list", **_pool(args))
    if args["json"]:
        print_json(rows)
        return 0
    print(format_table([Column("Pool"), Column("Key"), Column("Value")],
                       [(r["Pool"], r["Key"], r["Value"]) for r in rows]))
    return 0


COMMANDS: tuple[Command, ...] = (
    Command("kvp get", "Print the value of a key (from the host, the OS, or the guest).", (
        Param("Key", required=True, position=0),
        Param("Pool", help=f"{POOL_HELP}; default: the first pool that has the key"), JSON,
    ), cmd_get),
    Command("kvp set", "Set a key in the Guest pool, for the host to read.", (
        Param("Key", required=True, position=0, help="at most 511 bytes of UTF-8"),
        Param("Value", required=True, position=1, help="at most 2047 bytes of UTF-8"),
        Param("Pool", help="Guest (the only pool the guest writes)"), JSON,
    ), cmd_set),
    Command("kvp delete", "Delete a key (from the Guest pool unless --pool says otherwise).", (
        Param("Key", required=True, position=0),
        Param("Pool", help=f"{POOL_HELP}; default Guest"), JSON,
    ), cmd_delete, aliases=("kvp remove",)),
    Command("kvp list", "List the key-value pairs of every pool, or of one.", (
        Param("Pool", position=0, help=POOL_HELP), JSON,
    ), cmd_list),
)
