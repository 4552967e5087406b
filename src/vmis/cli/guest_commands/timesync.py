"""``vmis-guest timesync status``: the guest's view of time sync. Standard library only."""

from __future__ import annotations

from typing import Any

from vmis.cli.table import format_list
from vmis.psargs import Command, Param, pascal_keys, print_json

__all__ = ["COMMANDS"]


def _time(ns: Any) -> str:
    from datetime import UTC, datetime

    if not isinstance(ns, int):
        return ""
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")


def _ms(ns: Any) -> str:
    return "" if not isinstance(ns, int) else f"{ns / 1e6:.3f} ms"


def cmd_status(g: Any, args: dict[str, Any]) -> int:
    status = g.client().call("timesync.status")
    if args["json"]:
        print_json(pascal_keys(status))
        return 0
    print(format_list([[
        ("State", status["state"]), ("Mode", status["mode"]), ("Daemon", status["daemon"]),
        ("LastAction", status["action"]), ("Offset", _ms(status["offset_ns"])),
        ("RoundTrip", _ms(status["rtt_ns"])), ("LastSample", _time(status["last_sample_ns"])),
        ("LastStep", _time(status["last_step_ns"])),
        ("LastStepBy", _ms(status["last_step_delta_ns"])),
        ("SlewRemaining", _ms(status["slew_remaining_ns"])),
        ("StepThreshold", _ms(status["step_threshold_ns"])),
        ("ChronyRefclock", f"refclock SOCK {status['chrony_socket']} refid VMIS"),
        ("Note", status["note"]),
    ]]))
    return 0


COMMANDS: tuple[Command, ...] = (
    Command("timesync status", "Show the last time sample, what was done with it, and the mode.",
            (Param("json", "switch", help="print JSON for scripts"),), cmd_status),
)
