"""``vmis Get-VMIntegrationServicesUpdatePath``: the update advisor on the command line.

A local command (no host manager needed): it answers from the data in
``vmis/data/update_paths.toml`` through :mod:`vmis.advisor`::

    vmis Get-VMIntegrationServicesUpdatePath -HostOS "Windows Server 2012 R2" -GuestOS "Windows 7"
    vmis update-path 2016 '*'              # every guest of that host, as a table
    vmis update-path '*' 'Windows 7'       # that guest on every host
    vmis update-path vmis Debian --json

One answer prints in Format-List shape, several in Format-Table shape;
``--json`` prints an object or a list of objects with the same properties.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmis.cli.table import Column, format_list, format_table
from vmis.psargs import Command, Param, print_json

if TYPE_CHECKING:
    from vmis.advisor.answers import Advice

__all__ = ["UPDATE_PATH_COMMANDS", "format_advice"]

#: Format-List wraps Notes to this many columns (PowerShell wraps at the
#: console's width; a fixed width keeps the output the same in pipes and tests)
WIDTH = 100

_LIST_KEYS = ("HostOS", "GuestOS", "Mechanism", "Requires", "Fallback", "Support", "Notes",
              "Source")


def format_advice(advice: Advice) -> str:
    """One answer as Format-List prints it, Notes wrapped under their column."""
    import textwrap

    indent = " " * (max(map(len, _LIST_KEYS)) + 3)
    lines = [line for note in advice.notes
             for line in textwrap.wrap(note, WIDTH - len(indent), break_long_words=False,
                                       break_on_hyphens=False)]
    values = (advice.host_os, advice.guest_os, advice.mechanism, ", ".join(advice.requires),
              advice.fallback, str(advice.support), f"\n{indent}".join(lines),
              advice.source.text)
    return format_list([list(zip(_LIST_KEYS, values, strict=True))])


def _format_many(answers: list[Advice]) -> str:
    return format_table(
        [Column("HostOS"), Column("GuestOS"), Column("Mechanism"), Column("Support"),
         Column("Notes")],
        [(a.host_os, a.guest_os, a.mechanism, a.support, a.note) for a in answers])


def cmd_update_path(args: dict[str, Any]) -> int:
    """Answer one host/guest pair, or list the pairs the wildcards match."""
    from vmis.advisor.advisor import default_advisor  # its data only for this command

    host, guest = args["HostOS"], args["GuestOS"]
    advisor = default_advisor()
    if "*" in host + guest or "?" in host + guest:
        answers = advisor.update_paths(host, guest)
        if args["json"]:
            print_json([a.to_json() for a in answers])
        else:
            print(_format_many(answers))
        return 0
    advice = advisor.update_path(host, guest)
    if args["json"]:
        print_json(advice.to_json())
    else:
        print(format_advice(advice))
    return 0


UPDATE_PATH_COMMANDS: tuple[Command, ...] = (
    Command(
        "Get-VMIntegrationServicesUpdatePath",
        "Which mechanism keeps a guest's integration services up to date on a host.",
        (
            Param("HostOS", position=0, default="*",
                  help='host OS: "Windows Server 2012 R2", "2016", "win 8.1", "vmis"; '
                       'wildcards allowed (default *)'),
            Param("GuestOS", position=1, default="*",
                  help='guest OS: "Windows 7", "Vista SP2", "Ubuntu 22.04", "vmis"; '
                       'wildcards allowed (default *)'),
            Param("json", "switch", help="print JSON for scripts"),
        ),
        cmd_update_path,
        aliases=("update-path",),
        local=True,
        examples=(
            'vmis Get-VMIntegrationServicesUpdatePath -HostOS "Windows Server 2012 R2" '
            '-GuestOS "Windows 7"',
            "vmis update-path 2016 '*'",
            "vmis update-path '*' vmis --json",
        ),
    ),
)
