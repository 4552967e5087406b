"""``vmis Checkpoint-VM`` and the other VSS commands (docs/services/vss.md §6)."""

from __future__ import annotations

import sys
from typing import Any

from vmis.api.client import ApiClient, api_path
from vmis.cli.table import Column, format_list, format_table
from vmis.psargs import Command, Param, print_json, report_error
from vmis.services.vss import SnapshotType

__all__ = ["COMMANDS"]

JSON = Param("json", "switch", help="print JSON for scripts")
#: seconds the HTTP call of a checkpoint may take (freeze hooks, snapshot, thaw hooks)
CHECKPOINT_CALL_TIMEOUT = 3600.0

STEP_COLUMNS = [Column("Step"), Column("Target"), Column("Result"), Column("Duration"),
                Column("Detail")]


def _warn(text: str) -> None:
    print(f"WARNING: {text}", file=sys.stderr)


def _seconds(value: Any) -> str:
    return "" if value is None else f"{float(value):.2f} s"


def print_report(report: dict[str, Any]) -> None:
    """A checkpoint's summary (Format-List) and its timeline (Format-Table)."""
    taken = report["Taken"]
    if taken:
        taken = f"{taken} ({report['Consistency']}-consistent)"
    print(format_list([[
        ("VMName", report["VMName"]), ("Name", report["Name"]),
        ("SnapshotType", report["SnapshotType"]), ("Taken", taken or "nothing"),
        ("Status", report["Status"]),
        ("FrozenFilesystems", ", ".join(report["FrozenFilesystems"])),
        ("FrozenSeconds", _seconds(report["FrozenSeconds"])),
        ("GuestState", report["GuestState"]),
        ("SnapshotStep", report["SnapshotStep"]),
        ("Duration", _seconds(report["DurationSeconds"])),
    ]]))
    if report["Steps"]:
        print()
        print(format_table(STEP_COLUMNS, [
            (s["Step"], s["Target"], s["Result"], _seconds(s["Duration"]), s["Detail"])
            for s in report["Steps"]
        ]))


def cmd_checkpoint(api: ApiClient, args: dict[str, Any]) -> int:
    body = {"name": args["SnapshotName"], "snapshot_type": args["SnapshotType"],
            "snapshot_command": args["SnapshotCommand"], "freeze_timeout": args["FreezeTimeout"]}
    report = api.call("POST", api_path("vms", args["Name"], "checkpoints"),
                      timeout=CHECKPOINT_CALL_TIMEOUT,
                      json={k: v for k, v in body.items() if v is not None})
    if args["json"]:
        print_json(report)  # its Warnings included
    else:
        print_report(report)
        for warning in report["Warnings"]:
            _warn(warning)
    if report["Status"] != "Completed":
        report_error("Checkpoint-VM", str(report["Error"]), args["json"],
                     VMName=report["VMName"])
        return 1
    return 0


def cmd_get_checkpoints(api: ApiClient, args: dict[str, Any]) -> int:
    rows = api.call("GET", "/checkpoints", params={"vm": args["VMName"]})
    if args["json"]:
        print_json(rows)
        return 0
    print(format_table(
        [Column("VMName"), Column("Name"), Column("SnapshotType"), Column("Taken"),
         Column("Status"), Column("CreationTime")],
        [(r["VMName"], r["Name"], r["SnapshotType"], r["Taken"] or "", r["Status"],
          (r["CreationTime"] or "")[:19].replace("T", " ")) for r in rows],
    ))
    return 0


def cmd_get_vss(api: ApiClient, args: dict[str, Any]) -> int:
    status = api.call("GET", api_path("vms", args["Name"], "vss"))
    if args["json"]:
        print_json(status)
        return 0
    guest = status["Guest"] or {}
    cycle = guest.get("cycle") or {}
    record: list[tuple[str, object]] = [
        ("VMName", status["VMName"]),
        ("SnapshotStep", status["SnapshotStep"] or "none (vmis vm set-snapshot-command)"),
        ("SnapshotTimeout", _seconds(status["SnapshotTimeout"])),
        ("CheckpointRunning", status["CheckpointRunning"] or ""),
    ]
    if guest:
        record += [
            ("GuestState", guest.get("state")),
            ("FreezeTimeout", _seconds(guest.get("freeze_timeout"))),
            ("HookTimeout", _seconds(guest.get("hook_timeout"))),
            ("Hooks", ", ".join(guest.get("hooks") or [])),
        ]
    if cycle:
        record += [
            ("LastCheckpoint", cycle.get("name") or cycle.get("id")),
            ("LastState", cycle.get("state")),
            ("Frozen", ", ".join(cycle.get("frozen") or [])),
            ("FrozenSeconds", _seconds(cycle.get("frozen_for"))),
            ("ThawIn", _seconds(cycle.get("thaw_in"))),
            ("LastError", cycle.get("error") or ""),
        ]
    print(format_list([record]))
    if status["GuestError"]:
        _warn(f"{status['VMName']}: cannot ask the guest: {status['GuestError']}")
    return 0


def cmd_set_snapshot_command(api: ApiClient, args: dict[str, Any]) -> int:
    body: dict[str, Any] = {"clear": args["Clear"]}
    if args["Command"] is not None:
        body["snapshot_command"] = args["Command"]
    if args["Timeout"] is not None:
        body["snapshot_timeout"] = args["Timeout"]
    result = api.call("PATCH", api_path("vms", args["Name"], "vss"), json=body)
    if args["json"]:
        print_json(result)
    else:
        print(f"{result['VMName']}: snapshot step: {result['SnapshotStep'] or 'none'} "
              f"(crash-consistent snapshots may take {result['SnapshotTimeout']:g} s)")
    return 0


COMMANDS: tuple[Command, ...] = (
    Command("Checkpoint-VM", "Take a checkpoint: freeze the guest (VSS), snapshot, thaw.", (
        Param("Name", required=True, position=0, aliases=("VMName", "VM"), help="the VM"),
        Param("SnapshotName", position=1, help='default: "VM - (date - time)"'),
        Param("SnapshotType", choices=tuple(t.value for t in SnapshotType),
              default=SnapshotType.PRODUCTION.value,
              help="Production (falls back to Standard if VSS fails), ProductionOnly "
                   "(fails instead), Standard (crash-consistent, no freeze)"),
        Param("SnapshotCommand", help="host command that takes the snapshot, for this "
                                      "checkpoint only (see vm set-snapshot-command)"),
        Param("FreezeTimeout", "float",
              help="seconds the guest may stay frozen (at most its [vss] freeze_timeout)"),
        JSON,
    ), cmd_checkpoint, aliases=("checkpoint",),
        examples=("vmis Checkpoint-VM -Name DemoVM -SnapshotType Production",
                  "vmis checkpoint DemoVM nightly -SnapshotType ProductionOnly --json")),
    Command("Get-VMCheckpoint", "List the checkpoints taken of VMs.", (
        Param("VMName", "list", required=True, position=0, aliases=("Name", "VM"),
              help="VM names; wildcards allowed"), JSON,
    ), cmd_get_checkpoints, aliases=("checkpoints", "Get-VMSnapshot")),
    Command("Get-VMVss", "Show a VM's snapshot step and the guest's freeze state.", (
        Param("Name", required=True, position=0, aliases=("VMName", "VM")), JSON,
    ), cmd_get_vss, aliases=("vss",)),
    Command("vm set-snapshot-command", "Set the host command that takes a VM's snapshots.", (
        Param("Name", required=True, position=0, help="the VM"),
        Param("Command", position=1,
              help="run with /bin/sh -c; $VMIS_VM_NAME, $VMIS_CHECKPOINT_NAME ... in its "
                   "environment (docs/services/vss.md)"),
        Param("Timeout", "float", help="seconds a crash-consistent snapshot may take "
                                       "(default 600)"),
        Param("Clear", "switch", help="remove the command"), JSON,
    ), cmd_set_snapshot_command,
        examples=("vmis vm set-snapshot-command DemoVM 'virsh snapshot-create-as "
                  "\"$VMIS_VM_NAME\" \"$VMIS_CHECKPOINT_NAME\" --disk-only --atomic'",)),
)
