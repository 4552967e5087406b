"""What a qemu-ga guest offers of each integration service, from its guest-info.

guest-info lists every command the agent has and whether it is enabled:
``--block-rpcs`` (7.2) or a configuration's ``block-rpcs`` disable some, and
older agents lack some altogether. Each service needs certain commands
(:data:`NEEDS`):

- all of them enabled: the service runs (``running``, ``automatic``); what
  qemu-ga still cannot do for it is its offer's ``limit``, shown where the
  service is used (Get-VMKvp, Get-VMTimeSync, ...), the status staying OK;
- one of them blocked: the service is *disabled in the guest* (rule 6 of
  docs/hyperv.md §2), its limit naming the blocked commands, so
  Get-VMIntegrationService shows Error with that reason;
- one of them missing: the agent is too old for the service, which is then
  not offered at all (No Contact, docs/status.md), and
  :attr:`LinkHello.absent <vmis.services.link.LinkHello.absent>` names the
  qemu-ga release that added the command.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vmis.services.catalog import CATALOG
from vmis.services.link import ServiceOffer

__all__ = ["EXEC", "FILES", "NEEDS", "AgentInfo", "offers"]

#: the version of each vmis service the link speaks (it translates them all)
SERVICE_VERSION = (1, 0)

#: the file commands: copies, the boot id, the NTP daemon check
FILES = ("guest-file-open", "guest-file-close", "guest-file-read", "guest-file-write",
         "guest-file-seek", "guest-file-flush")
#: running programs: VM Session, and for copies directories, renames and hashes
EXEC = ("guest-exec", "guest-exec-status")

#: service key -> the qemu-ga commands it cannot do without
NEEDS: Mapping[str, tuple[str, ...]] = {
    "heartbeat": ("guest-ping",),
    "kvp": ("guest-get-osinfo",),
    "shutdown": ("guest-shutdown",),
    "timesync": ("guest-get-time", "guest-set-time"),
    "vss": ("guest-fsfreeze-status", "guest-fsfreeze-freeze", "guest-fsfreeze-thaw"),
    "fcopy": FILES,
    "vmsession": EXEC,
}
#: the Auto pool's other sources: each one blocked leaves its items out
KVP_SOURCES = ("guest-get-host-name", "guest-network-get-interfaces", "guest-get-fsinfo",
               "guest-get-users", "guest-get-timezone")

#: the qemu-ga release that added a command (qemu-ga's schema, "Since")
SINCE: Mapping[str, str] = {
    "guest-get-osinfo": "2.10", "guest-get-host-name": "2.10", "guest-get-users": "2.10",
    "guest-get-timezone": "2.10", "guest-exec": "2.5", "guest-exec-status": "2.5",
    "guest-get-fsinfo": "2.2", "guest-get-time": "1.5", "guest-set-time": "1.5",
    "guest-network-get-interfaces": "1.1",
}

#: what qemu-ga cannot do for a service even with every command enabled
_ALWAYS: Mapping[str, str] = {
    "heartbeat": "qemu-ga does not beat: the host sends guest-ping every heartbeat interval",
    "kvp": "qemu-ga has only the guest's facts (the Auto pool): no Guest, External or "
           "AutoExternal pool, so host writes are refused",
    "timesync": "qemu-ga cannot slew the clock: offsets of 128 ms or more are stepped "
                "(guest-set-time), smaller ones are left",
    "vss": "qemu-ga has no freeze hooks of vmis's and no watchdog of its own: the host "
           "thaws it when the freeze window ends",
    "vmsession": "guest-exec returns a command's output only after it exits, at most "
                 "16 MiB per stream, and takes stdin only when the command starts; signals "
                 "reach the process, not its group",
}
_NO_EXEC: Mapping[str, str] = {
    "fcopy": "without guest-exec, qemu-ga cannot make or list directories, rename a finished "
             "file into place or hash it: a copy writes its destination in place, is checked "
             "by SHA-256 on the host's side only and cannot resume; -Recurse, "
             "-CreateFullPath and copies out of directories need guest-exec",
    "shutdown": "without guest-exec the guest's logind block inhibitors cannot be checked: "
                "Stop-VM without -Force shuts down as with -Force",
}


@dataclass
class AgentInfo:
    """qemu-ga's version and its commands, from guest-info and guest-get-osinfo."""

    version: str
    #: command name -> enabled
    commands: dict[str, bool]
    #: guest-get-osinfo's answer ({} when it is blocked or absent)
    osinfo: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_guest_info(cls, info: Mapping[str, Any]) -> AgentInfo:
        commands = {str(c.get("name")): bool(c.get("enabled"))
                    for c in info.get("supported_commands") or [] if isinstance(c, dict)}
        return cls(str(info.get("version", "unknown")), commands)

    @property
    def label(self) -> str:
        """``qemu-ga 7.2.22``: what Get-VM shows as the guest's version."""
        return f"qemu-ga {self.version}"

    def enabled(self, *commands: str) -> bool:
        """Whether every command exists and is enabled."""
        return all(self.commands.get(c, False) for c in commands)

    @property
    def posix(self) -> bool:
        """A guest whose programs vmis may run for itself (coreutils): not Windows."""
        return self.osinfo.get("id") != "mswindows"

    @property
    def can_exec(self) -> bool:
        """Whether the link may run guest programs for its own work (copies, checks)."""
        return self.enabled(*EXEC) and self.posix

    def blocked(self, commands: tuple[str, ...]) -> list[str]:
        return [c for c in commands if c in self.commands and not self.commands[c]]

    def missing(self, commands: tuple[str, ...]) -> list[str]:
        return [c for c in commands if c not in self.commands]


def offers(agent: AgentInfo) -> tuple[dict[str, ServiceOffer], dict[str, str]]:
    """The link's offer of every service, and why the ones it lacks are absent."""
    result: dict[str, ServiceOffer] = {}
    absent: dict[str, str] = {}
    for spec in CATALOG:
        needs = NEEDS.get(spec.key)
        if needs is None:
            continue
        missing = agent.missing(needs)
        if missing:
            since = ", ".join(f"{c} (since qemu-ga {SINCE.get(c, '?')})" for c in missing)
            absent[spec.key] = f"{agent.label} has no {since}; update qemu-guest-agent in the guest"
            continue
        blocked = agent.blocked(needs)
        if blocked:
            result[spec.key] = ServiceOffer(
                SERVICE_VERSION, "stopped", "disabled",
                limit=f"{agent.label} blocks {', '.join(blocked)} (its --block-rpcs or "
                      "block-rpcs setting); the guest's administrator decides")
            continue
        result[spec.key] = ServiceOffer(SERVICE_VERSION, "running", "automatic",
                                        limit=_limit(spec.key, agent))
    return result, absent


def _limit(key: str, agent: AgentInfo) -> str:
    parts = [_ALWAYS[key]] if key in _ALWAYS else []
    if not agent.can_exec and key in _NO_EXEC:
        parts.append(_NO_EXEC[key])
    if key == "kvp":
        off = agent.blocked(KVP_SOURCES) + agent.missing(KVP_SOURCES)
        if off:
            parts.append(f"items from {', '.join(off)} are missing (blocked or too old)")
    return "; ".join(parts)
