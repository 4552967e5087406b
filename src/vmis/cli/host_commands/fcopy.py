"""``vmis Copy-VMFile``, ``Get-VMFileCopy``, ``Stop-VMFileCopy``: copies between host and guest.

Hyper-V's parameters with Hyper-V's meaning (-CreateFullPath, -Force, a
destination that is a directory takes the source's name), plus
``-FileSource Guest`` (guest to host), ``-Recurse`` and what a tree's
symbolic links become. The host manager makes the copy; this command
resolves the host path against the current directory, starts the copy,
draws its progress on a terminal, and says what a tree copy skipped.
docs/services/fcopy.md §7.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from vmis.api.client import ApiClient, api_path
from vmis.cli.table import Column, format_table
from vmis.errors import ChannelClosed, ChannelError, ManagerApiError, UsageError
from vmis.psargs import Command, Param, print_json

__all__ = ["COMMANDS", "EXIT_SKIPPED"]

JSON = Param("json", "switch", help="print JSON for scripts")
#: the exit status of a copy that completed but left entries out (links,
#: special files): they were named on stderr (docs/services/fcopy.md §7)
EXIT_SKIPPED = 3


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class _Bar:
    """A rich progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.progress: Any = None
        self.task: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 DownloadColumn(binary_units=True), TransferSpeedColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True))
        self.task = self.progress.add_task(label, total=None)
        self.progress.start()

    def update(self, line: dict[str, Any]) -> None:
        if self.progress is None:
            return
        files = f" ({line['files']}/{line['files_total']} files)" \
            if line.get("files_total", 0) > 1 else ""
        self.progress.update(self.task, completed=line["bytes"], total=line["total"] or None,
                             description=f"{os.path.basename(line.get('file') or '')}{files}")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _absolute(path: str) -> str:
    """*path* against the current directory, keeping a trailing "/" (it means a directory)."""
    full = os.path.abspath(path)
    return full + "/" if path.endswith("/") and full != "/" else full


def cmd_copy(api: ApiClient, args: dict[str, Any]) -> int:
    source, destination, file_source = args["SourcePath"], args["DestinationPath"], \
        args["FileSource"]
    if file_source == "Host":
        source = _absolute(source)
        guest = destination
    else:
        destination = _absolute(destination)
        guest = source
    if not guest.startswith("/"):
        raise UsageError(f"Copy-VMFile: the guest path must be absolute: {guest!r}")
    if args["CopySymlinks"] and args["FollowSymlinks"]:
        raise UsageError("Copy-VMFile: -CopySymlinks and -FollowSymlinks exclude each other")
    links = "copy" if args["CopySymlinks"] else "follow" if args["FollowSymlinks"] else "skip"
    body = {"source": source, "destination": destination, "file_source": file_source,
            "create_full_path": args["CreateFullPath"], "force": args["Force"],
            "recurse": args["Recurse"], "links": links}
    bar = _Bar(sys.stderr.isatty() and not args["json"], os.path.basename(source))
    result: dict[str, Any] | None = None
    try:
        for line in api.stream("POST", api_path("vms", args["Name"], "copy") + "?stream=true",
                               json=body, timeout=None):
            if line.get("type") == "progress":
                bar.update(line)
            elif line.get("type") == "result":
                result = line
    except KeyboardInterrupt:
        bar.stop()
        print("Copy-VMFile: interrupted; the same command resumes the copy", file=sys.stderr)
        raise
    except ChannelClosed as exc:
        raise ChannelError(f"lost the host manager during the copy ({exc}); the same command "
                           "resumes it") from exc
    finally:
        bar.stop()
    if result is None:
        raise ManagerApiError("the host manager ended the copy without a result")
    result.pop("type", None)
    if args["json"]:
        print_json(result)
    elif sys.stderr.isatty():
        what = f"{result['Files']} files" if result["Files"] != 1 else "1 file"
        print(f"{what}, {_human(result['Bytes'])} -> {result['Destination']} in "
              f"{result['Seconds']:.2f} s ({_human(result['BytesPerSecond'])}/s)",
              file=sys.stderr)
    return _report_skipped(result.get("Skipped") or [])


def _report_skipped(skipped: list[dict[str, Any]]) -> int:
    """Name every entry a tree copy left out on stderr; the exit status."""
    for item in skipped:
        print(f"Copy-VMFile: skipped {item['Path']}: {item['Reason']}", file=sys.stderr)
    if not skipped:
        return 0
    links = any("symbolic link" in item["Reason"] for item in skipped)
    print(f"Copy-VMFile: {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} not copied"
          + ("; -CopySymlinks copies symbolic links as links, -FollowSymlinks what they "
             "point to" if links else ""), file=sys.stderr)
    return EXIT_SKIPPED


def _size(row: dict[str, Any]) -> str:
    done, size = row.get("Bytes"), row.get("Size")
    if done is None:
        return ""
    return f"{_human(done)}/{_human(size)}" if size else _human(done)


def cmd_get_copies(api: ApiClient, args: dict[str, Any]) -> int:
    rows = api.call("GET", "/copies", params={"vm": args["VMName"] or []})
    if args["json"]:
        print_json(rows)
        return 0
    if rows:
        print(format_table(
            [Column("VMName"), Column("Id"), Column("State"), Column("FileSource"),
             Column("Done"), Column("Path")],
            [(r["VMName"], r.get("Id"), r["State"], r.get("FileSource"), _size(r),
              r.get("Path") or r.get("Error", "")) for r in rows]))
    return 0


def cmd_stop_copies(api: ApiClient, args: dict[str, Any]) -> int:
    if not (args["Id"] or args["Path"] or args["All"]):
        raise UsageError("Stop-VMFileCopy: name copies with -Id or -Path, or -All")
    paths = [_absolute(p) if not p.startswith("/") else p for p in args["Path"] or []]
    result = api.call("POST", api_path("vms", args["VMName"], "copies", "stop"),
                      json={"id": [int(i) for i in args["Id"] or []], "path": paths,
                            "all": args["All"], "discard": args["Discard"]})
    if args["json"]:
        print_json(result)
    for path in result["Removed"]:
        print(f"removed {path}", file=sys.stderr)
    return 0


COMMANDS: tuple[Command, ...] = (
    Command("Copy-VMFile", "Copy a file (or a directory with -Recurse) between host and guest.", (
        Param("Name", required=True, position=0, aliases=("VMName",), help="the VM"),
        Param("SourcePath", required=True, position=1,
              help="file to copy: a host path (relative to here) with -FileSource Host, "
                   "an absolute guest path with -FileSource Guest"),
        Param("DestinationPath", required=True, position=2,
              help="where to: an absolute guest path, or a host path with -FileSource Guest; "
                   "an existing directory receives the file under its own name"),
        Param("FileSource", required=True, choices=("Host", "Guest"),
              help="Host: host to guest (Hyper-V's only direction); Guest: guest to host"),
        Param("CreateFullPath", "switch", help="create missing directories of the destination"),
        Param("Force", "switch", help="overwrite existing files"),
        Param("Recurse", "switch", help="copy a directory and everything in it"),
        Param("CopySymlinks", "switch", help="-Recurse: copy symbolic links as links "
                                             "(default: skip them, exit status 3)"),
        Param("FollowSymlinks", "switch", help="-Recurse: copy what symbolic links point to"),
        Param("json", "switch", help="print the result as JSON (bytes, files, seconds, "
                                     "throughput, SHA-256)"),
    ), cmd_copy, aliases=("cpvmf",), examples=(
        'vmis Copy-VMFile -Name DemoVM -SourcePath ./app.tar -DestinationPath /srv/ '
        '-FileSource Host -CreateFullPath',
        'vmis Copy-VMFile DemoVM /var/log/syslog ./logs/ -FileSource Guest -CreateFullPath',
        'vmis Copy-VMFile DemoVM ./site /srv/www -FileSource Host -Recurse -Force',
    )),
    Command("Get-VMFileCopy", "List copies: running, left open in the guest, partial files.", (
        Param("VMName", "list", position=0, aliases=("Name",), help="VMs (wildcards; all)"),
        JSON,
    ), cmd_get_copies, examples=('vmis Get-VMFileCopy -VMName DemoVM',)),
    Command("Stop-VMFileCopy", "Stop copies, close what the guest holds, remove partial files.", (
        Param("VMName", required=True, position=0, aliases=("Name",), help="the VM"),
        Param("Id", "list", help="running copies to stop (Get-VMFileCopy's Id)"),
        Param("Path", "list", help="destinations whose open copies and partial files go"),
        Param("All", "switch", help="every copy of the VM, and every partial file"),
        Param("Discard", "switch", help="also remove the stopped copies' partial files "
                                        "(default: kept, the same Copy-VMFile resumes)"),
        JSON,
    ), cmd_stop_copies, examples=(
        'vmis Stop-VMFileCopy DemoVM -Id 3',
        'vmis Stop-VMFileCopy DemoVM -Path /srv/big.iso -Discard',
        'vmis Stop-VMFileCopy DemoVM -All -Discard',
    )),
)
