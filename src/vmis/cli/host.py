"""``vmis``: the host command line, in Hyper-V's cmdlet shapes.

Every command is a thin call of the host manager's API (vmis.api), except
``host serve`` (which runs the manager) and ``lab`` (which starts lab VMs).
Verbs and parameters are case-insensitive; ``--json`` prints what scripts
should parse; errors are one line on stderr (one JSON object with ``--json``)
and a non-zero exit.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import vmis
from vmis.api.client import ApiClient, api_path
from vmis.cli.fleetcmd import COMPUTER, FLEET_COMMANDS, host_column, warn_pending
from vmis.cli.table import Column, format_table, format_uptime, report_failures
from vmis.errors import NotFoundError, UsageError, VmisError
from vmis.psargs import Command, Param, exit_now, find_verb, print_json, run_command, run_main

__all__ = ["COMMANDS", "console", "main"]

JSON = Param("json", "switch", help="print JSON for scripts")
GUEST_AGENT = Param("GuestAgent", choices=("vmis", "qemu-ga"),
                    help="the guest agent the VM runs: vmis (default) or qemu-ga, the QEMU "
                         "guest agent (docs/guest-links.md)")


def warn(text: str) -> None:
    """PowerShell's WARNING stream: stderr, so tables on stdout stay parseable."""
    print(f"WARNING: {text}", file=sys.stderr)


# Section: integration services


SERVICE_COLUMNS = [Column("VMName", min_width=11), Column("Name"), Column("Enabled"),
                   Column("PrimaryStatusDescription"), Column("SecondaryStatusDescription")]


def print_services(rows: list[dict[str, Any]], hosts: bool = False) -> None:
    """Get-VMIntegrationService's table (docs/hyperv.md §3), reasons as warnings.

    :param hosts: add the ComputerName column (the command was given -ComputerName).
    """
    print(format_table(SERVICE_COLUMNS + ([Column("ComputerName")] if hosts else []), [
        (r["VMName"], r["Name"], r["Enabled"], r["PrimaryStatusDescription"],
         r["SecondaryStatusDescription"], *([r["ComputerName"]] if hosts else [])) for r in rows
    ]))
    for r in rows:
        if r["Reason"]:
            status = r["PrimaryStatusDescription"] or "no status"
            warn(f"{r['VMName']}: {r['Name']}: {status}: {r['Reason']}")


def cmd_get_services(api: ApiClient, args: dict[str, Any]) -> int:
    params = {"vm": args["VMName"], "computer": args["ComputerName"]}
    if args["Name"]:
        params["name"] = args["Name"]
    rows = api.call("GET", "/services", params=params)
    if args["json"]:
        print_json(rows)
    else:
        print_services(rows, bool(args["ComputerName"]))
    return 0


def _set_services(api: ApiClient, args: dict[str, Any], enable: bool, verb: str) -> int:
    results = api.call("POST", f"/services/{'enable' if enable else 'disable'}",
                       json={"vms": args["VMName"], "names": args["Name"],
                             "computer": args["ComputerName"]})
    if args["json"]:
        print_json(results)
    else:
        pending = sorted({r["VMName"] for r in results
                          if not r["Applied"] and not r["Error"] and not r.get("Pending")})
        for name in pending:
            warn(f"{name}: no guest agent connected; the change is saved and applies when it "
                 "connects")
        warn_pending(results)
        if args["Passthru"]:
            names = sorted({r["Name"] for r in results})
            print_services(api.call("GET", "/services", params={
                "vm": args["VMName"], "name": names, "computer": args["ComputerName"]}),
                bool(args["ComputerName"]))
    return report_failures(results, verb, args["json"])


def cmd_enable(api: ApiClient, args: dict[str, Any]) -> int:
    return _set_services(api, args, True, "Enable-VMIntegrationService")


def cmd_disable(api: ApiClient, args: dict[str, Any]) -> int:
    return _set_services(api, args, False, "Disable-VMIntegrationService")


# Section: VM registry


def cmd_get_vm(api: ApiClient, args: dict[str, Any]) -> int:
    rows = api.call("GET", "/vm-status", params={"name": args["Name"],
                                                 "computer": args["ComputerName"]})
    if args["json"]:
        print_json(rows)
        return 0
    hosts = bool(args["ComputerName"])
    print(format_table(
        [Column("Name"), Column("State"), Column("Heartbeat"), Column("Uptime"),
         Column("IntegrationServicesVersion"), Column("IntegrationServicesState"),
         *([Column("ComputerName"), Column("HostState")] if hosts else [])],
        [(r["Name"], r["State"], r["Heartbeat"], format_uptime(r.get("Uptime")),
          r["IntegrationServicesVersion"],
          r["IntegrationServicesState"], *([r["ComputerName"], r["HostState"]] if hosts else []))
         for r in rows],
    ))
    return 0


def cmd_vm_add(api: ApiClient, args: dict[str, Any]) -> int:
    from vmis.cli.hypervisorcmd import add_libvirt_domains, discover_for_add

    if args["Libvirt"] and (done := add_libvirt_domains(api, args)) is not None:
        return done
    name, channel, qmp = args["Name"], args["Channel"], args["Qmp"]
    agent = args["GuestAgent"]
    found = discover_for_add(args)
    if found is not None:
        name, channel, qmp = name or found.name, channel or found.channel, qmp or found.qmp
        agent = agent or found.guest_agent
        for note in found.notes:
            warn(note)
    if not name:
        raise UsageError("vm add: name the VM (vmis vm add NAME ...).")
    if not channel:
        raise UsageError("vm add: missing mandatory parameter -Channel (or read it off a "
                         "running VM with -FromPid, -FromCmdline, -FromLibvirtXml or -Libvirt).")
    vm = api.call("POST", "/vms", json={
        "name": name, "channel": channel, "qmp": qmp, "guest_agent": agent or "vmis",
        "heartbeat_interval_ms": args["HeartbeatIntervalMs"],
    })
    if args["json"]:
        print_json(vm)
    else:
        monitor = f", QMP {vm['Qmp']}" if vm["Qmp"] else ""
        print(f"VM {vm['Name']} registered ({vm['Channel']}{monitor}, guest agent "
              f"{vm['GuestAgent']}), id {vm['Id']}")
    return 0


def cmd_vm_list(api: ApiClient, args: dict[str, Any]) -> int:
    vms = api.call("GET", "/vms", params={"computer": args["ComputerName"]})
    if args["json"]:
        print_json(vms)
        return 0
    print(format_table(
        [Column("Name"), Column("Connected"), Column("Heartbeat"), Column("GuestAgent"),
         Column("AgentVersion"), Column("Channel"), Column("Id"), *host_column(args)],
        [(v["Name"], v["Connected"], v["Heartbeat"], v["GuestAgent"], v["AgentVersion"] or "",
          v["Channel"], v["Id"], *([v["ComputerName"]] if args["ComputerName"] else []))
         for v in vms],
    ))
    return 0


def cmd_vm_remove(api: ApiClient, args: dict[str, Any]) -> int:
    if not args["Name"] and not args["Id"]:
        raise UsageError("vm remove: name the VMs, or give their ids with -Id.")
    # A name is the VM's, else the VM's id; -Id is only an id (vmis vm list shows both)
    ids = list(args["Id"] or [])
    names = []
    for name in args["Name"] or []:
        if "/" not in name:
            names.append(name)
            continue
        # a name from before vmis checked names: no URL path carries a '/'
        found = [v["Id"] for v in api.call("GET", "/vms") if v["Name"].lower() == name.lower()]
        if not found:
            raise NotFoundError(f"no VM named {name!r} is registered (see 'vmis vm list')")
        ids += found
    removed = [api.call("DELETE", api_path("vms", name)) for name in names]
    removed += [api.call("DELETE", api_path("vms", vm_id), params={"by_id": "true"})
                for vm_id in ids]
    if args["json"]:
        print_json(removed)
    else:
        for vm in removed:
            print(f"VM {vm['Name']!r} removed (id {vm['Id']})")
    return 0


def cmd_vm_set(api: ApiClient, args: dict[str, Any]) -> int:
    patch = {"channel": args["Channel"], "qmp": args["Qmp"], "guest_agent": args["GuestAgent"],
             "heartbeat_interval_ms": args["HeartbeatIntervalMs"],
             "heartbeat_latency_ms": args["HeartbeatLatencyMs"],
             "heartbeat_error_threshold": args["HeartbeatErrorThreshold"]}
    vm = api.call("PATCH", api_path("vms", args["Name"]),
                  json={k: v for k, v in patch.items() if v is not None})
    if args["json"]:
        print_json(vm)
    return 0


# Section: the manager itself


def run_fast(main: Any) -> None:
    """Run the manager on uvloop where installed (about twice the messages per CPU
    second of the default loop: bench/heartbeat_scale.py), else on asyncio's."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def cmd_host_serve(args: dict[str, Any]) -> int:
    import logging
    from pathlib import Path

    from vmis.api.client import SYSTEM_SOCKET
    from vmis.api.server import Listen, serve

    socket_path = Path(args["Socket"] or os.environ.get("VMIS_SOCKET") or SYSTEM_SOCKET)
    # $VMIS_DB keeps a password out of the process list, which every user reads
    db = args["Db"] or os.environ.get("VMIS_DB") or "sqlite:////var/lib/vmis/host.db"
    tls = args["CertificatePath"] or args["KeyPath"] or args["SelfSignedCertificate"]
    if tls and not args["Listen"]:
        raise UsageError("host serve: -CertificatePath, -KeyPath and -SelfSignedCertificate "
                         "are for -Listen HOST:PORT")
    listen = Listen(args["Listen"], Path(args["CertificatePath"]) if args["CertificatePath"]
                    else None, Path(args["KeyPath"]) if args["KeyPath"] else None,
                    args["SelfSignedCertificate"]) if args["Listen"] else None
    logging.basicConfig(level=args["LogLevel"].upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args["Db"] and _has_password(args["Db"]):
        logging.getLogger("vmis.host").warning(
            "the database password is on the command line, where every user of this machine "
            "can read it: give it in ~/.pgpass (PGPASSFILE) or $VMIS_DB instead")
    run_fast(serve(db, socket_path, listen=listen, libvirt_uris=args["Hypervisor"] or (),
                   host_name=args["ComputerName"]))
    return 0


def _has_password(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


COMMANDS: tuple[Command, ...] = (
    Command("Get-VMIntegrationService", "List a VM's integration services and their status.", (
        Param("VMName", "list", required=True, position=0, aliases=("VM",),
              help="VM names; wildcards allowed"),
        Param("Name", "list", position=1, help="service names; wildcards allowed"), COMPUTER,
        JSON,
    ), cmd_get_services, aliases=("services", "gvmis"),
        examples=('vmis Get-VMIntegrationService -VMName DemoVM',)),
    Command("Enable-VMIntegrationService", "Let a VM use integration services.", (
        Param("Name", "list", required=True, position=0, help='service names, "*" for all'),
        Param("VMName", "list", required=True, position=1, aliases=("VM",),
              help="VM names; wildcards allowed"),
        Param("Passthru", "switch", help="print the resulting rows"), COMPUTER, JSON,
    ), cmd_enable, aliases=("enable",),
        examples=('vmis Enable-VMIntegrationService -VMName DemoVM -Name "Guest Service '
                  'Interface"',)),
    Command("Disable-VMIntegrationService", "Stop a VM from using integration services.", (
        Param("Name", "list", required=True, position=0, help='service names, "*" for all'),
        Param("VMName", "list", required=True, position=1, aliases=("VM",),
              help="VM names; wildcards allowed"),
        Param("Passthru", "switch", help="print the resulting rows"), COMPUTER, JSON,
    ), cmd_disable, aliases=("disable",)),
    Command("Get-VM", "Show VMs: state, heartbeat, integration services version.", (
        Param("Name", "list", position=0, aliases=("VMName",),
              help="VM names; wildcards allowed (default all)"), COMPUTER, JSON,
    ), cmd_get_vm, aliases=("vms",), examples=("vmis Get-VM -ComputerName '*'",)),
    Command("vm add", "Register a VM with the host manager.", (
        Param("Name", position=0, help="the VM's name (default: the discovered one)"),
        Param("Channel", help="unix:/path | vsock:CID:PORT | hvsock:/path:PORT"),
        Param("Qmp", aliases=("QemuQmp",), help="QEMU QMP socket of the VM"),
        GUEST_AGENT,
        Param("FromPid", "int", help="read -Channel and -Qmp off this running QEMU process"),
        Param("FromCmdline", help="read them off a QEMU command line (one quoted word)"),
        Param("FromLibvirtXml", help="read them off a libvirt domain XML file (virsh dumpxml)"),
        Param("Libvirt", "list", help="libvirt domains, wildcards allowed: through the host "
                                      "manager's libvirt connection, else virsh dumpxml"),
        Param("LibvirtUri", help="the manager's libvirt connection to look in (default: all)"),
        Param("HeartbeatIntervalMs", "int", help="heartbeat interval (default 2000)"), JSON,
    ), cmd_vm_add, examples=(
        "vmis vm add web1 -Channel unix:/run/vmis/web1.agent -Qmp /run/vmis/web1.qmp",
        "vmis vm add web1 -FromPid 12345",
        "vmis vm add -Libvirt '*'",
        "vmis vm add db1 -Channel unix:/run/qemu/db1.qga -GuestAgent qemu-ga",
    )),
    Command("vm list", "List registered VMs.", (COMPUTER, JSON), cmd_vm_list),
    Command("vm set", "Change a registered VM's settings.", (
        Param("Name", required=True, position=0), Param("Channel"), Param("Qmp"), GUEST_AGENT,
        Param("HeartbeatIntervalMs", "int"), Param("HeartbeatLatencyMs", "int"),
        Param("HeartbeatErrorThreshold", "int"), JSON,
    ), cmd_vm_set),
    Command("vm remove", "Unregister VMs.", (
        Param("Name", "list", position=0, help="VM names (or ids)"),
        Param("Id", "list", help="VM ids (vmis vm list --json): for a VM whose name a command "
                                 "line cannot spell"), JSON,
    ), cmd_vm_remove, examples=("vmis vm remove web01",
                                "vmis vm remove -Id 5f0c9a6e-0d1b-4c1e-9a51-3d2f8e8b7c11")),
)

HOST_SERVE: tuple[Command, ...] = (
    Command("host serve", "Run the host manager (API on a Unix socket, mode 0600; on TCP "
                          "with -Listen).", (
        Param("Db", help="SQLAlchemy URL, or $VMIS_DB (default "
                         "sqlite:////var/lib/vmis/host.db); postgresql+psycopg://... joins a "
                         "fleet (docs/fleet.md)"),
        Param("ComputerName", help="this host's name in its fleet (default: the machine's "
                                   "host name)"),
        Param("Socket", help="API socket (default /run/vmis/host.sock, or $VMIS_SOCKET)"),
        Param("Listen", help="also serve the API on TCP, HOST:PORT (port 8443 if left out); "
                             "every call there needs a token; without TLS, loopback only"),
        Param("CertificatePath", help="TLS certificate for -Listen (PEM, its chain after it)"),
        Param("KeyPath", help="the private key of -CertificatePath (PEM)"),
        Param("SelfSignedCertificate", "switch",
              help="TLS for -Listen with a self-signed pair, made once in the data directory "
                   "(the log shows its fingerprint for $VMIS_CERT_FINGERPRINT)"),
        Param("LogLevel", choices=("debug", "info", "warning", "error"), default="info"),
        Param("Hypervisor", "list", help="libvirt connection URIs whose domains it drives "
                                         "(qemu:///system); repeatable"),
    ), cmd_host_serve, local=True, examples=(
        "vmis host serve -Hypervisor qemu:///system",
        "vmis host serve -Listen 0.0.0.0:8443 -SelfSignedCertificate",
        "vmis host serve -Listen 127.0.0.1:8080",
        "vmis host serve -Db postgresql+psycopg://vmis@db.example/vmis -ComputerName hv01",
    )),
)


#: a common parameter of every command that calls the manager (-ComputerName names
#: hosts of a fleet, as Hyper-V's; -Server the manager that answers)
SERVER = Param("Server", help="the host manager to ask: https://HOST:PORT, or HOST (port "
                                "8443); default $VMIS_URL, else this machine's socket; its "
                                "token in $VMIS_TOKEN")


#: every group of commands, in ``vmis --help``'s order, by the first words of its
#: commands' names and aliases (lowercased): a command loads its own group's module,
#: not all twenty (about 12 ms of its start, bench/cli_start.py).
#: tests/cli/test_cli_host.py checks the words against the commands.
_FIRST_WORDS: dict[str, str] = {
    "core": "get-vmintegrationservice services gvmis enable-vmintegrationservice enable "
            "disable-vmintegrationservice disable get-vm vms vm",
    "fleet": "get-vmhost move-vm",
    "policy": "set-vmintegrationservicepolicy get-vmintegrationservicepolicy "
              "remove-vmintegrationservicepolicy set-vm get-vmintegrationservicecompliance",
    "event": "get-vmevent events",
    "hypervisor": "start-vm insert-setupdisk eject-setupdisk vm",
    "update": "update-vmintegrationservices update",
    "fcopy": "copy-vmfile cpvmf get-vmfilecopy stop-vmfilecopy",
    "kvp": "get-vmkvp kvp set-vmkvp remove-vmkvp",
    "shutdown": "stop-vm restart-vm",
    "timesync": "get-vmtimesync timesync set-vmtimesync",
    "vmsession": "invoke-command exec icm",
    "vss": "checkpoint-vm checkpoint get-vmcheckpoint checkpoints get-vmsnapshot get-vmvss "
           "vss vm",
    "account": "token get-vmauditlog audit",
    "local": "host get-vmintegrationservicesupdatepath update-path "
             "install-vmintegrationservices install-offline setup-disk",
    "lab": "lab",
}


def _group(name: str) -> tuple[Command, ...]:
    """The commands of one group of :data:`_FIRST_WORDS`, loading its module alone."""
    match name:
        case "core":
            return COMMANDS
        case "fleet":
            return FLEET_COMMANDS
        case "policy":
            from vmis.cli.policycmd import POLICY_COMMANDS
            return POLICY_COMMANDS
        case "event":
            from vmis.cli.eventcmd import EVENT_COMMANDS
            return EVENT_COMMANDS
        case "hypervisor":
            from vmis.cli.hypervisorcmd import HYPERVISOR_COMMANDS
            return HYPERVISOR_COMMANDS
        case "update":
            from vmis.cli.updatecmd import UPDATE_COMMANDS
            return UPDATE_COMMANDS
        case "fcopy":
            from vmis.cli.host_commands import fcopy
            return fcopy.COMMANDS
        case "kvp":
            from vmis.cli.host_commands import kvp
            return kvp.COMMANDS
        case "shutdown":
            from vmis.cli.host_commands import shutdown
            return shutdown.COMMANDS
        case "timesync":
            from vmis.cli.host_commands import timesync
            return timesync.COMMANDS
        case "vmsession":
            from vmis.cli.host_commands import vmsession
            return vmsession.COMMANDS
        case "vss":
            from vmis.cli.host_commands import vss
            return vss.COMMANDS
        case "account":
            from vmis.cli.accountcmd import ACCOUNT_COMMANDS
            return ACCOUNT_COMMANDS
        case "local":
            from vmis.cli.advisorcmd import UPDATE_PATH_COMMANDS
            from vmis.cli.updatecmd import SETUP_DISK_COMMANDS
            return HOST_SERVE + UPDATE_PATH_COMMANDS + SETUP_DISK_COMMANDS
        case "lab":
            from vmis.cli.labcmd import LAB_COMMANDS
            return LAB_COMMANDS
    raise KeyError(name)


def _commands(groups: Sequence[str]) -> tuple[Command, ...]:
    """The commands of *groups*; those that call the manager take -Server too."""
    return tuple(c if c.local else c._replace(params=(*c.params, SERVER))
                 for g in groups for c in _group(g))


def _all_commands() -> tuple[Command, ...]:
    return _commands(list(_FIRST_WORDS))


def _commands_for(word: str) -> tuple[Command, ...]:
    """The commands *word* (a command line's first) may name: its groups', else all."""
    key = word.lower()
    return _commands([g for g, words in _FIRST_WORDS.items() if key in words.split()]
                     or list(_FIRST_WORDS))


def _help(commands: Sequence[Command]) -> str:
    lines = [f"vmis {vmis.__version__}: integration services for virtual machines (host)", "",
             "usage: vmis COMMAND [parameters]   (verbs and parameters are case-insensitive)",
             "", "commands:"]
    for c in commands:
        alias = f" (alias: {', '.join(c.aliases)})" if c.aliases else ""
        lines.append(f"  {c.name:30} {c.summary}{alias}")
    lines += ["", "Run 'vmis COMMAND -?' for a command's parameters.",
              "The manager's socket: $VMIS_SOCKET, else the lab's when a lab runs "
              "($VMIS_LAB_DIR, default ~/.local/state/vmis/lab), else /run/vmis/host.sock.",
              "A remote manager: -Server or $VMIS_URL, with $VMIS_TOKEN (and $VMIS_CA "
              "or $VMIS_CERT_FINGERPRINT for a self-signed certificate)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vmis``; returns the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)

    def prefix(exc: VmisError) -> str:
        # A usage error is vmis's own complaint; others come from the command named.
        return "vmis" if isinstance(exc, UsageError) or not words else words[0]

    return run_main(lambda: _run(words), prefix, words)


def _run(words: list[str]) -> int:
    if not words or words[0] in ("-h", "--help", "-?", "help"):
        print(_help(_all_commands()))
        return 0 if words else 2
    if words[0] == "--version":
        print(vmis.__version__)
        return 0
    cmd, rest = find_verb(_commands_for(words[0]), words)
    return run_command(cmd, rest, lambda args: _call(cmd, args))


def _call(cmd: Command, args: dict[str, Any]) -> int:
    if cmd.local:
        code: int = cmd.run(args)
        return code
    with ApiClient.for_target(args.get("Server")) as api:
        code = cmd.run(api, args)
    return code


def console() -> NoReturn:
    """The ``vmis`` console script: :func:`main`, then :func:`~vmis.psargs.exit_now`."""
    exit_now(main())


if __name__ == "__main__":
    console()
