"""``vmis Get-VMKvp``, ``Set-VMKvp``, ``Remove-VMKvp``: Key-Value Pair Exchange from the host.

docs/services/kvp.md §3. Host writes go to the External pool; one made while
the guest cannot take it is saved by the host manager and delivered when it
can (a warning says so, and Get-VMKvp lists it as pending).
"""

from __future__ import annotations

import sys
from typing import Any

from vmis.api.client import ApiClient
from vmis.cli.fleetcmd import COMPUTER, host_column
from vmis.cli.table import Column, format_table, report_failures
from vmis.psargs import Command, Param, print_json
from vmis.services.kvp import POOL_NAMES

__all__ = ["COMMANDS"]

JSON = Param("json", "switch", help="print JSON for scripts")
VMNAME = Param("VMName", "list", required=True, position=0, aliases=("VM", "Name"),
               help="VM names; wildcards allowed")
#: longest value a table cell shows; --json has them whole
_CELL = 80


def _warn(text: str) -> None:
    print(f"WARNING: {text}", file=sys.stderr)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t",
                                                                                        "\\t")
    return text if len(text) <= _CELL else text[: _CELL - 3] + "..."


def _pool_cell(row: dict[str, Any]) -> str:
    if row["Pending"] == "set":
        return f"{row['Pool']} (pending)"
    if row["Pending"] == "remove":
        return f"{row['Pool']} (pending removal)"
    return str(row["Pool"])


def cmd_get(api: ApiClient, args: dict[str, Any]) -> int:
    params: dict[str, Any] = {"vm": args["VMName"], "computer": args["ComputerName"]}
    if args["Pool"]:
        params["pool"] = args["Pool"]
    rows = api.call("GET", "/kvp", params=params)
    if args["json"]:
        print_json(rows)
        return 0
    hosts = bool(args["ComputerName"])
    print(format_table(
        [Column("VMName", min_width=11), Column("Pool"), Column("Key"), Column("Value"),
         *host_column(args)],
        [(r["VMName"], _pool_cell(r), _cell(r["Key"]), _cell(r["Value"]),
          *([r["ComputerName"]] if hosts else [])) for r in rows],
    ))
    stale = sorted({(r["VMName"], r.get("HostState", "Responding")) for r in rows
                    if not r["Connected"] and r["Pending"] is None})
    for name, host_state in stale:
        if host_state != "Responding":
            _warn(f"{name}: its host is not responding; these are the pools it last reported")
        else:
            _warn(f"{name}: no contact with the guest agent; these are the pools it last "
                  "reported")
    if any(r["Pending"] for r in rows):
        _warn("pending writes are saved by the host manager and delivered, in order, when the "
              "guest can take them")
    if args["Pool"] != "Auto":
        # a guest agent without some pools (qemu-ga) says so
        for limit in api.call("GET", "/kvp/limits", params={"vm": args["VMName"]}):
            _warn(f"{limit['VMName']}: {limit['Limit']}")
    return 0


def _report(verb: str, results: list[dict[str, Any]], args: dict[str, Any]) -> int:
    if args["json"]:
        print_json(results)
    else:
        for r in results:
            if r["Pending"]:
                reason = str(r.get("PendingReason") or r["Reason"] or "not delivered yet")
                if not reason.startswith(f"{r['VMName']}:"):
                    reason = f"{r['VMName']}: {reason}"
                _warn(f"{reason}; the write is saved and delivered when the guest can take it")
    return report_failures(results, verb, args["json"])


def cmd_set(api: ApiClient, args: dict[str, Any]) -> int:
    results = api.call("POST", "/kvp/set", json={"vms": args["VMName"], "key": args["Key"],
                                                 "value": args["Value"],
                                                 "computer": args["ComputerName"]})
    return _report("Set-VMKvp", results, args)


def cmd_remove(api: ApiClient, args: dict[str, Any]) -> int:
    results = api.call("POST", "/kvp/remove", json={"vms": args["VMName"], "key": args["Key"],
                                                    "computer": args["ComputerName"]})
    return _report("Remove-VMKvp", results, args)


COMMANDS: tuple[Command, ...] = (
    Command("Get-VMKvp", "List a VM's key-value pairs (all pools, or one).", (
        VMNAME,
        Param("Pool", choices=tuple(POOL_NAMES.values()),
              help="External (host to guest), Guest (guest to host), Auto (guest facts), "
                   "AutoExternal (host facts), AutoInternal"),
        COMPUTER, JSON,
    ), cmd_get, aliases=("kvp",),
        examples=("vmis Get-VMKvp -VMName DemoVM -Pool Auto",)),
    Command("Set-VMKvp", "Give VMs a key-value pair (External pool; saved if not delivered).", (
        VMNAME,
        Param("Key", required=True, position=1, help="at most 511 bytes of UTF-8"),
        Param("Value", required=True, position=2, help="at most 2047 bytes of UTF-8"),
        COMPUTER, JSON,
    ), cmd_set, examples=('vmis Set-VMKvp -VMName DemoVM -Key Role -Value "web frontend"',)),
    Command("Remove-VMKvp", "Remove a key-value pair from VMs' External pool.", (
        VMNAME,
        Param("Key", required=True, position=1),
        COMPUTER, JSON,
    ), cmd_remove, examples=("vmis Remove-VMKvp -VMName DemoVM -Key Role",)),
)
