"""Hypervisor commands of ``vmis``: Start-VM, setup disk, ``vm create``, ``vm add`` discovery.

Start-VM, Insert-SetupDisk and Eject-SetupDisk go through the host manager's
QMP connection to each VM (vmis.host.hypervisor, vmis.qemu.hypervisor);
``vm create`` makes a VM the manager launches itself. Discovery
(:func:`discover_for_add`) runs here, in the command line, because it reads
``/proc`` and ``virsh`` on the machine where QEMU runs; a host manager with
libvirt connections discovers libvirt domains itself (:func:`add_libvirt_domains`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmis.api.client import ApiClient
from vmis.cli.table import report_results
from vmis.errors import ConfigError, ExternalProgramError, NotFoundError, UsageError
from vmis.psargs import Command, Param, print_json

__all__ = ["HYPERVISOR_COMMANDS", "Discovery", "add_libvirt_domains", "discover_for_add"]

JSON = Param("json", "switch", help="print JSON for scripts")
NAMES = Param("Name", "list", required=True, position=0, aliases=("VMName", "VM"),
              help="VM names; wildcards allowed")
#: seconds ``vm create`` may take: the first one builds the guest image
CREATE_TIMEOUT = 1800.0
#: seconds Start-VM may take (QEMU answers its monitor well within a second)
START_TIMEOUT = 120.0


# Section: discovery for vm add

#: the vm add parameters that discover a VM, and what each reads
DISCOVERY_SOURCES = ("FromPid", "FromCmdline", "FromLibvirtXml", "Libvirt")


class Discovery:
    """What ``vm add`` learnt from a running QEMU or a libvirt domain."""

    def __init__(self, name: str | None, channel: str | None, qmp: str | None,
                 notes: tuple[str, ...], source: str, *, guest_agent: str = "vmis") -> None:
        self.name = name
        self.channel = channel
        self.qmp = qmp
        self.notes = notes
        self.source = source
        #: the agent behind the channel: vmis, or qemu-ga (no vmis port, qemu-ga's)
        self.guest_agent = guest_agent


def _virsh_dumpxml(domain: str) -> str:
    import shutil
    import subprocess

    virsh = shutil.which("virsh")
    if virsh is None:
        raise NotFoundError("virsh is not installed; save the domain XML with 'virsh dumpxml' "
                            "elsewhere and pass it with -FromLibvirtXml FILE")
    try:
        proc = subprocess.run([virsh, "dumpxml", domain], capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExternalProgramError(f"virsh dumpxml {domain} failed: {exc}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise NotFoundError(f"virsh dumpxml {domain} failed: {last}")
    return proc.stdout


def discover_for_add(args: dict[str, Any]) -> Discovery | None:
    """Read the agent channel and QMP socket of a VM off a QEMU process or a libvirt domain.

    :return: ``None`` when no discovery parameter was given.
    :raise UsageError: When more than one was given.
    :raise NotFoundError: When the source cannot be read, or holds no agent channel.
    """
    from vmis.qemu.discovery import (
        discover_from_cmdline,
        discover_from_libvirt_xml,
        discover_from_pid,
    )

    given = [key for key in DISCOVERY_SOURCES if args.get(key) is not None]
    if not given:
        return None
    if len(given) > 1:
        raise UsageError(f"vm add: use one of {', '.join('-' + g for g in given)}, not several.")
    key = given[0]
    value = args[key]
    if key == "FromPid":
        found = discover_from_pid(int(value))
        source = f"QEMU process {value}"
    elif key == "FromCmdline":
        found = discover_from_cmdline(str(value))
        source = "the command line"
    elif key == "FromLibvirtXml":
        try:
            xml = Path(value).read_text()
        except OSError as exc:
            raise NotFoundError(f"cannot read {value}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{value} is not a libvirt domain XML (not UTF-8 text)") from None
        found = discover_from_libvirt_xml(xml)
        source = str(value)
    else:
        if len(value) != 1 or any(c in value[0] for c in "*?["):
            raise UsageError("vm add: several domains, or wildcards, need the host manager's "
                             "libvirt connection (vmis host serve -Hypervisor qemu:///system)")
        found = discover_from_libvirt_xml(_virsh_dumpxml(value[0]))
        source = f"libvirt domain {value[0]}"
    if found.channel is None:
        why = "; ".join(found.notes) or "no reason given"
        raise NotFoundError(f"no guest agent channel (virtio-serial port org.vmis.agent.0, or "
                            f"qemu-ga's org.qemu.guest_agent.0, on a Unix socket) in {source}: "
                            f"{why}")
    return Discovery(found.name, f"unix:{found.channel}",
                     str(found.qmp) if found.qmp is not None else None, tuple(found.notes),
                     source, guest_agent=found.guest_agent)


def add_libvirt_domains(api: ApiClient, args: dict[str, Any]) -> int | None:
    """``vm add -Libvirt DOMAIN,...``: register domains through the host manager's libvirt
    connection (names, or wildcards: ``'*'`` registers every domain with an agent channel).

    :return: the exit status, or None when the manager has no libvirt connection
        (then the domain's XML is read with virsh, :func:`discover_for_add`).
    """
    if not api.call("GET", "/libvirt/connections"):
        if args["LibvirtUri"]:
            raise UsageError("vm add: -LibvirtUri needs a host manager with that libvirt "
                             "connection (vmis host serve -Hypervisor URI)")
        return None
    for other in ("Channel", "Qmp"):
        if args[other]:
            raise UsageError(f"vm add: -{other} comes from the domain with -Libvirt; "
                             f"change it afterwards with vmis vm set")
    rows = api.call("POST", "/libvirt/vms", json={
        "domains": args["Libvirt"], "name": args["Name"], "uri": args["LibvirtUri"],
        "heartbeat_interval_ms": args["HeartbeatIntervalMs"],
    })
    if args["json"]:
        print_json(rows)
        return 0
    for row in rows:
        if row["Registered"]:
            print(f"VM {row['Name']} registered (libvirt domain {row['Domain']} at "
                  f"{row['LibvirtUri']}, {row['Channel']}), id {row['Id']}")
        else:
            print(f"WARNING: {row['Domain']}: skipped: {row['Note']}", file=sys.stderr)
    if not rows:
        print(f"WARNING: no libvirt domain matches {', '.join(args['Libvirt'])}", file=sys.stderr)
    return 0


# Section: commands


def _started(r: Mapping[str, Any]) -> str:
    if r.get("Action") == "Started":
        pid = f" (QEMU pid {r['Pid']})" if r.get("Pid") else ""
        return f"{r['VMName']}: started{pid}"
    if r.get("Action") == "Resumed":
        return f"{r['VMName']}: resumed"
    return f"{r['VMName']}: already running"


def cmd_start_vm(api: ApiClient, args: dict[str, Any]) -> int:
    results = api.call("POST", "/vms/start", json={"vms": args["Name"]}, timeout=START_TIMEOUT)
    return report_results(results, "Start-VM", args["json"], _started)


def cmd_insert_setup_disk(api: ApiClient, args: dict[str, Any]) -> int:
    if args["Eject"]:
        return cmd_eject_setup_disk(api, args)
    body: dict[str, Any] = {"vms": args["VMName"]}
    if args["Path"]:
        body["path"] = str(Path(args["Path"]).absolute())
    results = api.call("POST", "/setup-disk/insert", json=body, timeout=START_TIMEOUT)
    code = report_results(results, "Insert-SetupDisk", args["json"],
                          lambda r: f"{r['VMName']}: {r['Path']} is in drive {r['Device']}")
    if not args["json"] and not args["Path"] and code == 0:
        print("In the guest, as root: mount /dev/sr0 /mnt && sh /mnt/install.sh")
    return code


def cmd_eject_setup_disk(api: ApiClient, args: dict[str, Any]) -> int:
    results = api.call("POST", "/setup-disk/eject", json={"vms": args["VMName"]},
                       timeout=START_TIMEOUT)
    return report_results(results, "Eject-SetupDisk", args["json"],
                          lambda r: f"{r['VMName']}: drive {r['Device']} is empty")


def cmd_vm_create(api: ApiClient, args: dict[str, Any]) -> int:
    if sys.stderr.isatty() and not args["json"]:
        print("creating the VM (the first VM builds the guest image: a few minutes)...",
              file=sys.stderr)
    vm = api.call("POST", "/qemu/vms", timeout=CREATE_TIMEOUT, json={
        "name": args["Name"], "memory_mib": args["Memory"], "cpus": args["Cpus"],
        "clock_offset": args["ClockOffset"], "persistent": args["Persistent"],
    })
    if args["json"]:
        print_json(vm)
    else:
        disk = "persistent disk" if vm["Persistent"] else "disk writes discarded at power-off"
        print(f"VM {vm['Name']} created in {vm['WorkDir']} ({vm['MemoryMiB']} MiB, "
              f"{vm['Cpus']} CPU, {disk}); start it with: vmis Start-VM -Name {vm['Name']}")
    return 0


HYPERVISOR_COMMANDS: tuple[Command, ...] = (
    Command("Start-VM", "Start a VM (through QMP or libvirt), or resume a paused one.", (
        NAMES, JSON,
    ), cmd_start_vm, examples=("vmis Start-VM -Name web1",)),
    Command("Insert-SetupDisk", "Put the setup disk (or an ISO) into a VM's CD-ROM drive.", (
        Param("VMName", "list", required=True, position=0, aliases=("VM", "Name"),
              help="VM names; wildcards allowed"),
        Param("Path", help="a disc image on this host (default: this host's setup disk)"),
        Param("Eject", "switch", help="take the disc out instead"), JSON,
    ), cmd_insert_setup_disk,
        examples=("vmis Insert-SetupDisk -VMName web1", "vmis Insert-SetupDisk web1 -Eject")),
    Command("Eject-SetupDisk", "Take the disc out of a VM's CD-ROM drive.", (
        Param("VMName", "list", required=True, position=0, aliases=("VM", "Name"),
              help="VM names; wildcards allowed"), JSON,
    ), cmd_eject_setup_disk),
    Command("vm create", "Create a VM from the project's guest image (QEMU; libvirt with "
            "host serve -Hypervisor).", (
        Param("Name", required=True, position=0),
        Param("Memory", "int", default=512, aliases=("MemoryMiB",), help="RAM in MiB (512)"),
        Param("Cpus", "int", default=1, help="virtual CPUs (1)"),
        Param("ClockOffset", "float", default=0.0,
              help="seconds the guest's clock starts ahead of the host's (negative: behind)"),
        Param("Persistent", "switch",
              help="keep disk writes in a qcow2 overlay (needed for checkpoints)"), JSON,
    ), cmd_vm_create, examples=("vmis vm create web1 -Persistent && vmis Start-VM web1",)),
)
