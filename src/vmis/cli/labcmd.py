"""``vmis lab ...``: start, stop and inspect lab VMs (vmis.lab)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vmis.cli.psargs import Command, Param
from vmis.cli.table import Column, format_table
from vmis.lab import Lab, run_lab_up

__all__ = ["LAB_COMMANDS"]


def cmd_up(args: dict[str, Any]) -> int:
    lab = Lab()
    names = args["Name"] or ["DemoVM"]
    bundle = Path(args["AgentBundle"]).absolute() if args["AgentBundle"] else None
    vms = run_lab_up(lab, names, args["ClockOffset"], agent_bundle=bundle)
    if args["json"]:
        print(json.dumps([vm.status() for vm in vms], indent=2))
    else:
        for vm in vms:
            print(f"lab VM {vm.name} up (agent pid {vm.pid}, root {vm.root})")
    return 0


def cmd_down(args: dict[str, Any]) -> int:
    stopped = Lab().down(args["Name"])
    if args["json"]:
        print(json.dumps({"Stopped": stopped}))
    else:
        print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


def cmd_status(args: dict[str, Any]) -> int:
    status = Lab().status()
    if args["json"]:
        print(json.dumps(status, indent=2))
        return 0
    print(f"lab directory {status['Directory']}, host manager "
          f"{'pid ' + str(status['HostPid']) if status['HostPid'] else 'not running'}")
    print(format_table([Column("Name"), Column("Running"), Column("Pid"), Column("Root")],
                       [(v["Name"], v["Running"], v["Pid"] or "", v["Root"])
                        for v in status["VMs"]]))
    return 0


def cmd_guest(args: dict[str, Any]) -> int:
    return Lab().guest(args["Name"], args["args"])


JSON = Param("json", "switch", help="print JSON for scripts")

LAB_COMMANDS: tuple[Command, ...] = (
    Command("lab up", "Start the lab host manager and lab VMs (default DemoVM).", (
        Param("Name", "list", position=0, help="lab VM names (default DemoVM)"),
        Param("ClockOffset", "float", help="start the VM's virtual clock off by SECONDS"),
        Param("AgentBundle", help="install this agent bundle (.pyz) instead of this vmis's"),
        JSON,
    ), cmd_up),
    Command("lab down", "Stop lab VMs (all, and the host manager, without names).", (
        Param("Name", "list", position=0), JSON,
    ), cmd_down),
    Command("lab status", "Show the lab's host manager and VMs.", (JSON,), cmd_status),
    Command("lab guest", "Run a vmis-guest command inside a lab VM: lab guest NAME -- ARGS.", (
        Param("Name", required=True, position=0),
    ), cmd_guest, rest="args"),
)
