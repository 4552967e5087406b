"""The Hyper-V KVP daemon's request handler (``vmis.hyperv.kvp.KvpHandler.handle``).

Messages as the kernel passes them (7432-byte ``hv_kvp_msg``, or another
length), their operation, pool, sizes and fields from the input; pools in
a scratch directory, emptied after each input; the IP operations served by
the real IpConfig over a fixed NIC (a fake ``/sys/class/net``) with helper
scripts that only answer (nothing is configured on this machine).

May raise: RemoteProtocolError for a message that is not 7432 bytes (the
runner reopens the device). Checked: the reply is a whole message with a
known HRESULT in front, and the pools stay files of whole records.
"""

from __future__ import annotations

import functools
import logging
import shutil
import socket
import struct
from pathlib import Path

import atheris

from support.fuzz.scratch import scratch_dir
from vmis.errors import RemoteProtocolError
from vmis.hyperv.constants import HResult, KvpOp
from vmis.hyperv.ipconfig import HelperScripts, IpConfig
from vmis.hyperv.kvp import KvpHandler
from vmis.hyperv.messages import KVP_MSG_SIZE, KVP_VALUE, IpAddrValue, kvp_message
from vmis.services.kvp.intrinsic import Intrinsics, read_os_info
from vmis.services.kvp.netinfo import IfAddress, Interface, StaticNetInfo
from vmis.services.kvp.pool import RECORD_SIZE, KvpPools

_NET = StaticNetInfo(
    links=[Interface(2, "eth0", "00:15:5D:01:02:03", False)],
    addrs=[IfAddress("eth0", socket.AF_INET, "10.0.0.5", 24),
           IfAddress("eth0", socket.AF_INET6, "fd00::5", 64)],
    gateways={("eth0", socket.AF_INET): ["10.0.0.1"]},
)
_MAC = "00:15:5D:01:02:03"
_GUID = "{f5bee29c-1741-4aad-a4c2-8fdedb46dcc2}"
_CODES = {int(c) for c in HResult}


class _Scripts(HelperScripts):
    """The helper scripts' answers without running them (they would configure this machine)."""

    def dhcp_enabled(self, ifname: str) -> bool:
        return False

    def dns_servers(self, ifname: str) -> list[str]:
        return ["10.0.0.53"]

    def set_ifconfig(self, ifcfg: Path, nmconnection: Path) -> tuple[int, str]:
        return 0, ""


@functools.cache
def setup() -> tuple[KvpHandler, Path]:
    """The handler, and the directory of its pools."""
    base = scratch_dir("hv-kvp")
    root = base / "root"
    nic = root / "sys/class/net/eth0"
    (nic / "device").mkdir(parents=True)
    (nic / "address").write_text(_MAC.lower() + "\n")
    (nic / "device/device_id").write_text(_GUID + "\n")
    intrinsics = Intrinsics(read_os_info(root), _NET.addresses, fqdn=lambda: "vm.example")
    ipconfig = IpConfig(_NET, _Scripts(), root, base / "ifcfg")
    logger = logging.getLogger("vmis.fuzz.hv_kvp")
    logger.disabled = True
    return KvpHandler(KvpPools(base / "pools"), intrinsics, ipconfig, logger), base / "pools"


def _utf16(text: str) -> bytes:
    return text.encode("utf-16-le", "surrogatepass")


def _body(fdp: atheris.FuzzedDataProvider, op: int) -> bytes:
    if op in (KvpOp.GET_IP_INFO, KvpOp.SET_IP_INFO) and fdp.ConsumeBool():
        # the host writes UTF-16 here; the kernel converts to UTF-8 before the daemon
        def field() -> bytes:
            return fdp.PickValueInList([b"10.0.0.9", b"10.0.0.9;fd00::9", b"255.255.255.0",
                                        b"/64", b"bad", b"", b"1.2.3.4;5.6.7.8"]) \
                if fdp.ConsumeBool() else fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
        adapter = fdp.PickValueInList([_MAC.encode(), _GUID.encode(), b"nope"])
        return IpAddrValue(adapter, fdp.ConsumeIntInRange(0, 3), fdp.ConsumeIntInRange(0, 1),
                           field(), field(), field(), field()).pack()
    if op in (KvpOp.GET, KvpOp.SET) and fdp.ConsumeBool():
        key = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 520))
        value = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 60))
        key_size = len(key) + 1 if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 0xFFFFFFFF)
        return KVP_VALUE.pack(1, key_size, len(value) + 1 if fdp.ConsumeBool() else
                              fdp.ConsumeIntInRange(0, 4096), key[:512], value)
    if op == KvpOp.ENUMERATE:
        return struct.pack("<I", fdp.ConsumeIntInRange(0, 40)) + fdp.ConsumeBytes(100)
    return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 600))


def one_input(data: bytes) -> None:
    _handler, pools = setup()
    fdp = atheris.FuzzedDataProvider(data)
    try:
        for _ in range(fdp.ConsumeIntInRange(1, 4)):
            op = fdp.ConsumeIntInRange(0, 7) if fdp.ConsumeProbability() < 0.95 else \
                fdp.ConsumeIntInRange(0, 255)
            pool = fdp.ConsumeIntInRange(0, 4) if fdp.ConsumeProbability() < 0.95 else \
                fdp.ConsumeIntInRange(0, 255)
            message = kvp_message(op, pool, _body(fdp, op))
            if fdp.ConsumeProbability() > 0.97:
                message = message[: fdp.ConsumeIntInRange(0, len(message) + 8)].ljust(
                    fdp.ConsumeIntInRange(0, KVP_MSG_SIZE + 8), b"\0")
            try:
                reply = _handler.handle(message)
            except RemoteProtocolError:
                assert len(message) != KVP_MSG_SIZE
                continue
            assert len(reply) == KVP_MSG_SIZE
            assert struct.unpack_from("<I", reply)[0] in _CODES
        for pool in pools.glob(".kvp_pool_*"):
            assert pool.stat().st_size % RECORD_SIZE == 0, pool
    finally:
        shutil.rmtree(pools, ignore_errors=True)
