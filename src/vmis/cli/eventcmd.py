"""``vmis Get-VMEvent``: the host manager's event stream (docs/events.md §4).

Without ``-Wait`` it prints the events the manager keeps, newest last, as a
table; with ``-Wait`` it prints them, then follows the stream live until
Ctrl-C. A dropped connection is opened again after the last event seen (its
id), which the manager resumes from, even across a restart of the manager;
the command says so on stderr. ``--json`` prints one JSON object per line,
each an event as the API gives it.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

from vmis.api.client import ApiClient
from vmis.cli.table import Column, format_table
from vmis.errors import ChannelClosed, ConnectError
from vmis.psargs import Command, Param

__all__ = ["EVENT_COMMANDS"]

#: the members every event has; the table's Details column shows the others
STANDARD = ("Id", "Type", "Time", "VMName", "VMId")
#: fixed widths of the live table's columns (its rows are printed as they come)
LIVE = (Column("Id", 16), Column("Time", 23), Column("Type", 10), Column("VMName", 15),
        Column("Details"))
#: reconnect delays: from the first to the longest, seconds
FIRST_DELAY, LONGEST_DELAY = 0.2, 5.0


def _value(value: Any) -> str:
    text = str(value)
    if isinstance(value, str) and (not value or any(c.isspace() or c == "=" for c in value)):
        return json.dumps(value)
    return text


def details(event: dict[str, Any]) -> str:
    """What changed, as ``Key=Value`` pairs (empty members left out)."""
    return " ".join(f"{k}={_value(v)}" for k, v in event.items()
                    if k not in STANDARD and v is not None and v != "")


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _row(event: dict[str, Any]) -> tuple[object, ...]:
    return (event.get("Id"), _time(float(event.get("Time", 0))), event.get("Type"),
            event.get("VMName"), details(event))


def _notice(text: str, as_json: bool) -> None:
    """A WARNING line on stderr; under --json a JSON object (stderr holds only JSON)."""
    if as_json:
        print(json.dumps({"Warning": text}), file=sys.stderr, flush=True)
    else:
        print(f"WARNING: {text}", file=sys.stderr, flush=True)


class _Printer:
    def __init__(self, as_json: bool, live: bool) -> None:
        self.as_json = as_json
        self.live = live
        self.header = False

    def table(self, events: list[dict[str, Any]]) -> None:
        if self.as_json or self.live:
            for event in events:
                self.one(event)
        elif events:
            print(format_table([Column(c.header) for c in LIVE], [_row(e) for e in events]))

    def one(self, event: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(event), flush=True)
            return
        if not self.header:
            self.header = True
            print(format_table(LIVE, []), flush=True)
        print(format_table(LIVE, [_row(event)]).split("\n", 2)[2], flush=True)
        if event.get("Type") == "dropped":
            _notice(f"{event.get('Dropped')} events were lost (the stream fell behind, or the "
                    "manager no longer keeps them)", False)


def _follow(api: ApiClient, params: dict[str, Any], after: int, out: _Printer) -> int:
    """Follow the stream after event *after* until Ctrl-C, reconnecting when it drops."""
    last = after
    dropped = False
    delay = FIRST_DELAY

    def opened() -> None:
        nonlocal dropped, delay
        if dropped:
            _notice(f"reconnected; resuming after event {last}", out.as_json)
            dropped, delay = False, FIRST_DELAY

    while True:
        try:
            for event in api.sse("/events", {**params, "after": last}, opened=opened):
                if event.id is not None:
                    last = int(event.id)
                out.one(event.json())
            reason = "the host manager ended the event stream"
        except ChannelClosed as exc:
            reason = str(exc)
        except ConnectError as exc:
            if not dropped and last == after:
                raise  # not running at all: the one-line error, as every command
            reason = str(exc)
        if not dropped:
            _notice(f"{reason}; reconnecting, to resume after event {last}", out.as_json)
            dropped = True
        time.sleep(delay)
        delay = min(delay * 2, LONGEST_DELAY)


def cmd_get_event(api: ApiClient, args: dict[str, Any]) -> int:
    params: dict[str, Any] = {"vm": args["VMName"] or None,
                              "type": ",".join(args["Type"]) if args["Type"] else None}
    answer = api.call("GET", "/events/recent", params={
        **params, "after": args["After"], "newest": args["Newest"]})
    out = _Printer(args["json"], live=args["Wait"])
    out.table(answer["Events"])
    if args["Wait"]:
        return _follow(api, params, answer["LastId"], out)
    return 0


EVENT_COMMANDS: tuple[Command, ...] = (
    Command("Get-VMEvent", "Show what changed on the host manager: the kept events, or live "
                           "with -Wait.", (
        Param("VMName", "list", position=0, aliases=("VM", "Name"),
              help="only events of these VMs; wildcards allowed"),
        Param("Type", "list", help="only these types: host, vm-added, vm-removed, heartbeat, "
                                   "service, settings, kvp, copy, checkpoint, update"),
        Param("Wait", "switch", help="then follow new events as they happen, until Ctrl-C"),
        Param("Newest", "int", help="only the newest N of the kept events"),
        Param("After", "int", help="only events after this id (resume where a script left)"),
        Param("json", "switch", help="one JSON object per event, one per line"),
    ), cmd_get_event, aliases=("events",), examples=(
        "vmis Get-VMEvent -VMName DemoVM -Newest 20",
        "vmis Get-VMEvent -Type service,heartbeat -Wait",
        "vmis Get-VMEvent -Wait --json",
    )),
)
