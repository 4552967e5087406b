"""``vmis token add|list|remove`` and ``vmis Get-VMAuditLog``: the API's accounts (docs/api.md §2).

``token add`` prints the new secret alone on stdout, so a script can keep it
(``export VMIS_TOKEN=$(vmis token add ci -Role Operator)``); what it is goes
to stderr. The secret is shown this once: the manager keeps only its hash.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from vmis.api.client import ApiClient, api_path
from vmis.cli.table import Column, format_table
from vmis.errors import UsageError
from vmis.psargs import Command, Param, print_json

__all__ = ["ACCOUNT_COMMANDS", "parse_since"]

JSON = Param("json", "switch", help="print JSON for scripts")
ROLES = ("Reader", "Operator", "Administrator")
_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])", re.IGNORECASE)
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def cmd_token_add(api: ApiClient, args: dict[str, Any]) -> int:
    token = api.call("POST", "/tokens", json={"name": args["Name"], "role": args["Role"]})
    if args["json"]:
        print_json(token)
        return 0
    print(token["Token"])
    print(f"token {token['Name']!r} ({token['Role']}) made; its secret, above, is not shown "
          "again: give it to its user as $VMIS_TOKEN", file=sys.stderr)
    return 0


def cmd_token_list(api: ApiClient, args: dict[str, Any]) -> int:
    tokens = api.call("GET", "/tokens")
    if args["json"]:
        print_json(tokens)
        return 0
    print(format_table([Column("Name"), Column("Role"), Column("Created"), Column("CreatedBy")],
                       [(t["Name"], t["Role"], t["Created"][:19].replace("T", " "),
                         t["CreatedBy"]) for t in tokens]))
    return 0


def cmd_token_remove(api: ApiClient, args: dict[str, Any]) -> int:
    removed = [api.call("DELETE", api_path("tokens", name)) for name in args["Name"]]
    if args["json"]:
        print_json(removed)
    else:
        for token in removed:
            print(f"token {token['Name']!r} ({token['Role']}) removed: it is refused from now on")
    return 0


def parse_since(text: str) -> datetime:
    """-Since: an ISO 8601 date or time (local time unless it says its zone), or an age
    (``90m``, ``12h``, ``7d``).

    :raise UsageError: For anything else.
    """
    if match := _AGO.fullmatch(text.strip()):
        age = timedelta(**{_UNIT[match[2].lower()]: float(match[1])})
        return datetime.now(UTC) - age
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"Get-VMAuditLog: -Since takes a date or time (2026-12-01, "
                         f"'2026-12-01 14:30') or an age (90m, 12h, 7d), not {text!r}") \
            from None
    return when if when.tzinfo is not None else when.astimezone()


def cmd_audit(api: ApiClient, args: dict[str, Any]) -> int:
    params: dict[str, Any] = {"vm": args["VMName"], "account": args["User"],
                              "newest": args["Newest"]}
    if args["Since"]:
        params["since"] = parse_since(args["Since"]).isoformat()
    rows = api.call("GET", "/audit", params=params)
    if args["json"]:
        print_json(rows)
        return 0
    print(format_table(
        [Column("Time"), Column("Account"), Column("Action"), Column("VMName"),
         Column("Result"), Column("Detail", width=60)],
        [(_local(r["Time"]), r["Account"], f"{r['Method']} {r['Path']}",
          ",".join(r["VMName"]), f"{r['Result']} ({r['Status']})", r["Detail"])
         for r in rows]))
    return 0


def _local(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")


ACCOUNT_COMMANDS: tuple[Command, ...] = (
    Command("token add", "Make an API token with a role; prints its secret once.", (
        Param("Name", required=True, position=0, help="who or what the token is for"),
        Param("Role", required=True, choices=ROLES,
              help="Reader reads; Operator also changes services, KVP, power, copies, "
                   "checkpoints; Administrator also Invoke-Command, updates, tokens, VMs"),
        JSON,
    ), cmd_token_add, examples=("vmis token add monitoring -Role Reader",
                                "export VMIS_TOKEN=$(vmis token add ci -Role Operator)")),
    Command("token list", "List the API tokens (never their secrets).", (JSON,), cmd_token_list),
    Command("token remove", "Remove API tokens: their next request is refused.", (
        Param("Name", "list", required=True, position=0), JSON,
    ), cmd_token_remove),
    Command("Get-VMAuditLog", "Show who changed what, on which VM, when, and how it ended.", (
        Param("VMName", "list", position=0, aliases=("VM",),
              help="VM names; wildcards allowed"),
        Param("Since", help="a date or time (2026-12-01, '2026-12-01 14:30'), or an age "
                            "(90m, 12h, 7d)"),
        Param("User", "list", aliases=("Token", "Account"),
              help="token names, or local:USER for the manager's socket; wildcards allowed"),
        Param("Newest", "int", default=1000, help="at most this many, the newest first "
                                                  "(default 1000)"),
        JSON,
    ), cmd_audit, aliases=("audit",), examples=(
        "vmis Get-VMAuditLog -VMName DemoVM -Since 1d",
        "vmis Get-VMAuditLog -User ci --json",
    )),
)
