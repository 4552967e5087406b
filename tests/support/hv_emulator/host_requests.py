"""The host's side of the IC messages: its requests, and how it reads the answers.

The emulators differ only in how a packet travels (:class:`~support.hv_emulator.kernel.
KernelEmulator` through the driver, :class:`~support.hv_emulator.uio_host.UioHostEmulator`
through the rings): each implements :meth:`HostRequests.packet` and
:meth:`HostRequests.host_request`, and gets the host's requests of its
services from the classes here. Every helper returns the status the host
would see and decodes the payload.
"""

from __future__ import annotations

import abc
import struct
from dataclasses import dataclass

from vmis.hyperv.constants import FcopyOp, HResult, IcMsgType, KvpOp, RegType, VssOp
from vmis.hyperv.messages import (
    DATA_FRAGMENT,
    FCOPY_START,
    IC_HEADERS_SIZE,
    KVP_IPADDR_VALUE,
    MAX_ADAPTER_ID_SIZE,
    MAX_GATEWAY_SIZE,
    MAX_IP_ADDR_SIZE,
    NEGOTIATE_HDR,
    W_MAX_PATH,
    FcopyData,
    IcHeader,
    kvp_message,
)

__all__ = [
    "FcopyRequests",
    "HostIpInfo",
    "HostRequests",
    "HostResponse",
    "KvpRequests",
    "VssRequests",
]

_P = IC_HEADERS_SIZE  # payload offset in a packet


@dataclass(frozen=True, slots=True)
class HostResponse:
    """The packet the host receives back."""

    header: IcHeader
    #: the whole packet (headers and payload)
    packet: bytes

    @property
    def status(self) -> int:
        """``icmsg_hdr.status``."""
        return self.header.status

    @property
    def payload(self) -> bytes:
        """The bytes after the 28 header bytes."""
        return self.packet[_P:]


@dataclass(frozen=True, slots=True)
class HostIpInfo:
    """The host's view of a GET_IP_INFO answer (decoded from UTF-16LE)."""

    adapter_id: str
    addr_family: int
    dhcp_enabled: int
    ip_addr: str
    sub_net: str
    gate_way: str
    dns_addr: str


def _utf16(text: str, units: int) -> bytes:
    """``text`` as a NUL-padded UTF-16LE field of ``units`` code units."""
    raw = text.encode("utf-16-le")[: 2 * units]
    return raw.ljust(2 * units, b"\0")


def _host_string(text: str, units: int) -> bytes:
    """``text`` as the host puts it in a ``units``-code-unit field: UTF-16LE,
    cut to fit with its NUL (the host never overruns a field)."""
    return text.encode("utf-16-le")[: 2 * (units - 1)] + b"\0\0"


def _from_utf16(field: bytes) -> str:
    for i in range(0, len(field) - 1, 2):
        if field[i : i + 2] == b"\0\0":
            field = field[:i]
            break
    return field.decode("utf-16-le", "replace")


class HostRequests(abc.ABC):
    """The host's requests over some transport: framing, delivery, version negotiation."""

    @abc.abstractmethod
    def packet(self, payload: bytes, msgtype: int | None = None,
               version: tuple[int, int] | None = None) -> bytes:
        """Frame ``payload`` as the host does."""

    @abc.abstractmethod
    def host_request(self, packet: bytes) -> HostResponse:
        """Deliver one host packet; return the answer."""

    def negotiate(self, framework: list[tuple[int, int]],
                  service: list[tuple[int, int]]) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """Host version negotiation: the versions chosen, or ``None`` if none fit."""
        payload = NEGOTIATE_HDR.pack(len(framework), len(service), 0) + b"".join(
            struct.pack("<HH", *v) for v in framework + service
        )
        r = self.host_request(self.packet(payload, msgtype=IcMsgType.NEGOTIATE))
        fw_count, srv_count = struct.unpack_from("<HH", r.payload)
        if (fw_count, srv_count) != (1, 1):
            return None
        a, b, c, d = struct.unpack_from("<HHHH", r.payload, 8)
        return (a, b), (c, d)


class FcopyRequests(HostRequests):
    """Host requests of the file-copy service (Copy-VMFile)."""

    def fcopy_start(self, file_name: str, path_name: str, flags: int = 0,
                    file_size: int = 0) -> int:
        """Host START_FILE_COPY: the status."""
        payload = FCOPY_START.pack(FcopyOp.START_FILE_COPY, b"", b"",
                                   _utf16(file_name, W_MAX_PATH), _utf16(path_name, W_MAX_PATH),
                                   flags, file_size)
        return self.host_request(self.packet(payload)).status

    def fcopy_write(self, offset: int, data: bytes) -> int:
        """Host WRITE_TO_FILE of at most 6 KiB: the status."""
        return self.host_request(self.packet(FcopyData(offset, data).pack())).status

    def fcopy_complete(self) -> int:
        """Host COMPLETE_FCOPY: the status."""
        return self.host_request(self.packet(struct.pack("<I32s", FcopyOp.COMPLETE_FCOPY,
                                                         b""))).status

    def fcopy_cancel(self) -> int:
        """Host CANCEL_FCOPY: the status."""
        return self.host_request(self.packet(struct.pack("<I32s", FcopyOp.CANCEL_FCOPY,
                                                         b""))).status

    def copy_file(self, data: bytes, file_name: str, path_name: str, flags: int = 0) -> int:
        """A whole ``Copy-VMFile``: START, WRITE per 6 KiB, COMPLETE.

        :return: the first non-OK status, or HV_S_OK.
        """
        status = self.fcopy_start(file_name, path_name, flags, len(data))
        if status != HResult.HV_S_OK:
            return status
        for offset in range(0, len(data), DATA_FRAGMENT):
            status = self.fcopy_write(offset, data[offset : offset + DATA_FRAGMENT])
            if status != HResult.HV_S_OK:
                self.fcopy_cancel()
                return status
        return self.fcopy_complete()


class KvpRequests(HostRequests):
    """Host requests of the Data Exchange (KVP) service."""

    def _kvp_packet(self, op: int, pool: int, body: bytes) -> bytes:
        return self.packet(kvp_message(op, pool, body))

    def kvp_set(self, pool: int, key: str, value: str | int,
                value_type: int | None = None) -> int:
        """Host SET; ``value`` as REG_SZ, or an int as REG_U32 / REG_U64.

        :return: the status the host sees.
        """
        if value_type is None:
            value_type = RegType.REG_SZ if isinstance(value, str) else RegType.REG_U32
        k = _host_string(key, 256)
        if value_type == RegType.REG_SZ:
            v = _host_string(str(value), 1024)
        elif value_type == RegType.REG_U32:
            v = struct.pack("<I", int(value))
        else:
            v = struct.pack("<Q", int(value))
        body = struct.pack("<III", value_type, len(k), len(v)) + k.ljust(512, b"\0") + v
        return self.host_request(self._kvp_packet(KvpOp.SET, pool, body)).status

    def kvp_get(self, pool: int, key: str) -> tuple[int, str]:
        """Host GET: status and the value (UTF-16 decoded)."""
        k = _host_string(key, 256)
        body = struct.pack("<III", RegType.REG_SZ, len(k), 0) + k
        r = self.host_request(self._kvp_packet(KvpOp.GET, pool, body))
        return r.status, _from_utf16(r.payload[4 + 524 : 4 + 524 + 2048])

    def kvp_delete(self, pool: int, key: str) -> int:
        """Host DELETE: the status."""
        k = _host_string(key, 256)
        body = struct.pack("<I", len(k)) + k
        return self.host_request(self._kvp_packet(KvpOp.DELETE, pool, body)).status

    def kvp_enumerate(self, pool: int, index: int) -> tuple[int, tuple[str, str] | None]:
        """Host ENUMERATE of one index: status and ``(key, value)`` on success."""
        r = self.host_request(self._kvp_packet(KvpOp.ENUMERATE, pool, struct.pack("<I", index)))
        if r.status != HResult.HV_S_OK:
            return r.status, None
        data = r.payload[8:]
        return r.status, (_from_utf16(data[12:524]), _from_utf16(data[524:2572]))

    def kvp_enumerate_all(self, pool: int) -> tuple[int, list[tuple[str, str]]]:
        """Enumerate as the host does: 0, 1, 2 ... until the first error.

        :return: the terminating status (HV_S_CONT normally) and the items.
        """
        items: list[tuple[str, str]] = []
        while True:
            status, item = self.kvp_enumerate(pool, len(items))
            if item is None:
                return status, items
            items.append(item)

    def kvp_get_ip_info(self, mac: str) -> tuple[int, HostIpInfo | None]:
        """Host GET_IP_INFO for the NIC with MAC ``mac``."""
        value = struct.pack("<256sBB", _utf16(mac, MAX_ADAPTER_ID_SIZE), 0, 0)
        payload = struct.pack("<BB", KvpOp.GET_IP_INFO, 0) + value.ljust(KVP_IPADDR_VALUE.size,
                                                                          b"\0")
        r = self.host_request(self.packet(payload))
        if r.status != HResult.HV_S_OK:
            return r.status, None
        v = r.payload[2:]
        return r.status, HostIpInfo(
            adapter_id=_from_utf16(v[0:256]), addr_family=v[256], dhcp_enabled=v[257],
            ip_addr=_from_utf16(v[258:2306]), sub_net=_from_utf16(v[2306:4354]),
            gate_way=_from_utf16(v[4354:5378]), dns_addr=_from_utf16(v[5378:7426]),
        )

    def kvp_set_ip_info(self, adapter_guid: str, *, dhcp: bool = False, ip_addr: str = "",
                        sub_net: str = "", gate_way: str = "", dns_addr: str = "",
                        addr_family: int = 0) -> int:
        """Host SET_IP_INFO for the NIC with VMBus GUID ``adapter_guid``."""
        value = KVP_IPADDR_VALUE.pack(
            _utf16(adapter_guid, MAX_ADAPTER_ID_SIZE), addr_family, int(dhcp),
            _utf16(ip_addr, MAX_IP_ADDR_SIZE), _utf16(sub_net, MAX_IP_ADDR_SIZE),
            _utf16(gate_way, MAX_GATEWAY_SIZE), _utf16(dns_addr, MAX_IP_ADDR_SIZE),
        )
        payload = struct.pack("<BB", KvpOp.SET_IP_INFO, 0) + value
        return self.host_request(self.packet(payload)).status


class VssRequests(HostRequests):
    """Host requests of the Backup (VSS) service."""

    def _vss(self, op: int) -> HostResponse:
        return self.host_request(self.packet(struct.pack("<B7sI", op, b"", 0)))

    def vss_freeze(self) -> int:
        """Host FREEZE: the status."""
        return self._vss(VssOp.FREEZE).status

    def vss_thaw(self) -> int:
        """Host THAW: the status."""
        return self._vss(VssOp.THAW).status

    def vss_hot_backup(self) -> tuple[int, int]:
        """Host HOT_BACKUP: the status and ``vss_cf.flags``."""
        r = self._vss(VssOp.HOT_BACKUP)
        return r.status, struct.unpack_from("<I", r.payload, 8)[0]

    def vss_get_dm_info(self) -> tuple[int, int]:
        """Host GET_DM_INFO (answered by the kernel): status and flags."""
        r = self._vss(VssOp.GET_DM_INFO)
        return r.status, struct.unpack_from("<I", r.payload, 8)[0]
