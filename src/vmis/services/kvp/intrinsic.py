"""The intrinsic ("Auto", pool 2) items: facts the guest reports about itself.

One implementation for both KVP daemons of vmis: the Hyper-V daemon
(:mod:`vmis.hyperv.kvp`, which serves them to the kernel by ENUMERATE index)
and the vmis KVP service (:mod:`vmis.services.kvp.guest`, which pushes them to
the host). The keys and where each value comes from follow ``hv_kvp_daemon``
(docs/hyperv.md §7.3, docs/services/kvp.md §5):

========================== ==================================================
FullyQualifiedDomainName   ``gethostname`` then the canonical name of
                           ``getaddrinfo(AF_INET, AI_CANONNAME)``
IntegrationServicesVersion the kernel's string (Hyper-V daemon) or the vmis
                           version (vmis service)
NetworkAddressIPv4/IPv6    every non-loopback address, ``;``-separated
OSBuildNumber              uname release (``6.8.0-35-generic``)
OSName / OSMajorVersion    ``/etc/os-release`` NAME and VERSION_ID; else the
                           lines of ``SuSE-release`` / ``redhat-release``
OSMinorVersion             third line of a legacy release file, else empty
OSVersion                  uname release up to the first ``-``
ProcessorArchitecture      uname machine
========================== ==================================================

An agent running with a root directory other than ``/`` (``vmis lab guest``,
tests) reads the release files and the host name inside that root where they
exist, and the real machine's otherwise (:func:`release_root`,
:func:`fqdn_for`): the kernel (uname) and the network are the machine's. A
process lab VM's agent runs in the VM's sandbox with its root as ``/``
(vmis.lab.sandbox): its own host name, and no network but loopback.

Standard library only.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vmis.services.kvp.pool import VALUE_SIZE

__all__ = [
    "INTRINSIC_KEYS",
    "Address",
    "Intrinsics",
    "OsInfo",
    "default_fqdn",
    "fqdn_for",
    "join_within",
    "read_os_info",
    "release_root",
]

#: The Auto pool's keys by ENUMERATE index (facts 3.5).
INTRINSIC_KEYS = (
    "FullyQualifiedDomainName",
    "IntegrationServicesVersion",
    "NetworkAddressIPv4",
    "NetworkAddressIPv6",
    "OSBuildNumber",
    "OSName",
    "OSMajorVersion",
    "OSMinorVersion",
    "OSVersion",
    "ProcessorArchitecture",
)

_VERSION_UNKNOWN = "Unknown version"
_RELEASE_FILES = ("etc/os-release", "etc/SuSE-release", "etc/redhat-release")


class Address(Protocol):
    """One interface address (:class:`vmis.services.kvp.netinfo.IfAddress` is one)."""

    @property
    def family(self) -> int:
        """``AF_INET`` or ``AF_INET6``."""

    @property
    def address(self) -> str:
        """The address in text form."""

    @property
    def loopback(self) -> bool:
        """Whether its interface is a loopback interface."""


@dataclass
class OsInfo:
    """What the C daemon reads once at start: uname and the release files."""

    #: OSName
    name: str
    #: OSMajorVersion
    major: str
    #: OSMinorVersion
    minor: str
    #: OSBuildNumber (uname release)
    build: str
    #: OSVersion (uname release up to the first "-")
    version: str
    #: ProcessorArchitecture (uname machine)
    arch: str


def _os_release_value(raw: str) -> str:
    # The C daemon drops quotes and newlines and un-escapes backslashes.
    out = []
    it = iter(raw)
    for c in it:
        if c == "\\":
            nxt = next(it, None)
            if nxt is None:
                break
            out.append(nxt)
        elif c not in "'\"\n":
            out.append(c)
    return "".join(out)


def read_os_info(root: Path = Path("/"),
                 uname: Callable[[], os.uname_result] = os.uname) -> OsInfo:
    """Gather the OS intrinsic values as ``hv_kvp_daemon`` does.

    OSName / OSMajorVersion from ``<root>/etc/os-release`` (NAME, VERSION_ID);
    else the first three lines of ``SuSE-release`` / ``redhat-release``; else
    uname's sysname and empty versions.
    """
    u = uname()
    info = OsInfo(u.sysname, "", "", u.release, u.release.split("-")[0], u.machine)
    try:
        text = (root / "etc/os-release").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = None
    if text is not None:
        for line in text.splitlines():
            if line.startswith("#") or "=" not in line:
                continue
            name, value = line.split("=", 1)
            if name == "NAME":
                info.name = _os_release_value(value)
            elif name == "VERSION_ID":
                info.major = _os_release_value(value)
        return info
    for legacy in ("etc/SuSE-release", "etc/redhat-release"):
        try:
            lines = (root / legacy).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        if lines:
            info.name = lines[0]
        if len(lines) > 1:
            info.major = lines[1]
        if len(lines) > 2:
            info.minor = lines[2]
        break
    return info


def release_root(root: Path) -> Path:
    """Where to read the release files for an agent whose guest paths live in *root*.

    *root* itself when it holds any of them (a real guest, or a lab VM given
    its own ``/etc/os-release``), else ``/``: a lab VM without one reports
    the OS it really runs on rather than a bare "Linux".
    """
    if any((root / name).is_file() for name in _RELEASE_FILES):
        return root
    return Path("/")


def default_fqdn() -> str:
    """``gethostname`` then the canonical name from ``getaddrinfo(AF_INET, AI_CANONNAME)``.

    Where the C daemon reports the text of a lookup failure as the FQDN, this
    falls back to the plain host name.
    """
    host = socket.gethostname()
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM, 0,
                                   socket.AI_CANONNAME)
    except OSError:
        return host
    return next((i[3] for i in infos if i[3]), host)


def fqdn_for(root: Path) -> Callable[[], str]:
    """The FQDN source for an agent rooted at *root*.

    In a real guest (root ``/``) that is :func:`default_fqdn`: the kernel's
    host name is the truth there, whatever ``/etc/hostname`` says. A lab VM
    has no kernel of its own, so its ``<root>/etc/hostname`` names it when
    present; otherwise it reports the machine's name.
    """
    if root.resolve() == Path("/"):
        return default_fqdn
    hostname = root / "etc/hostname"

    def from_root() -> str:
        try:
            name = hostname.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            name = ""
        return name.splitlines()[0].strip() if name else default_fqdn()

    return from_root


def join_within(values: list[str], limit: int) -> str:
    """*values* joined with ``;``, as many whole ones as fit in *limit* bytes (an
    address list in one KVP value; hv_kvp_daemon stops at the field's end too)."""
    out = ""
    for v in values:
        candidate = v if not out else f"{out};{v}"
        if len(candidate.encode()) > limit:
            break
        out = candidate
    return out


class Intrinsics:
    """The Auto pool, synthesised by index.

    :param os_info: from :func:`read_os_info` (read once, as the C daemon does).
    :param addresses: the interface addresses (read on every request).
    :param fqdn: computes the FQDN; called once, on first use, so a slow
        resolver does not delay start-up.
    """

    def __init__(self, os_info: OsInfo, addresses: Callable[[], Sequence[Address]],
                 fqdn: Callable[[], str] = default_fqdn) -> None:
        self._os = os_info
        self._addresses = addresses
        self._fqdn_fn = fqdn
        self._fqdn: str | None = None
        #: IntegrationServicesVersion: the kernel's string once registered
        self.version = _VERSION_UNKNOWN

    def _read_addresses(self) -> Sequence[Address]:
        try:
            return self._addresses()
        except OSError:
            return []

    def _value(self, key: str, addresses: Callable[[], Sequence[Address]]) -> str:
        if key == "FullyQualifiedDomainName":
            if self._fqdn is None:
                self._fqdn = self._fqdn_fn()
            return self._fqdn
        if key in ("NetworkAddressIPv4", "NetworkAddressIPv6"):
            family = socket.AF_INET if key == "NetworkAddressIPv4" else socket.AF_INET6
            found = [a.address for a in addresses() if a.family == family and not a.loopback]
            return join_within(found, VALUE_SIZE - 1)
        return {
            "IntegrationServicesVersion": self.version,
            "OSBuildNumber": self._os.build,
            "OSName": self._os.name,
            "OSMajorVersion": self._os.major,
            "OSMinorVersion": self._os.minor,
            "OSVersion": self._os.version,
            "ProcessorArchitecture": self._os.arch,
        }[key]

    def item(self, index: int) -> tuple[str, str] | None:
        """Key and value at ``index``, or ``None`` past the last (9)."""
        if not 0 <= index < len(INTRINSIC_KEYS):
            return None
        key = INTRINSIC_KEYS[index]
        return key, self._value(key, self._read_addresses)

    def items(self) -> list[tuple[str, str]]:
        """Every key and value in index order, the addresses read once for both families."""
        addresses = self._read_addresses()
        return [(key, self._value(key, lambda: addresses)) for key in INTRINSIC_KEYS]
