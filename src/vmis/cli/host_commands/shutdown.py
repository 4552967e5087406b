"""``vmis Stop-VM`` and ``vmis Restart-VM``: orderly power-off and restart through the guest."""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmis.api.client import ApiClient
from vmis.cli.fleetcmd import COMPUTER, warn_pending
from vmis.cli.table import report_results
from vmis.errors import UsageError
from vmis.psargs import Command, Param

if TYPE_CHECKING:
    from vmis.lab.lab import LabVm

__all__ = ["COMMANDS"]

JSON = Param("json", "switch", help="print JSON for scripts")
#: seconds the HTTP call may take beyond -TimeoutSec
_MARGIN = 30.0


def default_reason(verb: str) -> str:
    """``Stop-VM by alice on hv01``: who asked, from where (Hyper-V logs the same)."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown user"
    return f"{verb} by {user} on {socket.gethostname()}"


def lab_vm_of(name: str, channel: str) -> LabVm | None:
    """The lab VM behind a channel address, if it has the lab's layout (vmis.lab)."""
    from vmis.lab.lab import LabVm

    if not channel.startswith("unix:"):
        return None
    path = Path(channel.removeprefix("unix:"))
    if len(path.parents) < 4:
        return None
    vm = LabVm(name, path.parents[3])
    return vm if vm.channel_path == path else None


def _wait_lab_process(result: dict[str, Any], deadline: float) -> None:
    # The host manager sees the channel close; in the lab the VM *is* the agent
    # process, so wait for it to end too, and say so.
    vm = lab_vm_of(result["VMName"], result.get("Channel") or "")
    if vm is None:
        return
    while vm.pid is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    result["ProcessEnded"] = vm.pid is None
    if vm.pid is not None:
        result["Error"] = (f"{result['VMName']}: the guest agent left the channel but the lab "
                           f"VM process {vm.pid} still runs")


def _power(api: ApiClient, args: dict[str, Any], verb: str, path: str) -> int:
    timeout = args["TimeoutSec"]
    if not 0 < timeout <= 3600:
        raise UsageError(f"{verb}: -TimeoutSec must be between 0 and 3600.")
    started = time.monotonic()
    results = api.call("POST", path, timeout=timeout + _MARGIN, json={
        "vms": args["Name"], "force": args["Force"],
        "reason": args["Reason"] or default_reason(verb),
        "timeout": timeout, "turn_off": args.get("TurnOff", False),
        "computer": args["ComputerName"],
    })
    for r in results:
        if not r["Error"] and r.get("Kind") == "lab" and r["Action"] == "Stop":
            _wait_lab_process(r, started + timeout)
    warn_pending(results)
    return report_results(results, verb, args["json"], _outcome)


def _outcome(r: Mapping[str, Any]) -> str:
    if r.get("Pending"):
        return f"{r['VMName']}: pending on host {r['ComputerName']}"
    if r.get("AlreadyOff"):
        return f"{r['VMName']}: already off"
    if r["Action"] == "TurnOff":
        return f"{r['VMName']}: turned off (off after {r['Seconds']:g} s)"
    if r["Action"] == "Stop":
        ended = "; lab VM process ended" if r.get("ProcessEnded") else ""
        if r.get("PoweredOff"):
            ended = "; the hypervisor has it off"
        return f"{r['VMName']}: shut down (guest gone after {r['Seconds']:g} s{ended})"
    return (f"{r['VMName']}: restarted (down after {r['DownAfter']:g} s, "
            f"running again after {r['Seconds']:g} s)")


def cmd_stop(api: ApiClient, args: dict[str, Any]) -> int:
    return _power(api, args, "Stop-VM", "/power/stop")


def cmd_restart(api: ApiClient, args: dict[str, Any]) -> int:
    return _power(api, args, "Restart-VM", "/power/restart")


NAME = Param("Name", "list", required=True, position=0, aliases=("VMName", "VM"),
             help="VM names; wildcards allowed")
FORCE = Param("Force", "switch",
              help="go ahead even when the guest is blocked (logind shutdown inhibitors)")
REASON = Param("Reason", help="text logged in the guest (default: who asked, from which host)")
TIMEOUT = Param("TimeoutSec", "float", default=300.0,
                help="seconds to wait until the VM is down (restart: and back); default 300")

COMMANDS: tuple[Command, ...] = (
    Command("Stop-VM", "Shut a VM down through its guest (Shutdown integration service).", (
        NAME, FORCE,
        Param("TurnOff", "switch", help="cut the power instead, through QMP (QEMU quits)"),
        REASON, TIMEOUT, COMPUTER, JSON,
    ), cmd_stop,
        examples=("vmis Stop-VM -Name DemoVM", "vmis Stop-VM DemoVM -Force -TimeoutSec 60")),
    Command("Restart-VM", "Restart a VM through its guest (Shutdown integration service).", (
        NAME, FORCE, REASON, TIMEOUT, COMPUTER, JSON,
    ), cmd_restart, examples=("vmis Restart-VM -Name DemoVM",)),
)
