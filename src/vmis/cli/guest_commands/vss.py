"""``vmis-guest vss status|thaw``: the guest's freeze state, and an emergency thaw.

Standard library only (docs/services/vss.md §6).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmis.cli.table import Column, format_list, format_table
from vmis.psargs import Command, Param, pascal_keys, print_json

if TYPE_CHECKING:
    from vmis.cli.guest import Globals

__all__ = ["COMMANDS"]

JSON = Param("json", "switch", help="print JSON for scripts")


def _seconds(value: Any) -> str:
    return "" if value is None else f"{float(value):.2f} s"


def _print_cycle(cycle: dict[str, Any]) -> None:
    print(format_list([[
        ("Checkpoint", cycle.get("name") or cycle.get("id")),
        ("CycleState", cycle.get("state")),
        ("Frozen", ", ".join(cycle.get("frozen") or [])),
        ("FrozenFor", _seconds(cycle.get("frozen_for"))),
        ("ThawIn", _seconds(cycle.get("thaw_in"))),
        ("Timeout", _seconds(cycle.get("timeout"))),
        ("ThawedBy", cycle.get("reason") or ""),
        ("Error", cycle.get("error") or ""),
    ]]))
    hooks = cycle.get("hooks") or []
    if hooks:
        print()
        print(format_table(
            [Column("Hook"), Column("Phase"), Column("Result"), Column("Exit"),
             Column("Duration")],
            [(h["name"], h["phase"], h["result"], "" if h["exit"] is None else h["exit"],
              f"{h['duration_ms'] / 1000:.2f} s") for h in hooks],
        ))


def cmd_status(g: Globals, args: dict[str, Any]) -> int:
    status = g.client().call("vss.status")
    if args["json"]:
        print_json(pascal_keys(status))
        return 0
    print(format_list([[
        ("State", status["state"]),
        ("FreezeTimeout", _seconds(status["freeze_timeout"])),
        ("HookTimeout", _seconds(status["hook_timeout"])),
        ("HooksDirectory", status["hooks_dir"]),
        ("Hooks", ", ".join(status["hooks"])),
    ]]))
    if status["cycle"]:
        print()
        _print_cycle(status["cycle"])
    return 0


def cmd_thaw(g: Globals, args: dict[str, Any]) -> int:
    result = g.client().call("vss.thaw")
    if args["json"]:
        print_json(pascal_keys(result))
    elif result["result"] == "thawed":
        print(f"thawed: {', '.join(result['cycle']['thawed']) or 'nothing'}")
    else:
        print("nothing was frozen")
    return 0


COMMANDS: tuple[Command, ...] = (
    Command("vss status", "Show whether the filesystems are frozen, and the last freeze.",
            (JSON,), cmd_status),
    Command("vss thaw", "Thaw the filesystems now (runs the thaw hooks), whoever froze them.",
            (JSON,), cmd_thaw),
)
