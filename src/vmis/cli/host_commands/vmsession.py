"""``vmis Invoke-Command -VMName V -- CMD ARGS`` (alias ``exec``, ``icm``): VM Session.

The command's stdout and stderr arrive live on this process's stdout and
stderr, stdin is passed through, and the exit status is the remote
command's (128+n when signal n ended it). Ctrl-C cancels the remote command
(SIGINT to its process group, SIGKILL after the guest's grace time); a second
Ctrl-C kills it at once; a third gives up waiting. With ``--json`` the output
is kept instead and printed with the exit as one JSON object. See
docs/services/vmsession.md §8-9; the stream itself is
:mod:`vmis.cli.host_commands.vmsession_stream`, imported when a command runs.

Exit statuses of this command itself: 124 when -TimeoutSec ran out (as
timeout(1)), 255 when vmis failed (refused, no contact, ...; as ssh).
"""

from __future__ import annotations

import os
from typing import Any

from vmis.api.client import ApiClient
from vmis.errors import UsageError, VmisError
from vmis.psargs import Command, Param, print_json, report_error, usage

__all__ = ["COMMANDS"]

#: exit status when -TimeoutSec ran out, as timeout(1)
TIMEOUT_STATUS = 124
#: exit status when vmis itself failed, as ssh
FAILURE_STATUS = 255
#: why the guest killed a command, by the exit message's reason
_KILLED = {"host-lost": "the guest lost its session with the host",
           "stopped": "the VM Session service was stopped in the guest",
           "failed": "the guest failed to run it"}


def _login_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _start_message(args: dict[str, Any]) -> dict[str, Any]:
    """START's fields from the parameters (docs/services/vmsession.md §8).

    :raise UsageError: For a missing VM or command, or a malformed value.
    """
    if not args["VMName"]:
        raise UsageError("Invoke-Command: missing mandatory parameter -VMName.")
    argv = args["Command"]
    if not argv:
        raise UsageError("Invoke-Command: name the command to run after '--': "
                         "vmis Invoke-Command -VMName VM -- COMMAND ARGS...")
    env = {}
    for item in args["Environment"] or []:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UsageError(f"Invoke-Command: -Environment takes NAME=VALUE, not {item!r}")
        env[name] = value
    timeout = args["TimeoutSec"]
    if timeout is not None and timeout <= 0:
        raise UsageError("Invoke-Command: -TimeoutSec must be positive")
    keepalive = args["KeepAliveSec"]
    if not 0.05 <= keepalive <= 3600:
        raise UsageError("Invoke-Command: -KeepAliveSec must be between 0.05 and 3600")
    return {"type": "start", "argv": argv, "cwd": args["WorkingDirectory"], "env": env,
            "stdin": not args["NoStdin"], "timeout": timeout, "keepalive": keepalive,
            "requested_by": _login_name()}


def _status(vm: str, start: dict[str, Any], end: dict[str, Any]) -> tuple[int, str | None]:
    """This command's exit status after the manager's exit message, and what to say."""
    import signal

    reason = end.get("reason")
    status = int(end.get("status", FAILURE_STATUS))
    if end.get("broken_pipe"):
        return 128 + signal.SIGPIPE, None
    if reason == "timeout":
        return TIMEOUT_STATUS, (f"{vm}: the command ran out of time ({start['timeout']:g} s); "
                                "its process group was killed")
    if reason in _KILLED:
        ended = end.get("code") is not None or end.get("signal")
        return (status if ended else FAILURE_STATUS,
                f"{vm}: the command was killed: {_KILLED[str(reason)]}")
    return status, None


def _text(data: bytearray) -> str:
    # JSON holds text: bytes that are not UTF-8 become U+FFFD (without --json they pass as is)
    return bytes(data).decode("utf-8", errors="replace")


def cmd_invoke(api: ApiClient, args: dict[str, Any]) -> int:
    if args["Help"]:
        print(usage(INVOKE))
        return 0
    start = _start_message(args)
    vm = args["VMName"]
    collect: dict[int, bytearray] | None = {1: bytearray(), 2: bytearray()} \
        if args["json"] else None
    try:
        import asyncio

        from vmis.cli.host_commands.vmsession_stream import Invocation

        end = asyncio.run(Invocation(api, vm, start, collect).run())
    except VmisError as exc:
        report_error("Invoke-Command", exc, args["json"])
        return FAILURE_STATUS
    status, note = _status(vm, start, end)
    if collect is None:
        if note:
            report_error("Invoke-Command", note, False)
        return status
    print_json({
        "VMName": vm, "Command": start["argv"], "ExitCode": status,
        "Signal": end.get("signal"), "Reason": end.get("reason"),
        "DurationMs": end.get("duration_ms"), "Note": note,
        "Stdout": _text(collect[1]), "Stderr": _text(collect[2]),
    })
    return status


INVOKE = Command(
    "Invoke-Command", "Run a command in a VM's guest (VM Session): streams, exit status, Ctrl-C.",
    (
        # mandatory, but checked in cmd_invoke so that -? works without it
        Param("VMName", position=0, aliases=("VM",), help="the VM (mandatory)"),
        Param("TimeoutSec", "float",
              help="kill the remote process group after this many seconds (exit status 124)"),
        Param("WorkingDirectory", help="working directory in the guest (default: the user's "
                                       "home, else /)"),
        Param("Environment", "list", aliases=("Env",),
              help="NAME=VALUE variables for the command (no commas in values)"),
        Param("NoStdin", "switch", help="do not pass stdin; the command reads /dev/null"),
        Param("KeepAliveSec", "float", default=15.0,
              help="seconds between keepalives on a quiet stream to the manager (default 15)"),
        Param("json", "switch",
              help="keep the output and print it with the exit as one JSON object "
                   "(ExitCode, Stdout, Stderr, Reason ...)"),
        Param("Help", "switch", aliases=("?", "h"), help="show this help"),
    ),
    cmd_invoke, aliases=("exec", "icm"), rest="Command",
    examples=("vmis Invoke-Command -VMName DemoVM -- uptime",
              "vmis exec DemoVM -TimeoutSec 60 -- journalctl -n 20",
              "tar cf - dir | vmis exec DemoVM -- tar xf - -C /srv",
              "vmis exec DemoVM --json -NoStdin -- cat /etc/os-release"),
)

COMMANDS: tuple[Command, ...] = (INVOKE,)
