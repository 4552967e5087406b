"""Desired-state policy on the command line (docs/fleet.md §5):
Set-/Get-/Remove-VMIntegrationServicePolicy, Set-VM -Tag and
Get-VMIntegrationServiceCompliance."""

from __future__ import annotations

import sys
from typing import Any

from vmis.api.client import ApiClient, api_path
from vmis.cli.fleetcmd import COMPUTER, host_column
from vmis.cli.table import Column, format_table
from vmis.psargs import Command, Param, print_json

__all__ = ["POLICY_COMMANDS"]

JSON = Param("json", "switch", help="print JSON for scripts")


def _list(values: Any) -> str:
    return ", ".join(map(str, values)) if values else ""


def _tags(tags: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))


def _print_policies(rows: list[dict[str, Any]]) -> None:
    print(format_table(
        [Column("Name"), Column("ComputerName"), Column("VMName"), Column("Tag"),
         Column("Enable"), Column("Disable"), Column("MinimumVersion")],
        [(p["Name"], p["ComputerName"] or "*", p["VMName"] or "*", _tags(p["Tag"]),
          _list(p["Enable"]), _list(p["Disable"]), p["MinimumVersion"]) for p in rows]))


def cmd_set_policy(api: ApiClient, args: dict[str, Any]) -> int:
    computers = args["ComputerName"] or []
    if len(computers) > 1:
        print("Set-VMIntegrationServicePolicy: -ComputerName takes one pattern here "
              "(hv0*, or *)", file=sys.stderr)
        return 1
    result = api.call("PUT", api_path("policies", args["Name"]), json={
        "computer": computers[0] if computers else None, "vm_name": args["VMName"],
        "tags": args["Tag"] or [], "enable": args["Enable"] or [],
        "disable": args["Disable"] or [], "minimum_version": args["MinimumVersion"]})
    if args["json"]:
        print_json(result)
    else:
        _print_policies([result])
        print(f"\n{result['VMs']} VMs selected; their hosts converge them now.")
    return 0


def cmd_get_policy(api: ApiClient, args: dict[str, Any]) -> int:
    rows = api.call("GET", "/policies", params={"name": args["Name"]})
    if args["json"]:
        print_json(rows)
    else:
        _print_policies(rows)
    return 0


def cmd_remove_policy(api: ApiClient, args: dict[str, Any]) -> int:
    removed = []
    for name in args["Name"]:
        removed += api.call("DELETE", api_path("policies", name))
    if args["json"]:
        print_json(removed)
    return 0


def cmd_set_vm(api: ApiClient, args: dict[str, Any]) -> int:
    rows = api.call("POST", "/vms/tags", json={
        "vms": args["Name"], "tags": args["Tag"] or [], "remove": args["RemoveTag"] or []})
    if args["json"]:
        print_json(rows)
    elif args["Passthru"]:
        print(format_table([Column("VMName"), Column("ComputerName"), Column("Tag")],
                           [(r["VMName"], r["ComputerName"], _tags(r["Tag"])) for r in rows]))
    return 0


def cmd_compliance(api: ApiClient, args: dict[str, Any]) -> int:
    rows = api.call("GET", "/compliance", params={"vm": args["VMName"],
                                                  "computer": args["ComputerName"]})
    if args["json"]:
        print_json(rows)
        return 0
    hosts = bool(host_column(args))
    print(format_table(
        [Column("VMName", min_width=11), Column("Name"), Column("Desired"), Column("Actual"),
         Column("Compliant"), Column("Since"), *host_column(args)],
        [(r["VMName"], r["Name"], r["Desired"], r["Actual"], r["Compliant"], r["Since"],
          *([r["ComputerName"]] if hosts else [])) for r in rows]))
    for r in rows:  # why, on the WARNING stream, as Get-VMIntegrationService's reasons
        if not r["Compliant"]:
            print(f"WARNING: {r['VMName']}: {r['Name']}: {r['Reason']}", file=sys.stderr)
    return 0


_NAME = Param("Name", required=True, position=0, help="the policy's name")

POLICY_COMMANDS: tuple[Command, ...] = (
    Command("Set-VMIntegrationServicePolicy",
            "Create or replace a policy: which services the VMs it selects have.", (
                _NAME,
                Param("ComputerName", "list", aliases=("CN",),
                      help="the hosts it holds on: a name or pattern (default every host)"),
                Param("VMName", help="the VMs it holds on: a name or pattern (default all)"),
                Param("Tag", "list", help="key=value tags a VM must all have to be selected"),
                Param("Enable", "list", help="services the selected VMs have"),
                Param("Disable", "list", help="services the selected VMs do not have"),
                Param("MinimumVersion", help="the least guest agent version (compliance)"),
                JSON,
            ), cmd_set_policy, examples=(
                "vmis Set-VMIntegrationServicePolicy -Name baseline -ComputerName '*' "
                "-Enable Heartbeat,'Key-Value Pair Exchange' -Disable VSS "
                "-MinimumVersion 0.9",
                "vmis Set-VMIntegrationServicePolicy -Name db -Tag role=db -Enable VSS",
            )),
    Command("Get-VMIntegrationServicePolicy", "Show integration service policies.", (
        Param("Name", "list", position=0, help="policy names; wildcards allowed"), JSON,
    ), cmd_get_policy),
    Command("Remove-VMIntegrationServicePolicy",
            "Remove policies; their VMs keep the settings they have.", (
                Param("Name", "list", required=True, position=0,
                      help="policy names; wildcards allowed"), JSON,
            ), cmd_remove_policy),
    Command("Set-VM", "Tag VMs (policies select VMs by their tags).", (
        Param("Name", "list", required=True, position=0, aliases=("VMName",),
              help="VM names, on any host of the fleet; wildcards allowed"),
        Param("Tag", "list", help="key=value tags to set"),
        Param("RemoveTag", "list", help="tag names to take away"),
        Param("Passthru", "switch", help="print the VMs' tags"), JSON,
    ), cmd_set_vm, examples=("vmis Set-VM -Name 'db*' -Tag role=db,tier=1",
                             "vmis Set-VM -Name db01 -RemoveTag tier")),
    Command("Get-VMIntegrationServiceCompliance",
            "Show where guests disagree with the desired state, since when and why.", (
                Param("VMName", "list", position=0, aliases=("VM",),
                      help="VM names; wildcards allowed (default all)"), COMPUTER, JSON,
            ), cmd_compliance,
            examples=("vmis Get-VMIntegrationServiceCompliance -ComputerName '*'",)),
)
