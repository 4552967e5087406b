"""``vmis-guest``: the guest agent and the guest tools. Standard library only.

Global options come before the command: ``--root DIR`` (all guest paths
inside DIR, for lab VMs) and ``--config FILE``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import vmis
from vmis.cli.table import Column, format_table
from vmis.errors import ConfigError, UsageError, VmisError
from vmis.guest.client import ControlClient
from vmis.guest.locations import CONFIG_PATH, control_socket
from vmis.psargs import Command, Param, exit_now, find_verb, print_json, run_command, run_main
from vmis.services.catalog import CATALOG, ServiceSpec, StartupType, match_guest_names

if TYPE_CHECKING:
    from vmis.guest.config import AgentConfig

__all__ = ["console", "main"]


class Globals:
    """Options that apply to every guest command."""

    # Strings, not pathlib's Paths: pathlib (and the urllib.parse it imports) cost a guest
    # tool 3-4 ms of its start; the commands that need a Path make one.
    def __init__(self, root: str, config_path: str) -> None:
        self.root = root
        self.config_path = config_path

    def config(self) -> AgentConfig:
        """The whole configuration, checked (the agent's commands)."""
        from pathlib import Path

        from vmis.guest.config import load_config

        return load_config(Path(self.config_path))

    def inside(self, path: str) -> str:
        """A guest path on this machine: under ``--root`` when it is absolute."""
        return os.path.join(self.root, path.lstrip("/")) if path.startswith("/") else path

    def client(self) -> ControlClient:
        return ControlClient(self.inside(control_socket(self.config_path)))


# Section: commands


def _run_config(g: Globals, args: dict[str, Any]) -> AgentConfig:
    """The configuration file's settings, with what ``run``'s parameters override."""
    from dataclasses import replace

    config = g.config()
    if args["Channel"]:
        config = replace(config, channel=args["Channel"])
    if args["Adapters"]:
        config = replace(config, adapters=args["Adapters"])
    return config


def cmd_run(g: Globals, args: dict[str, Any]) -> int:
    import asyncio
    import logging
    import signal
    from pathlib import Path

    from vmis.guest.adapters import make_adapters
    from vmis.guest.agent import Agent
    from vmis.guest.services import available_services, parse_offer

    config = _run_config(g, args)
    level = (args["LogLevel"] or config.log_level).upper()
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    services = available_services()
    versions: dict[str, Any] = {}
    if args["Offer"]:
        services, versions = parse_offer(args["Offer"], services)
    root = Path(g.root)
    agent = Agent(config, root, services, make_adapters(config.adapters, root, config),
                  versions)

    def reload() -> None:
        # SIGHUP (systemctl reload vmis-guest): a bad file keeps the running settings
        try:
            new = _run_config(g, args)
        except VmisError as exc:
            logging.getLogger("vmis.guest").error("configuration not reloaded: %s", exc)
            return
        agent.reconfigure(new)
        if not args["LogLevel"]:
            logging.getLogger().setLevel(new.log_level.upper())

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.shutdown)
        loop.add_signal_handler(signal.SIGHUP, reload)
        await agent.run()

    asyncio.run(run())
    if agent.restart_requested:
        _exec_launcher(g, args)
    return 0


def _exec_launcher(g: Globals, args: dict[str, Any]) -> None:
    # An online update installed a new agent (vmis.guest.update): replace this
    # process with the installed launcher, which runs the new bundle (same pid,
    # so systemd and the lab keep tracking it).
    import logging

    launcher = g.inside("/usr/bin/vmis-guest")
    argv = ["run"] + [w for k, v in args.items() if v for w in (f"-{k}", str(v))]
    env = dict(os.environ, VMIS_PYTHON=sys.executable)
    if os.path.normpath(g.root) != "/":
        env["VMIS_GUEST_ROOT"] = g.root
    logging.shutdown()
    sys.stderr.flush()
    os.execve("/bin/sh", ["/bin/sh", str(launcher), *argv], env)


def _service(spec: ServiceSpec, status: dict[str, Any]) -> dict[str, Any]:
    """A guest service as PowerShell's Get-Service objects name it (``--json``), from the
    agent's answer (``state``, ``startup``, and ``host_enabled`` in a listing)."""
    row = {"Status": str(status["state"]).capitalize(), "Name": spec.guest_name,
           "DisplayName": spec.display_name,
           "StartType": StartupType.parse(str(status["startup"])).title}
    if "host_enabled" in status:
        row["HostEnabled"] = status["host_enabled"]
    return row


def cmd_get_service(g: Globals, args: dict[str, Any]) -> int:
    listing = {r["name"]: r for r in g.client().call("services")}
    rows = [_service(spec, listing[spec.guest_name])
            for spec in match_guest_names(args["Name"] or ["vm*"])
            if listing.get(spec.guest_name, {}).get("state", "absent") != "absent"]
    if args["json"]:
        print_json(rows)
        return 0
    print(format_table([Column("Status", 8), Column("Name", 18), Column("DisplayName", 38)],
                       [(r["Status"], r["Name"], r["DisplayName"]) for r in rows]))
    return 0


def _one_service(g: Globals, args: dict[str, Any], op: str, **extra: Any) -> int:
    results = [_service(spec, g.client().call(op, name=spec.guest_name, **extra))
               for spec in match_guest_names(args["Name"])]
    if args["json"]:
        print_json(results)
    return 0


def cmd_start_service(g: Globals, args: dict[str, Any]) -> int:
    return _one_service(g, args, "start")


def cmd_stop_service(g: Globals, args: dict[str, Any]) -> int:
    return _one_service(g, args, "stop")


def cmd_set_service(g: Globals, args: dict[str, Any]) -> int:
    return _one_service(g, args, "set-startup", startup=args["StartupType"].lower())


def cmd_version(g: Globals, args: dict[str, Any]) -> int:
    if args["json"]:
        print(json.dumps({"IntegrationServicesVersion": vmis.__version__}))
        return 0
    # The shape of the article's `REG QUERY ... /v IntegrationServicesVersion`.
    print("\nHKEY_LOCAL_MACHINE\\Software\\Microsoft\\Virtual Machine\\Auto")
    print(f"    IntegrationServicesVersion    REG_SZ    {vmis.__version__}\n")
    return 0


def cmd_install(g: Globals, args: dict[str, Any]) -> int:
    import shutil
    import subprocess
    from pathlib import Path

    from vmis.packaging.bundle import bundle_bytes
    from vmis.packaging.install import install_agent

    # Installing from the setup disk runs this from vmis-guest.pyz: install
    # that very file; from a source tree, build the bundle first.
    archive = Path(vmis.__file__).parent.parent
    bundle = archive.read_bytes() if archive.is_file() else bundle_bytes()
    root = Path(args["Root"] or g.root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory")
    previous = (root / "usr/lib/vmis/VERSION")
    before = previous.read_text().strip() if previous.is_file() else None
    install_agent(root, bundle)
    restarted = False
    if root == Path("/") and not args["NoRestart"] and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
        code = subprocess.run(["systemctl", "restart", "vmis-guest.service"], check=False)
        restarted = code.returncode == 0
    result = {"Root": str(root), "Installed": vmis.__version__, "Previous": before,
              "Restarted": restarted}
    if args["json"]:
        print(json.dumps(result))
    else:
        verb = f"upgraded from {before} to" if before else "installed"
        print(f"vmis guest agent {verb} {vmis.__version__} in {root}"
              f"{'; vmis-guest.service restarted' if restarted else ''}")
    return 0


def cmd_hyperv(g: Globals, args: dict[str, Any]) -> int:
    from vmis.hyperv.cli import main

    return main(args["args"])


def cmd_diagnose(g: Globals, args: dict[str, Any]) -> int:
    from pathlib import Path

    from vmis.guest.diagnose import main

    return main(args["args"], root=Path(g.root))


JSON = Param("json", "switch", help="print JSON for scripts")
NAME = Param("Name", "list", required=True, position=0, help="guest service names, wildcards ok")

COMMANDS: tuple[Command, ...] = (
    Command("run", "Run the guest agent (as the systemd service does).", (
        Param("Channel", help="override [agent] channel, e.g. unix:/run/vmis/channel.sock"),
        Param("Adapters", choices=("real", "fake"), help="fake: lab adapters"),
        Param("LogLevel", choices=("debug", "info", "warning", "error")),
        Param("Offer", help="offer only these services/versions: heartbeat=1.0,kvp"),
    ), cmd_run),
    Command("Get-Service", "List the integration services in this guest.", (
        Param("Name", "list", position=0, help="names or wildcards (default vm*)"), JSON,
    ), cmd_get_service, aliases=("services", "gsv")),
    Command("Start-Service", "Start a guest service.", (NAME, JSON), cmd_start_service,
            aliases=("start", "sasv")),
    Command("Stop-Service", "Stop a guest service.", (NAME, JSON), cmd_stop_service,
            aliases=("stop", "spsv")),
    Command("Set-Service", "Change a guest service's startup type.", (
        NAME, Param("StartupType", required=True, position=1,
                    choices=("Automatic", "Manual", "Disabled")), JSON,
    ), cmd_set_service, aliases=("set-startup",)),
    Command("Get-IntegrationServicesVersion", "Print the integration services version.",
            (JSON,), cmd_version, aliases=("version",)),
    Command("install", "Install or upgrade this agent (from the setup disk), keeping config.", (
        Param("Root", help="install into a guest filesystem mounted here (default /)"),
        Param("NoRestart", "switch", help="do not restart vmis-guest.service"), JSON,
    ), cmd_install),
    Command("hyperv", "Hyper-V daemons: hyperv kvp|vss|fcopy [options] (see --help there).",
            (), cmd_hyperv, rest="args", raw=True),
    Command("diagnose", "Check what integration drivers, daemons and agents this guest has.",
            (), cmd_diagnose, rest="args", raw=True),
)


def _all_commands() -> tuple[Command, ...]:
    from vmis.cli.guest_commands import SERVICE_COMMANDS

    return COMMANDS + SERVICE_COMMANDS


def _help() -> str:
    lines = [f"vmis-guest {vmis.__version__}: the vmis guest agent and tools", "",
             "usage: vmis-guest [--root DIR] [--config FILE] COMMAND [parameters]", "",
             "commands:"]
    lines += [f"  {c.name:32} {c.summary}" for c in _all_commands()]
    lines += ["", "Run 'vmis-guest COMMAND -?' for a command's parameters.",
              f"Guest services: {', '.join(s.guest_name for s in CATALOG)}",
              f"Startup types: {', '.join(t.title for t in StartupType)}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vmis-guest``; returns the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    return run_main(lambda: _run(words), lambda exc: "vmis-guest", words)


def _run(words: list[str]) -> int:
    root = os.environ.get("VMIS_GUEST_ROOT", "/")
    config_path: str | None = None
    while words and words[0] in ("--root", "--config"):
        if len(words) < 2:
            raise UsageError(f"{words[0]} needs a value")
        if words[0] == "--root":
            root = words[1]
        else:
            config_path = words[1]
        words = words[2:]
    if not words or words[0] in ("-h", "--help", "-?", "help"):
        print(_help())
        return 0 if words else 2
    if words[0] == "--version":
        print(vmis.__version__)
        return 0
    cmd, rest = find_verb(_all_commands(), words)
    g = Globals(root, config_path or os.path.join(root, CONFIG_PATH.lstrip("/")))
    return run_command(cmd, rest, lambda args: cmd.run(g, args))


def console() -> NoReturn:
    """The ``vmis-guest`` console script: :func:`main`, then :func:`~vmis.psargs.exit_now`."""
    exit_now(main())


if __name__ == "__main__":
    console()
