"""The fleet on the command line (docs/fleet.md): ``-ComputerName``, Get-VMHost, Move-VM.

``-ComputerName`` is Hyper-V's: a host name, a list of them, or ``*`` for
every host of the fleet; ``localhost`` and ``.`` are the host the command
runs on, which is also the default. The commands that take it print a
``ComputerName`` column when it is given, and say which answers are
pending (another host not responding, or slow) on the WARNING stream.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

from vmis.api.client import ApiClient, api_path
from vmis.cli.table import Column, format_table, report_failures
from vmis.psargs import Command, Param, print_json

__all__ = ["COMPUTER", "FLEET_COMMANDS", "host_column", "warn_pending"]

COMPUTER = Param("ComputerName", "list", aliases=("CN",),
                 help="host names, or '*' for every host of the fleet (default: this host)")
JSON = Param("json", "switch", help="print JSON for scripts")


def _warn(text: str) -> None:
    print(f"WARNING: {text}", file=sys.stderr)


def host_column(args: Mapping[str, Any]) -> list[Column]:
    """The ComputerName column, when the command was given -ComputerName."""
    return [Column("ComputerName")] if args.get("ComputerName") else []


def warn_pending(results: Iterable[Mapping[str, Any]]) -> None:
    """One WARNING per VM whose answer is pending on another host, with the reason."""
    seen = set()
    for r in results:
        if r.get("Pending") and r.get("PendingReason"):
            line = f"{r.get('VMName')}: {r['PendingReason']}"
            if line not in seen:
                seen.add(line)
                _warn(line)


def cmd_get_vmhost(api: ApiClient, args: dict[str, Any]) -> int:
    rows = api.call("GET", "/hosts", params={"computer": args["ComputerName"]})
    if args["json"]:
        print_json(rows)
        return 0
    print(format_table(
        [Column("Name"), Column("State"), Column("VMs"), Column("Version"),
         Column("LastSeen"), Column("Address")],
        [(h["Name"], h["State"], h["VMs"], h["Version"], h["LastSeen"], h["Address"])
         for h in rows]))
    return 0


def cmd_move_vm(api: ApiClient, args: dict[str, Any]) -> int:
    result = api.call("POST", api_path("vms", args["Name"], "move"), json={
        "destination": args["DestinationHost"], "computer": args["ComputerName"],
        "channel": args["Channel"], "qmp": args["Qmp"]})
    if args["json"]:
        print_json(result)
    elif result.get("Moved"):
        print(f"VM {result['VMName']} moved from host {result['SourceHost']} to host "
              f"{result['DestinationHost']} (channel {result['Channel']})")
    if result.get("Warning"):
        _warn(result["Warning"])
    warn_pending([result])
    return report_failures([result], "Move-VM", args["json"])


FLEET_COMMANDS: tuple[Command, ...] = (
    Command("Get-VMHost", "Show hosts of the fleet: state (Responding / Not Responding), VMs.", (
        COMPUTER, JSON,
    ), cmd_get_vmhost, examples=("vmis Get-VMHost -ComputerName '*'",)),
    Command("Move-VM", "Give a VM to another host of the fleet (its sessions run there).", (
        Param("Name", required=True, position=0, aliases=("VMName", "VM")),
        Param("DestinationHost", required=True, position=1,
              help="the host that owns the VM from now on"),
        Param("Channel", help="the VM's channel address as the destination reaches it "
                              "(default: the one it has)"),
        Param("Qmp", help="its QMP socket as the destination reaches it"),
        Param("ComputerName", aliases=("CN",),
              help="the host the VM is on (default: this host)"),
        JSON,
    ), cmd_move_vm, examples=("vmis Move-VM -Name web01 -DestinationHost hv02",
                              "vmis Move-VM web01 hv02 -Channel vsock:42:5000",
                              "vmis Move-VM web01 -DestinationHost hv02 -ComputerName hv01")),
)
