"""``vmis Get-VMTimeSync`` and ``vmis Set-VMTimeSync``: the guests' clocks as the host sees them."""

from __future__ import annotations

import sys
from typing import Any

from vmis.api.client import ApiClient
from vmis.cli.table import Column, format_table
from vmis.errors import UsageError
from vmis.psargs import Command, Param, print_json
from vmis.services.timesync import DEFAULT_INTERVAL_MS

__all__ = ["COMMANDS"]

JSON = Param("json", "switch", help="print JSON for scripts")


def _ms(ns: Any) -> str:
    return "" if not isinstance(ns, int) else f"{ns / 1e6:.3f}"


def _print(rows: list[dict[str, Any]]) -> None:
    print(format_table(
        [Column("VMName", min_width=11), Column("State"), Column("OffsetMs"),
         Column("RoundTripMs"), Column("LastSample"), Column("LastStep"), Column("IntervalSec")],
        [(r["VMName"], r["State"], _ms(r["OffsetNs"]), _ms(r["RoundTripNs"]),
          r["LastSample"] or "", r["LastStep"] or "", f"{r['IntervalMs'] / 1000:g}")
         for r in rows],
    ))
    for r in rows:
        # Why a VM has no fresh sample, or what the guest wants the admin to know,
        # on stderr like PowerShell's warning stream.
        text = r["Error"] if r["State"] in ("Disabled", "NoContact", "Stopped", "Error") \
            else r["Note"]
        if text:
            print(f"WARNING: {r['VMName']}: {text}", file=sys.stderr)


def cmd_get(api: ApiClient, args: dict[str, Any]) -> int:
    rows = api.call("GET", "/timesync", params={"vm": args["VMName"]})
    if args["json"]:
        print_json(rows)
    else:
        _print(rows)
    return 0


def cmd_set(api: ApiClient, args: dict[str, Any]) -> int:
    seconds = args["IntervalSec"]
    if not 0.2 <= seconds <= 3600:
        raise UsageError("Set-VMTimeSync: -IntervalSec must be between 0.2 and 3600.")
    rows = api.call("PATCH", "/timesync", json={"vms": args["VMName"],
                                                "interval_ms": round(seconds * 1000)})
    if args["json"]:
        print_json(rows)
    elif args["Passthru"]:
        _print(rows)
    return 0


COMMANDS: tuple[Command, ...] = (
    Command("Get-VMTimeSync", "Show each VM's clock offset, round trip and sync state.", (
        Param("VMName", "list", required=True, position=0, aliases=("Name", "VM"),
              help="VM names; wildcards allowed"), JSON,
    ), cmd_get, aliases=("timesync",), examples=("vmis Get-VMTimeSync -VMName DemoVM",)),
    Command("Set-VMTimeSync", "Change how often the host sends time samples to VMs.", (
        Param("VMName", "list", required=True, position=0, aliases=("Name", "VM"),
              help="VM names; wildcards allowed"),
        Param("IntervalSec", "float", required=True,
              help=f"seconds between sample bursts (default {DEFAULT_INTERVAL_MS / 1000:g})"),
        Param("Passthru", "switch", help="print the resulting rows"), JSON,
    ), cmd_set, examples=("vmis Set-VMTimeSync -VMName DemoVM -IntervalSec 2",)),
)
