"""``vmis lab ...``: start, stop and inspect lab VMs (vmis.lab)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from vmis.cli.table import Column, format_table
from vmis.errors import UsageError
from vmis.psargs import Command, Param, print_json

__all__ = ["LAB_COMMANDS"]


def cmd_up(args: dict[str, Any]) -> int:
    from vmis.lab.lab import Lab, run_lab_up

    lab = Lab()
    names = args["Name"] or ["DemoVM"]
    bundle = Path(args["AgentBundle"]).absolute() if args["AgentBundle"] else None
    image = Path(args["Image"]).absolute() if args["Image"] else None
    if image is not None and not args["Qemu"]:
        raise UsageError("lab up: -Image is for QEMU lab VMs (add -Qemu).")
    if args["Memory"] is not None and not args["Qemu"]:
        raise UsageError("lab up: -Memory is for QEMU lab VMs (add -Qemu).")
    if bundle is not None and args["Qemu"]:
        raise UsageError("lab up: -AgentBundle is for process lab VMs; a QEMU lab VM runs "
                         "the agent its image has (update it with Update-VMIntegrationServices).")
    if args["Qemu"] and sys.stderr.isatty() and not args["json"]:
        print("booting QEMU (the first run builds the guest image: a few minutes; a boot takes "
              "about a minute under TCG)...", file=sys.stderr)
    vms = run_lab_up(lab, names, args["ClockOffset"], agent_bundle=bundle, qemu=args["Qemu"],
                     image=image, memory_mib=args["Memory"], db=args["Db"],
                     computer=args["ComputerName"])
    if args["json"]:
        print_json([vm.status() for vm in vms])
    else:
        for vm in vms:
            if vm.is_qemu:
                print(f"lab VM {vm.name} up (QEMU pid {vm.pid}, directory {vm.dir})")
            else:
                print(f"lab VM {vm.name} up (agent pid {vm.pid}, root {vm.root})")
    return 0


def cmd_down(args: dict[str, Any]) -> int:
    from vmis.lab.lab import Lab

    stopped = Lab().down(args["Name"])
    if args["json"]:
        print(json.dumps({"Stopped": stopped}))
    else:
        print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


def cmd_status(args: dict[str, Any]) -> int:
    from vmis.lab.lab import Lab

    status = Lab().status()
    if args["json"]:
        print_json(status)
        return 0
    fleet = (f", host {status['ComputerName'] or '(this machine)'} of the fleet on "
             f"{status['Database']}" if status["Database"] else "")
    print(f"lab directory {status['Directory']}, host manager "
          f"{'pid ' + str(status['HostPid']) if status['HostPid'] else 'not running'}{fleet}")
    if status["ConsoleUrl"]:
        print(f"web console {status['ConsoleUrl']} (sign in with a token: "
              f"vmis token add me -Role Administrator)")
    print(format_table([Column("Name"), Column("Kind"), Column("Running"), Column("Pid"),
                        Column("Root")],
                       [(v["Name"], v["Kind"], v["Running"], v["Pid"] or "", v["Root"])
                        for v in status["VMs"]]))
    return 0


def cmd_guest(args: dict[str, Any]) -> int:
    if not args["Name"]:
        raise UsageError("lab guest: name a lab VM: vmis lab guest NAME ARGS...")
    from vmis.cli.guest import main as guest_main
    from vmis.lab.lab import Lab

    return guest_main(["--root", str(Lab().guest_root(args["Name"])), *args["args"]])


JSON = Param("json", "switch", help="print JSON for scripts")

LAB_COMMANDS: tuple[Command, ...] = (
    Command("lab up", "Start the lab host manager and lab VMs (default DemoVM).", (
        Param("Name", "list", position=0, help="lab VM names (default DemoVM)"),
        Param("ClockOffset", "float", help="start the VM's virtual clock off by SECONDS"),
        Param("AgentBundle", help="install this agent bundle (.pyz) instead of this vmis's"),
        Param("Qemu", "switch",
              help="boot a real QEMU VM from the project's guest image (built if missing)"),
        Param("Image", help="with -Qemu: boot this built guest image (its directory)"),
        Param("Memory", "int", aliases=("MemoryMiB",), help="with -Qemu: RAM in MiB (512)"),
        Param("Db", help="the lab's host manager joins the fleet of this PostgreSQL store "
                         "(postgresql+psycopg://...; a password is better in ~/.pgpass)"),
        Param("ComputerName", help="with -Db: the lab's host name in the fleet (default: this "
                                   "machine's); two labs on one machine need two names"),
        JSON,
    ), cmd_up, examples=("vmis lab up DemoVM", "vmis lab up RealVM -Qemu",
                         "VMIS_LAB_DIR=/tmp/hv02 vmis lab up Web2 -Db "
                         "postgresql+psycopg:///vmis -ComputerName hv02"), local=True),
    Command("lab down", "Stop lab VMs (all, and the host manager, without names).", (
        Param("Name", "list", position=0), JSON,
    ), cmd_down, local=True),
    Command("lab status", "Show the lab's host manager and VMs.", (JSON,), cmd_status,
            local=True),
    Command("lab guest", "Run a vmis-guest command inside a lab VM: lab guest NAME -- ARGS.", (
        # mandatory; cmd_guest says so, showing the whole command line
        Param("Name", position=0, help="the lab VM (mandatory)"),
    ), cmd_guest, rest="args", raw=True, local=True),
)
