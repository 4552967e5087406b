"""``vmis Update-VMIntegrationServices``: the online update, with a progress display."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vmis.api.client import ApiClient
from vmis.cli.fleetcmd import COMPUTER, warn_pending
from vmis.cli.table import Column, format_table, report_failures
from vmis.psargs import Command, Param, print_json

__all__ = ["SETUP_DISK_COMMANDS", "UPDATE_COMMANDS"]

_STAGES = {"copying": 1, "installing": 2, "restarting": 3, "done": 4}


class _Display:
    """One rich progress line per VM on a terminal; nothing otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.fields[vm]:<16}"), BarColumn(),
                                     TextColumn("{task.description}"), TimeElapsedColumn(),
                                     console=Console(stderr=True))
            self.progress.start()

    def update(self, line: dict[str, Any]) -> None:
        if self.progress is None:
            return
        vm, stage = line["VMName"], line["Stage"]
        if vm not in self.tasks:
            self.tasks[vm] = self.progress.add_task(stage, total=4, vm=vm)
        label = line.get("Result") or stage if stage == "done" else stage
        self.progress.update(self.tasks[vm], completed=_STAGES.get(stage, 0), description=label)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _rollout_line(line: dict[str, Any]) -> None:
    """A staged rollout's progress, one line each on stderr."""
    stage = line["Stage"]
    if stage == "batch":
        text = f"batch {line['Batch']}/{line['Batches']}: {', '.join(line['VMs'])}"
    elif stage in ("healthy", "unhealthy"):
        text = f"batch {line['Batch']}/{line['Batches']}: {stage}"
    elif stage == "rollback":
        text = f"rolling {line['VMName']} back to {line['To']}"
    else:
        text = "rollout stopped" if line.get("Stopped") else "rollout done"
    print(text, file=sys.stderr)


def cmd_update(api: ApiClient, args: dict[str, Any]) -> int:
    body: dict[str, Any] = {"vms": args["VMName"], "computer": args["ComputerName"]}
    if args["BundlePath"]:
        body["bundle"] = str(Path(args["BundlePath"]).absolute())
    if args["TimeoutSec"]:
        body["timeout"] = args["TimeoutSec"]
    staged = args["BatchPercent"] is not None
    if staged:
        body["batch_percent"] = args["BatchPercent"]
    if args["HealthWaitSec"] is not None:
        if not staged:
            print("Update-VMIntegrationServices: -HealthWaitSec goes with -BatchPercent",
                  file=sys.stderr)
            return 1
        body["health_wait"] = args["HealthWaitSec"]
    display = _Display(sys.stderr.isatty() and not args["json"])
    results: list[dict[str, Any]] = []
    try:
        for line in api.stream("POST", "/update", json=body, timeout=None):
            if line.get("type") == "progress":
                display.update(line)
            elif line.get("type") == "rollout" and not args["json"]:
                _rollout_line(line)
            elif line.get("type") == "result":
                results = line["VMs"]
    finally:
        display.stop()
    if args["json"]:
        print_json(results)
    elif staged:
        print(format_table(
            [Column("Batch"), Column("VMName"), Column("ComputerName"), Column("From"),
             Column("To"), Column("Result"), Column("Version"), Column("Healthy")],
            [(r["Batch"], r["VMName"], r["ComputerName"], r["From"], r["To"], r["Result"],
              r["Version"], r["Healthy"]) for r in results]))
    else:
        print(format_table(
            [Column("VMName"), Column("From"), Column("To"), Column("Result"),
             Column("Version"), Column("Seconds")],
            [(r["VMName"], r["From"], r["To"], r["Result"], r["Version"], r["Seconds"])
             for r in results]))
    if staged and not args["json"]:
        for r in results:
            if r["Healthy"] is False:
                print(f"WARNING: {r['VMName']}: unhealthy: {r['HealthReason']}",
                      file=sys.stderr)
    warn_pending(results)
    report_failures(results, "Update-VMIntegrationServices", args["json"])
    # pending: its host applies it when it can (docs/fleet.md), as a saved change
    return 0 if all(r["Result"] in ("updated", "current", "pending") for r in results) else 1


UPDATE_COMMANDS: tuple[Command, ...] = (
    Command("Update-VMIntegrationServices",
            "Install this host's guest agent into running VMs, with rollback.", (
                Param("VMName", "list", required=True, position=0, aliases=("VM", "Name"),
                      help="VM names; wildcards allowed"),
                Param("BundlePath", help="install this bundle instead of this host's agent"),
                Param("TimeoutSec", "float", help="seconds to wait for each new agent"),
                Param("BatchPercent", "float",
                      help="a staged rollout: batches of at most this % of the VMs; an "
                           "unhealthy batch stops it and is rolled back"),
                Param("HealthWaitSec", "float",
                      help="seconds each batch must stay healthy (default 60)"),
                COMPUTER,
                Param("json", "switch", help="print JSON for scripts"),
            ), cmd_update, aliases=("update",),
            examples=("vmis Update-VMIntegrationServices -VMName 'web*'",
                      "vmis Update-VMIntegrationServices -ComputerName '*' -VMName '*' "
                      "-BatchPercent 20 -HealthWaitSec 60")),
)


def cmd_setup_disk_build(args: dict[str, Any]) -> int:
    from vmis.host.setupdisk import build_setup_disk

    path = Path(args["Path"] or "vmis-setup.iso").absolute()
    result = build_setup_disk(path)
    if args["json"]:
        print_json(result)
    else:
        print(f"{path}: vmis {result['version']} setup disk, label {result['label']}, "
              f"sha256 {result['iso_sha256']}")
    return 0


def cmd_install_offline(args: dict[str, Any]) -> int:
    from vmis.qemu.offline import install_into_image, install_into_root

    target = Path(args["Path"]).absolute()
    if target.is_dir():
        result = install_into_root(target)
    else:
        if sys.stderr.isatty() and not args["json"]:
            print(f"installing into {target} through libguestfs (this boots a small "
                  "appliance; it takes a minute)...", file=sys.stderr)
        result = install_into_image(target, args["Format"])
    if args["json"]:
        print_json(result)
    else:
        print(f"vmis guest agent {result['Installed']} installed into {result['Target']}"
              f" ({result['Kind']})")
    return 0


#: commands that need no host manager
SETUP_DISK_COMMANDS: tuple[Command, ...] = (
    Command("Install-VMIntegrationServices",
            "Install the guest agent into a stopped VM's disk image or root directory.", (
                Param("Path", required=True, position=0,
                      help="a guest root directory, or a disk image (raw, qcow2, vhdx...)"),
                Param("Format", help="the image format (default: detected)"),
                Param("json", "switch", help="print JSON for scripts"),
            ), cmd_install_offline, aliases=("install-offline",), local=True),
    Command("setup-disk build", "Write the setup disk (ISO 9660) that installs the guest agent.", (
        Param("Path", position=0, help="where to write it (default ./vmis-setup.iso)"),
        Param("json", "switch", help="print JSON for scripts"),
    ), cmd_setup_disk_build, local=True),
)
