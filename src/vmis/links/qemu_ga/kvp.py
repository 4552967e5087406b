"""Key-Value Pair Exchange over qemu-ga: the Auto pool from qemu-ga's facts, no other pool.

qemu-ga keeps no key-value pools: there is nowhere in the guest for the host's
External pool (Set-VMKvp) or its AutoExternal facts, and no Guest pool for
guest software to write. What it has are facts about the guest, which are
what Hyper-V's Auto pool holds (docs/hyperv.md §7.3). While the host has
KVP enabled the link reads them every :data:`REFRESH` seconds and pushes the
Auto pool (a POOL notification, docs/services/kvp.md §2.3) whenever it
changed, so Get-VMKvp -Pool Auto shows them as for a vmis guest:

======================== ======================================================
FullyQualifiedDomainName guest-get-host-name
IntegrationServicesVersion ``qemu-ga`` and guest-info's version
NetworkAddressIPv4/IPv6  guest-network-get-interfaces, every non-loopback address
OSBuildNumber            guest-get-osinfo kernel-release (Windows: the build)
OSName                   os-release NAME (Windows: the product name)
OSMajorVersion/Minor     os-release VERSION_ID and empty (Windows: kernel-version)
OSVersion                kernel-release up to the first ``-`` (Windows: version.build)
ProcessorArchitecture    guest-get-osinfo machine
======================== ======================================================

and, beyond Hyper-V's ten, what qemu-ga adds: ``OSPrettyName``,
``TimeZone`` (guest-get-timezone), ``LoggedOnUsers`` (guest-get-users) and
``FileSystems`` (guest-get-fsinfo: mount point, type, used and total bytes).
A source qemu-ga blocks is left out (its items are missing). SET and DELETE
are refused with the reason (``unknown-op``), so a host write fails at once
and says why instead of waiting for a pool that will never exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from vmis.errors import ChannelError, ProtocolError, RemoteServiceError, RequestTimeout
from vmis.links.qemu_ga.translator import LinkContext, Translator
from vmis.protocol import Payload, Received, encode_json
from vmis.services.catalog import by_key
from vmis.services.kvp import KvpOp
from vmis.services.kvp.intrinsic import join_within
from vmis.services.kvp.pool import VALUE_SIZE, Pool

__all__ = ["REFRESH", "KvpTranslator", "auto_items"]

SPEC = by_key("kvp")
#: seconds between two reads of the guest's facts (the vmis agent's Auto cadence)
REFRESH = 10.0
#: the commands read for the Auto pool, in the order asked
SOURCES = ("guest-get-osinfo", "guest-get-host-name", "guest-network-get-interfaces",
           "guest-get-timezone", "guest-get-users", "guest-get-fsinfo")
_LIMIT = VALUE_SIZE - 1


def auto_items(label: str, facts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The Auto pool from qemu-ga's answers (*facts*: command -> its ``return``).

    :param label: the agent, ``qemu-ga 7.2.22`` (IntegrationServicesVersion).
    """
    items: list[tuple[str, str]] = []
    host = facts.get("guest-get-host-name")
    if isinstance(host, dict) and host.get("host-name"):
        items.append(("FullyQualifiedDomainName", str(host["host-name"])))
    items.append(("IntegrationServicesVersion", label))
    interfaces = facts.get("guest-network-get-interfaces")
    if isinstance(interfaces, list):
        v4, v6 = _addresses(interfaces)
        items += [("NetworkAddressIPv4", join_within(v4, _LIMIT)),
                  ("NetworkAddressIPv6", join_within(v6, _LIMIT))]
    osinfo = facts.get("guest-get-osinfo")
    if isinstance(osinfo, dict):
        items += _os_items(osinfo)
    items += _extra_items(facts)
    return [(k, v[:_LIMIT]) for k, v in items]


def _addresses(interfaces: list[Any]) -> tuple[list[str], list[str]]:
    v4: list[str] = []
    v6: list[str] = []
    for nic in interfaces:
        if not isinstance(nic, dict) or nic.get("name") == "lo":
            continue
        for address in nic.get("ip-addresses") or []:
            text = str(address.get("ip-address", ""))
            if not text or text.startswith("127.") or text == "::1":
                continue
            (v4 if address.get("ip-address-type") == "ipv4" else v6).append(text)
    return v4, v6


def _os_items(osinfo: Mapping[str, Any]) -> list[tuple[str, str]]:
    release = str(osinfo.get("kernel-release", ""))
    if osinfo.get("id") == "mswindows":
        # qemu-ga's Windows answer: kernel-version "10.0", kernel-release the build
        version = str(osinfo.get("kernel-version", ""))
        major, _, minor = version.partition(".")
        return [("OSBuildNumber", release),
                ("OSName", str(osinfo.get("pretty-name") or osinfo.get("name", ""))),
                ("OSMajorVersion", major), ("OSMinorVersion", minor),
                ("OSVersion", f"{version}.{release}" if version else release),
                ("ProcessorArchitecture", str(osinfo.get("machine", "")))]
    return [("OSBuildNumber", release),
            ("OSName", str(osinfo.get("name", ""))),
            ("OSMajorVersion", str(osinfo.get("version-id", ""))),
            ("OSMinorVersion", ""),
            ("OSVersion", release.split("-", maxsplit=1)[0]),
            ("ProcessorArchitecture", str(osinfo.get("machine", ""))),
            ("OSPrettyName", str(osinfo.get("pretty-name", "")))]


def _extra_items(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    zone = facts.get("guest-get-timezone")
    if isinstance(zone, dict) and isinstance(zone.get("offset"), int):
        hours, rest = divmod(abs(zone["offset"]), 3600)
        sign = "-" if zone["offset"] < 0 else "+"
        name = f"{zone['zone']} " if zone.get("zone") else ""
        items.append(("TimeZone", f"{name}(UTC{sign}{hours:02d}:{rest // 60:02d})"))
    users = facts.get("guest-get-users")
    if isinstance(users, list):
        names = sorted({str(u.get("user")) for u in users if isinstance(u, dict)})
        items.append(("LoggedOnUsers", join_within(names, _LIMIT)))
    filesystems = facts.get("guest-get-fsinfo")
    if isinstance(filesystems, list):
        described = []
        for fs in sorted((f for f in filesystems if isinstance(f, dict)),
                         key=lambda f: str(f.get("mountpoint"))):
            size = ""
            if isinstance(fs.get("used-bytes"), int) and isinstance(fs.get("total-bytes"), int):
                size = f" {fs['used-bytes']}/{fs['total-bytes']}"
            described.append(f"{fs.get('mountpoint')} {fs.get('type')}{size}")
        items.append(("FileSystems", join_within(described, _LIMIT)))
    return items


class KvpTranslator(Translator):
    """KVP: the Auto pool pushed while enabled; host writes refused with the reason."""

    spec = SPEC

    def __init__(self, link: LinkContext) -> None:
        super().__init__(link)
        self.ops = {KvpOp.SET: self._refuse, KvpOp.DELETE: self._refuse}
        self._task: asyncio.Task[Any] | None = None
        self._last: list[tuple[str, str]] | None = None

    async def _refuse(self, payload: Payload, timeout: float | None) -> Received:
        raise RemoteServiceError(
            "unknown-op", f"{self.link.agent.label} keeps no key-value pools: the External "
                          "and AutoExternal pools cannot be written in this guest (only the "
                          "guest's facts, the Auto pool, are reported)")

    def set_enabled(self, enabled: bool, settings: Mapping[str, Any]) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if enabled:
            self._last = None  # a (re)started service pushes its pool again
            self._task = self.link.spawn(self._refresh(), "qemu-ga kvp")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _refresh(self) -> None:
        while True:
            if not self.link.frozen:  # a frozen qemu-ga answers none of these
                try:
                    await self.push_once()
                except (ChannelError, ProtocolError) as exc:
                    self.link.log.debug("KVP: cannot read the guest's facts: %s", exc)
            await asyncio.sleep(REFRESH)

    async def push_once(self) -> None:
        """Read the facts now and push the Auto pool if it changed."""
        facts: dict[str, Any] = {}
        for command in SOURCES:
            if not self.link.agent.enabled(command):
                continue
            try:
                facts[command] = await self.link.call(command)
            except (RemoteServiceError, RequestTimeout) as exc:
                self.link.log.debug("KVP: %s failed: %s", command, exc)
        items = auto_items(self.link.agent.label, facts)
        if items != self._last:
            self._last = items
            self.link.to_host(SPEC.id, KvpOp.POOL, encode_json(
                {"pool": int(Pool.AUTO), "part": 0, "last": True,
                 "items": [list(i) for i in items]}))
