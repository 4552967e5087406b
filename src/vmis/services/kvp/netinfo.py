"""Interfaces, addresses and default gateways, read through rtnetlink.

The C KVP daemon uses ``getifaddrs(3)`` and runs ``ip route``; the standard
library has neither, but it has ``AF_NETLINK`` sockets, and an
``RTM_GETLINK`` / ``RTM_GETADDR`` / ``RTM_GETROUTE`` dump is what both of
those read underneath.  Only dumps (reads) are sent; nothing here changes the
network.

Both KVP daemons of vmis read the network through :class:`NetInfo`: the
intrinsic NetworkAddressIPv4/IPv6 items (:mod:`vmis.services.kvp.intrinsic`)
and the Hyper-V daemon's IP injection (:mod:`vmis.hyperv.ipconfig`). It lives
in the services layer so the guest agent can use it; ``vmis.hyperv.netinfo``
re-exports it. Tests give :class:`StaticNetInfo` fixed data instead.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

__all__ = ["IfAddress", "Interface", "NetInfo", "NetlinkInfo", "StaticNetInfo"]

_NLMSG_HDR = struct.Struct("=IHHII")
_RTATTR = struct.Struct("=HH")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")

_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_RTM_NEWLINK, _RTM_GETLINK = 16, 18
_RTM_NEWADDR, _RTM_GETADDR = 20, 22
_RTM_NEWROUTE, _RTM_GETROUTE = 24, 26
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_IFLA_ADDRESS, _IFLA_IFNAME = 1, 3
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_TABLE = 1, 4, 5, 15
_RT_TABLE_MAIN = 254
_IFF_LOOPBACK = 0x8


@dataclass(frozen=True, slots=True)
class Interface:
    """A network interface."""

    index: int
    name: str
    #: hardware address, upper-case, colon-separated ("" when none)
    mac: str
    #: whether IFF_LOOPBACK is set
    loopback: bool


@dataclass(frozen=True, slots=True)
class IfAddress:
    """One address of one interface."""

    ifname: str
    family: int
    address: str
    prefixlen: int
    loopback: bool = False


class NetInfo(Protocol):
    """What the KVP daemon needs to know about the network."""

    def interfaces(self) -> list[Interface]:
        """Every interface."""

    def addresses(self) -> list[IfAddress]:
        """Every IPv4 and IPv6 address, interfaces in index order."""

    def default_gateways(self, ifname: str, family: int) -> list[str]:
        """The gateways of default routes through ``ifname`` (main table)."""


def _attrs(data: bytes, offset: int, end: int) -> Iterator[tuple[int, bytes]]:
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            return
        yield kind, data[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3


def _dump(msg_type: int, payload: bytes) -> Iterator[tuple[int, bytes]]:
    """Send one dump request; yield ``(type, message)`` until NLMSG_DONE."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        seq = 1
        header = _NLMSG_HDR.pack(
            _NLMSG_HDR.size + len(payload), msg_type, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0
        )
        sock.sendall(header + payload)
        while True:
            data = sock.recv(65536)
            offset = 0
            while offset + _NLMSG_HDR.size <= len(data):
                length, kind, _, _, _ = _NLMSG_HDR.unpack_from(data, offset)
                if length < _NLMSG_HDR.size:
                    return
                if kind == _NLMSG_DONE:
                    return
                if kind == _NLMSG_ERROR:
                    code = struct.unpack_from("=i", data, offset + _NLMSG_HDR.size)[0]
                    raise OSError(-code, os.strerror(-code))
                yield kind, data[offset + _NLMSG_HDR.size : offset + length]
                offset += (length + 3) & ~3


class NetlinkInfo:
    """:class:`NetInfo` from the kernel, through rtnetlink dumps."""

    def interfaces(self) -> list[Interface]:
        """Every interface (``RTM_GETLINK``)."""
        result = []
        for kind, msg in _dump(_RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            if kind != _RTM_NEWLINK:
                continue
            _, _, index, flags, _ = _IFINFOMSG.unpack_from(msg)
            name, mac = "", ""
            for attr, value in _attrs(msg, _IFINFOMSG.size, len(msg)):
                if attr == _IFLA_IFNAME:
                    name = value.split(b"\0")[0].decode(errors="replace")
                elif attr == _IFLA_ADDRESS:
                    mac = ":".join(f"{b:02X}" for b in value)
            result.append(Interface(index, name, mac, bool(flags & _IFF_LOOPBACK)))
        return result

    def addresses(self) -> list[IfAddress]:
        """Every address (``RTM_GETADDR``), loopback marked."""
        links = {i.index: i for i in self.interfaces()}
        result = []
        for kind, msg in _dump(_RTM_GETADDR, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            if kind != _RTM_NEWADDR:
                continue
            family, prefixlen, _, _, index = _IFADDRMSG.unpack_from(msg)
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            found: dict[int, bytes] = dict(_attrs(msg, _IFADDRMSG.size, len(msg)))
            # IFA_LOCAL is the local end of a point-to-point link; IFA_ADDRESS the peer
            raw = found.get(_IFA_LOCAL) or found.get(_IFA_ADDRESS)
            if raw is None:
                continue
            link = links.get(index)
            result.append(
                IfAddress(
                    ifname=link.name if link else str(index),
                    family=family,
                    address=socket.inet_ntop(family, raw),
                    prefixlen=prefixlen,
                    loopback=bool(link and link.loopback),
                )
            )
        return result

    def default_gateways(self, ifname: str, family: int) -> list[str]:
        """Gateways of default routes via ``ifname`` (``RTM_GETROUTE``, main table)."""
        try:
            index = socket.if_nametoindex(ifname)
        except OSError:
            return []
        gateways = []
        for kind, msg in _dump(_RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
            if kind != _RTM_NEWROUTE:
                continue
            rfamily, dst_len, _, _, table, _, _, _, _ = _RTMSG.unpack_from(msg)
            attrs = dict(_attrs(msg, _RTMSG.size, len(msg)))
            if _RTA_TABLE in attrs:
                table = struct.unpack("=I", attrs[_RTA_TABLE])[0]
            if rfamily != family or dst_len != 0 or table != _RT_TABLE_MAIN:
                continue
            oif = attrs.get(_RTA_OIF)
            gateway = attrs.get(_RTA_GATEWAY)
            if oif is None or gateway is None or struct.unpack("=I", oif)[0] != index:
                continue
            gateways.append(socket.inet_ntop(family, gateway))
        return gateways


@dataclass
class StaticNetInfo:
    """:class:`NetInfo` from fixed data: for tests and the lab."""

    links: list[Interface]
    addrs: list[IfAddress]
    gateways: dict[tuple[str, int], list[str]]

    def interfaces(self) -> list[Interface]:
        """The fixed interfaces."""
        return list(self.links)

    def addresses(self) -> list[IfAddress]:
        """The fixed addresses."""
        return list(self.addrs)

    def default_gateways(self, ifname: str, family: int) -> list[str]:
        """The fixed gateways of ``ifname``."""
        return list(self.gateways.get((ifname, family), []))
