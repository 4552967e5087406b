"""The KVP daemon driven through the kernel emulator."""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.hv_emulator.kernel import HvUtilState, KernelEmulator
from vmis.hyperv.constants import HResult, KvpOp, RegType
from vmis.hyperv.ipconfig import HelperScripts, IpConfig
from vmis.hyperv.kvp import INTRINSIC_KEYS, Intrinsics, KvpHandler, read_os_info
from vmis.hyperv.messages import KVP_MSG_SIZE, kvp_message
from vmis.hyperv.netinfo import IfAddress, Interface, NetlinkInfo, StaticNetInfo
from vmis.hyperv.scripts import ROOT_ENV
from vmis.services.kvp.pool import RECORD_SIZE, KvpPools, Pool, encode_record, pool_path

WAIT = 20.0
OK, CONT, FAIL = HResult.HV_S_OK, HResult.HV_S_CONT, HResult.HV_E_FAIL


class FakeUname:
    sysname, release, machine = "Linux", "6.8.0-35-generic", "x86_64"


NET = StaticNetInfo(
    links=[Interface(1, "lo", "00:00:00:00:00:00", True),
           Interface(2, "eth0", "00:15:5D:01:02:03", False)],
    addrs=[
        IfAddress("lo", socket.AF_INET, "127.0.0.1", 8, loopback=True),
        IfAddress("eth0", socket.AF_INET, "10.0.0.5", 24),
        IfAddress("eth0", socket.AF_INET, "10.0.1.5", 16),
        IfAddress("lo", socket.AF_INET6, "::1", 128, loopback=True),
        IfAddress("eth0", socket.AF_INET6, "fd00::5", 64),
    ],
    gateways={("eth0", socket.AF_INET): ["10.0.0.1"], ("eth0", socket.AF_INET6): ["fd00::1"]},
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc/os-release").write_text(
        '# comment\nNAME="Ubuntu"\nVERSION_ID="24.04"\nPRETTY_NAME="x"\n'
    )
    nic = r / "sys/class/net/eth0"
    (nic / "device").mkdir(parents=True)
    (nic / "address").write_text("00:15:5d:01:02:03\n")
    (nic / "device/device_id").write_text("{f5bee29c-1741-4aad-a4c2-8fdedb46dcc2}\n")
    (r / "sys/class/net/lo").mkdir()
    (r / "sys/class/net/lo/address").write_text("00:00:00:00:00:00\n")
    (r / "etc/resolv.conf").write_text("nameserver 10.0.0.53\nnameserver 10.0.0.54\n")
    nm = r / "etc/NetworkManager/system-connections"
    nm.mkdir(parents=True)
    (nm / "eth0.nmconnection").write_text(
        "[connection]\nid=eth0\ninterface-name=eth0\n\n[ipv4]\nmethod=auto\n"
    )
    return r


@pytest.fixture
def pools(tmp_path: Path) -> KvpPools:
    p = KvpPools(tmp_path / "pools")
    p.create()
    return p


def make_handler(pools: KvpPools, root: Path, logger: logging.Logger,
                 config_dir: Path | None = None) -> KvpHandler:
    intrinsics = Intrinsics(read_os_info(root, uname=FakeUname), NET.addresses,
                            fqdn=lambda: "vm1.corp.example")
    scripts = HelperScripts(None, {ROOT_ENV: str(root)})
    ipconfig = IpConfig(NET, scripts, root, config_dir or root / "var/lib/hyperv")
    return KvpHandler(pools, intrinsics, ipconfig, logger)


@pytest.fixture
def kvp(emulator, daemon, pools, root, logger) -> KernelEmulator:
    emu = emulator("kvp", timeout=WAIT)
    daemon(make_handler(pools, root, logger), emu)
    return emu


def c_daemon_model(ops: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """What hv_kvp_daemon.c leaves in a pool: overwrite in place, append, shift up."""
    records: list[list[str]] = []
    for op, key, value in ops:
        found = next((r for r in records if r[0] == key), None)
        if op == "set":
            if found:
                found[1] = value
            else:
                records.append([key, value])
        elif found:
            records.remove(found)
    return [(k, v) for k, v in records]


def test_registration_handshake(kvp: KernelEmulator):
    assert kvp.state == HvUtilState.READY
    assert kvp.daemon_registration == KvpOp.REGISTER1
    assert kvp.rejected == []


def test_session_leaves_the_c_daemons_records(kvp: KernelEmulator, pools: KvpPools):
    ops = [("set", "alpha", "1"), ("set", "beta", "2"), ("set", "gamma", "3"),
           ("set", "beta", "two"), ("delete", "alpha", ""), ("set", "delta", "4"),
           ("set", "alpha", "again"), ("delete", "gamma", ""), ("set", "κλειδί", "τιμή")]
    for op, key, value in ops:
        if op == "set":
            assert kvp.kvp_set(Pool.EXTERNAL, key, value) == OK
        else:
            assert kvp.kvp_delete(Pool.EXTERNAL, key) == OK
    expected = c_daemon_model(ops)
    assert expected == [("beta", "two"), ("delta", "4"), ("alpha", "again"), ("κλειδί", "τιμή")]
    assert pools[Pool.EXTERNAL].items() == expected
    raw = pool_path(pools.directory, 0).read_bytes()
    assert len(raw) == len(expected) * RECORD_SIZE
    assert raw[:RECORD_SIZE] == encode_record("beta", "two")
    status, items = kvp.kvp_enumerate_all(Pool.EXTERNAL)
    assert status == CONT and items == expected
    assert kvp.kvp_get(Pool.EXTERNAL, "delta") == (OK, "4")
    assert kvp.kvp_get(Pool.EXTERNAL, "gamma")[0] == CONT
    assert kvp.kvp_delete(Pool.EXTERNAL, "gamma") == CONT
    assert pools[Pool.GUEST].items() == []  # other pools untouched


def test_enumerate_sees_records_written_by_others(kvp: KernelEmulator, pools: KvpPools):
    pools[Pool.GUEST].set("cloud-init", "ready")
    assert kvp.kvp_enumerate_all(Pool.GUEST) == (CONT, [("cloud-init", "ready")])


def test_integer_values_become_decimal_strings(kvp: KernelEmulator, pools: KvpPools):
    assert kvp.kvp_set(Pool.AUTO_EXTERNAL, "u32", 4294967295, RegType.REG_U32) == OK
    assert kvp.kvp_set(Pool.AUTO_EXTERNAL, "u64", 2**64 - 1, RegType.REG_U64) == OK
    assert pools[Pool.AUTO_EXTERNAL].items() == [("u32", "4294967295"),
                                                 ("u64", "18446744073709551615")]


def test_oversized_value_is_refused_with_hv_s_cont(kvp: KernelEmulator, pools: KvpPools):
    key = b"big\0"
    for size, expected in ((2049, CONT), (2048, OK)):
        body = struct.pack("<III", RegType.REG_SZ, len(key), size) + key.ljust(512, b"\0")
        body += (b"v" * (size - 1) + b"\0").ljust(2048, b"\0")[:2048]
        reply = kvp.send_to_daemon(kvp_message(KvpOp.SET, Pool.GUEST, body))
        assert reply is not None and len(reply) == KVP_MSG_SIZE
        assert struct.unpack_from("<I", reply)[0] == expected, size
    assert pools[Pool.GUEST].items() == [("big", "v" * 2047)]
    big_key = b"k" * 512
    body = struct.pack("<III", RegType.REG_SZ, 513, 2) + big_key + b"v\0"
    reply = kvp.send_to_daemon(kvp_message(KvpOp.SET, Pool.GUEST, body))
    assert reply is not None and struct.unpack_from("<I", reply)[0] == CONT


def test_host_values_are_capped_by_the_kernel_conversion(kvp: KernelEmulator, pools: KvpPools):
    # 1000 x "€" fits the host's 1024-unit field but is 3000 UTF-8 bytes: the
    # kernel keeps what fits in 2047 bytes, whole characters only
    assert kvp.kvp_set(Pool.EXTERNAL, "k" * 300, "€" * 1000 + "x") == OK
    ((key, value),) = pools[Pool.EXTERNAL].items()
    assert key == "k" * 255  # the host field holds 256 code units, NUL included
    assert value == "€" * 682 + "x"  # 2046 bytes, then a 1-byte character still fits


def test_enumerate_truncates_to_the_kernels_254_and_1022_units(kvp: KernelEmulator,
                                                                pools: KvpPools):
    pools[Pool.GUEST].set("k" * 300, "v" * 2000)
    status, item = kvp.kvp_enumerate(Pool.GUEST, 0)
    assert status == OK and item == ("k" * 254, "v" * 1022)


def test_non_utf8_pool_record_fails_the_item(kvp: KernelEmulator, pools: KvpPools):
    raw = bytearray(RECORD_SIZE)
    raw[:4] = b"bad\0"
    raw[512:515] = b"\xff\xfe\0"
    pool_path(pools.directory, 1).write_bytes(bytes(raw) + encode_record("good", "1"))
    assert kvp.kvp_enumerate(Pool.GUEST, 0) == (FAIL, None)
    assert kvp.kvp_enumerate(Pool.GUEST, 1) == (OK, ("good", "1"))


def test_intrinsic_auto_keys_by_index(kvp: KernelEmulator):
    status, items = kvp.kvp_enumerate_all(Pool.AUTO)
    assert status == CONT
    assert [k for k, _ in items] == list(INTRINSIC_KEYS)
    assert dict(items) == {
        "FullyQualifiedDomainName": "vm1.corp.example",
        "IntegrationServicesVersion": "3.1",
        "NetworkAddressIPv4": "10.0.0.5;10.0.1.5",
        "NetworkAddressIPv6": "fd00::5",
        "OSBuildNumber": "6.8.0-35-generic",
        "OSName": "Ubuntu",
        "OSMajorVersion": "24.04",
        "OSMinorVersion": "",
        "OSVersion": "6.8.0",
        "ProcessorArchitecture": "x86_64",
    }
    assert kvp.kvp_enumerate(Pool.AUTO, 10) == (CONT, None)


def test_os_info_fallbacks(tmp_path: Path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/redhat-release").write_text("CentOS release 6.10 (Final)\n6\n10\n")
    info = read_os_info(tmp_path, uname=FakeUname)
    assert (info.name, info.major, info.minor) == ("CentOS release 6.10 (Final)", "6", "10")
    (tmp_path / "etc/redhat-release").unlink()
    info = read_os_info(tmp_path, uname=FakeUname)
    assert (info.name, info.major, info.minor) == ("Linux", "", "")
    (tmp_path / "etc/os-release").write_text("NAME='Deb\\\"ian'\nVERSION_ID=12\n")
    assert read_os_info(tmp_path, uname=FakeUname).name == 'Deb"ian'


def test_intrinsics_from_the_real_os():
    net = NetlinkInfo()
    items = dict(i for i in (Intrinsics(read_os_info(), net.addresses).item(n)
                             for n in range(10)) if i)
    u = os.uname()
    v4 = [a.address for a in net.addresses() if a.family == socket.AF_INET and not a.loopback]
    assert items["NetworkAddressIPv4"] == ";".join(v4)
    assert "127.0.0.1" not in items["NetworkAddressIPv4"].split(";")
    release = Path("/etc/os-release")
    if release.exists():
        name = next((ln.split("=", 1)[1].strip().strip('"') for ln in
                     release.read_text().splitlines() if ln.startswith("NAME=")), None)
        if name is not None:
            assert items["OSName"] == name
    assert items["OSBuildNumber"] == u.release
    assert items["ProcessorArchitecture"] == u.machine
    assert items["OSVersion"] == u.release.split("-")[0]
    assert items["FullyQualifiedDomainName"]
    assert items["IntegrationServicesVersion"] == "Unknown version"  # before registration


def test_invalid_pool_and_unknown_op(kvp: KernelEmulator):
    reply = kvp.send_to_daemon(kvp_message(KvpOp.ENUMERATE, 7, b""))
    assert reply is not None and struct.unpack_from("<I", reply)[0] == FAIL
    reply = kvp.send_to_daemon(kvp_message(42, 0, b""))
    assert reply is not None and struct.unpack_from("<I", reply)[0] == OK


def test_pool_file_error_answers_e_fail_and_keeps_serving(kvp: KernelEmulator, pools: KvpPools):
    path = pool_path(pools.directory, 0)
    path.unlink()
    path.mkdir()  # a directory where the pool file should be
    assert kvp.kvp_set(Pool.EXTERNAL, "a", "1") == FAIL
    path.rmdir()
    assert kvp.kvp_set(Pool.EXTERNAL, "a", "1") == OK


# Section: IP injection


def test_get_ip_info(kvp: KernelEmulator):
    status, info = kvp.kvp_get_ip_info("00:15:5D:01:02:03")
    assert status == OK and info is not None
    assert info.adapter_id == "00:15:5D:01:02:03"
    assert info.addr_family == 0  # process_ob_ipinfo copies dhcp_enabled back, not the family
    assert info.ip_addr == "10.0.0.5;10.0.1.5;fd00::5"
    assert info.sub_net == "255.255.255.0;255.255.0.0;/64"
    assert info.gate_way == "10.0.0.1;fd00::1"
    assert info.dns_addr == "10.0.0.53;10.0.0.54"
    assert info.dhcp_enabled == 1  # from the NetworkManager keyfile, via hv_get_dhcp_info
    assert kvp.kvp_get_ip_info("00:15:5D:FF:FF:FF") == (FAIL, None)


def test_set_ip_info_writes_files_and_runs_hv_set_ifconfig(kvp: KernelEmulator, root: Path):
    status = kvp.kvp_set_ip_info(
        "{F5BEE29C-1741-4AAD-A4C2-8FDEDB46DCC2}", ip_addr="10.0.0.9;fd00::9",
        sub_net="255.255.255.0;64", gate_way="10.0.0.1", dns_addr="1.1.1.1;8.8.8.8",
    )
    assert status == OK
    ifcfg = (root / "var/lib/hyperv/ifcfg-eth0").read_text()
    assert "BOOTPROTO=none" in ifcfg and "IPADDR=10.0.0.9" in ifcfg
    assert "NETMASK=255.255.255.0" in ifcfg and "IPV6ADDR=fd00::9/64" in ifcfg
    assert "GATEWAY=10.0.0.1" in ifcfg and "DNS2=8.8.8.8" in ifcfg
    installed = root / "etc/NetworkManager/system-connections/eth0.nmconnection"
    text = installed.read_text()
    assert "autoconnect=true" in text and "address1=10.0.0.9/24" in text
    assert "method=manual" in text and "gateway=10.0.0.1" in text
    assert installed.stat().st_mode & 0o777 == 0o600


def test_set_ip_info_errors(kvp: KernelEmulator):
    assert kvp.kvp_set_ip_info("{00000000-0000-0000-0000-000000000000}",
                               ip_addr="10.0.0.9") == HResult.HV_GUID_NOTFOUND
    assert kvp.kvp_set_ip_info("{f5bee29c-1741-4aad-a4c2-8fdedb46dcc2}",
                               ip_addr="10.0.0.999") == HResult.HV_INVALIDARG


def test_ip_ops_disabled(emulator, daemon, pools, root, logger):
    emu = emulator("kvp", timeout=WAIT)
    handler = KvpHandler(pools, Intrinsics(read_os_info(root, uname=FakeUname), NET.addresses,
                                           fqdn=lambda: "x"), None, logger)
    daemon(handler, emu)
    assert emu.kvp_get_ip_info("00:15:5D:01:02:03") == (FAIL, None)


def test_external_helper_scripts_directory(pools, root, logger, emulator, daemon):
    tmp_path = root.parent
    scripts = tmp_path / "libexec"
    scripts.mkdir()
    for name, body in (("hv_get_dhcp_info", "echo Disabled"),
                       ("hv_get_dns_info", "echo 9.9.9.9"),
                       ("hv_set_ifconfig", "exit 3")):
        path = scripts / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    ipconfig = IpConfig(NET, HelperScripts(scripts), root, tmp_path / "cfg")
    handler = KvpHandler(pools, Intrinsics(read_os_info(root, uname=FakeUname), NET.addresses,
                                           fqdn=lambda: "x"), ipconfig, logger)
    emu = emulator("kvp", timeout=WAIT)
    daemon(handler, emu)
    status, info = emu.kvp_get_ip_info("00:15:5d:01:02:03")
    assert status == OK and info is not None
    assert (info.dhcp_enabled, info.dns_addr) == (0, "9.9.9.9")
    assert emu.kvp_set_ip_info("{f5bee29c-1741-4aad-a4c2-8fdedb46dcc2}", dhcp=True) == FAIL
    assert (tmp_path / "cfg/ifcfg-eth0").read_text().count("BOOTPROTO=dhcp") == 1


# Section: the driver's state machine and error paths


def test_requests_before_registration_fail(emulator):
    emu = emulator("kvp", timeout=WAIT)
    assert emu.state == HvUtilState.DEVICE_INIT
    assert emu.kvp_set(Pool.GUEST, "a", "b") == FAIL
    assert emu.kvp_enumerate(Pool.AUTO, 0) == (FAIL, None)


def test_negotiation_is_answered_by_the_kernel(emulator):
    emu = emulator("kvp", timeout=WAIT)  # no daemon needed
    assert emu.negotiate([(3, 0), (1, 0)], [(5, 0), (4, 0), (3, 0)]) == ((3, 0), (4, 0))
    assert emu.negotiate([(2, 0)], [(4, 0)]) is None
    vss = emulator("vss", timeout=WAIT)
    assert vss.negotiate([(3, 0)], [(5, 0)]) == ((3, 0), (5, 0))
    assert vss.negotiate([(3, 0)], [(4, 0)]) is None


class RawDaemon:
    """A hand-driven daemon connection for error paths."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(WAIT)
        self.sock.connect(str(path))

    def close(self) -> None:
        self.sock.close()


def test_bad_registrations_and_spurious_replies_are_rejected(emulator):
    emu = emulator("kvp", timeout=WAIT)
    raw = RawDaemon(emu.path)
    try:
        raw.sock.send(b"\0" * 100)  # short: EINVAL
        raw.sock.send(kvp_message(77, 0))  # incompatible daemon: EINVAL
        raw.sock.send(kvp_message(KvpOp.REGISTER1, 0))
        reply = raw.sock.recv(65536)
        assert len(reply) == KVP_MSG_SIZE and reply[0] == 100 and reply[4:8] == b"3.1\0"
        assert emu.wait_registered(WAIT)
        raw.sock.send(kvp_message(0, 0))  # a reply with no request: EINVAL
        second = RawDaemon(emu.path)  # single opener
        assert second.sock.recv(10) == b""
        second.close()
    finally:
        raw.close()
    assert emu.wait_unregistered(WAIT)
    assert [e for _, e in emu.rejected] == [errno.EINVAL] * 3
    assert emu.busy_refusals == 1


def test_timeout_and_daemon_exit_answer_e_fail(emulator):
    emu = emulator("kvp", timeout=0.5)
    raw = RawDaemon(emu.path)
    raw.sock.send(kvp_message(KvpOp.REGISTER1, 0))
    raw.sock.recv(65536)
    assert emu.wait_registered(WAIT)
    assert emu.kvp_set(Pool.GUEST, "a", "b") == FAIL  # no answer within the timeout
    assert emu.state == HvUtilState.READY
    late = raw.sock.recv(65536)
    raw.sock.send(late)  # too late: refused
    raw.close()
    assert emu.wait_unregistered(WAIT)
    assert emu.state == HvUtilState.DEVICE_INIT
    assert emu.kvp_set(Pool.GUEST, "a", "b") == FAIL


def test_legacy_register_signals_errors_with_an_empty_key(emulator):
    emu = emulator("kvp", timeout=WAIT)
    raw = RawDaemon(emu.path)
    try:
        raw.sock.send(kvp_message(KvpOp.REGISTER, 0))
        assert raw.sock.recv(65536)[0] == KvpOp.REGISTER
        assert emu.wait_registered(WAIT)

        def serve_one(key: bytes) -> None:
            msg = bytearray(raw.sock.recv(65536))
            msg[20 : 20 + len(key)] = key
            msg[532:534] = b"v\0"
            raw.sock.send(bytes(msg))

        t = threading.Thread(target=serve_one, args=(b"",))
        t.start()
        assert emu.kvp_enumerate(Pool.GUEST, 0) == (CONT, None)
        t.join(WAIT)
        t = threading.Thread(target=serve_one, args=(b"k\0",))
        t.start()
        assert emu.kvp_enumerate(Pool.GUEST, 0) == (OK, ("k", "v"))
        t.join(WAIT)
    finally:
        raw.close()


def test_daemon_reopens_after_a_channel_reset(kvp: KernelEmulator):
    assert kvp.connections == 1
    kvp.disconnect()
    assert kvp.state == HvUtilState.DEVICE_INIT
    assert kvp.wait_registered(WAIT), "the daemon did not reopen and register again"
    assert kvp.connections == 2
    assert kvp.kvp_set(Pool.GUEST, "after", "reset") == OK


def test_python_version_guard():
    assert sys.version_info >= (3, 11)


SESSION_KEYS = st.sampled_from(["a", "b", "c", "ab", "ключ"])
SESSION_OPS = st.lists(
    st.tuples(st.sampled_from(["set", "delete"]), SESSION_KEYS,
              st.text(alphabet="xyzé€", max_size=6)),
    max_size=12,
)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=SESSION_OPS)
def test_random_sessions_match_the_c_daemon(kvp: KernelEmulator, pools: KvpPools,
                                            ops: list[tuple[str, str, str]]):
    pool_path(pools.directory, Pool.AUTO_EXTERNAL).write_bytes(b"")
    model: list[tuple[str, str, str]] = []
    for op, key, value in ops:
        if op == "set":
            assert kvp.kvp_set(Pool.AUTO_EXTERNAL, key, value) == OK
        else:
            present = any(k == key for k, _ in c_daemon_model(model))
            assert kvp.kvp_delete(Pool.AUTO_EXTERNAL, key) == (OK if present else CONT)
        model.append((op, key, value))
    expected = c_daemon_model(model)
    assert pools[Pool.AUTO_EXTERNAL].items() == expected
    assert kvp.kvp_enumerate_all(Pool.AUTO_EXTERNAL) == (CONT, expected)


# Section: GET, byte for byte (include/uapi/linux/hyperv.h; tools/hv/hv_kvp_daemon.c)

_GET_BODY = 4  # hv_kvp_msg.body, after the 4-byte header/error union
_GET_KEY = _GET_BODY + 12  # hv_kvp_msg_get.data.key (after value_type, key_size, value_size)
_GET_VALUE = _GET_KEY + 512  # hv_kvp_msg_get.data.value
_ENUM_VALUE = _GET_BODY + 4 + 12 + 512  # hv_kvp_msg_enumerate.data.value


def get_request(pool: int, key: bytes, key_size: int, value_size: int) -> bytes:
    """A GET as the daemon's device delivers it: header, then the get layout."""
    msg = bytearray(KVP_MSG_SIZE)
    msg[0], msg[1] = KvpOp.GET, pool
    struct.pack_into("<III", msg, _GET_BODY, RegType.REG_SZ, key_size, value_size)
    msg[_GET_KEY : _GET_KEY + len(key)] = key
    return bytes(msg)


def c_daemon_get(request: bytes, records: dict[bytes, bytes]) -> bytes:
    """hv_kvp_daemon.c's reply to a GET: kvp_get_value's memcpy, or HV_S_CONT."""
    reply = bytearray(request)
    key_size, value_size = struct.unpack_from("<II", request, _GET_BODY + 4)
    error = CONT
    if key_size <= 512 and value_size <= 2048:
        key = request[_GET_KEY : _GET_KEY + key_size]
        for stored, value in records.items():
            if (stored + b"\0").ljust(512, b"\0")[:key_size] == key:
                reply[_GET_VALUE : _GET_VALUE + value_size] = value.ljust(2048, b"\0")[:value_size]
                error = OK
                break
    struct.pack_into("<I", reply, 0, error)
    return bytes(reply)


GET_RECORDS = {b"color": b"blue", b"long": "\u00e9".encode() * 1023 + b"x",
               b"empty": b"", b"nine": b"123456789"}


@pytest.mark.parametrize("pool", list(Pool))
@pytest.mark.parametrize("key, value_size", [
    (b"color", 2048), (b"long", 2048), (b"empty", 2048), (b"nine", 2048),
    (b"nine", 4), (b"nine", 9), (b"nine", 1), (b"color", 2049), (b"missing", 2048),
])
def test_get_answers_byte_for_byte_as_the_c_daemon(pools: KvpPools, root: Path, logger,
                                                   pool: Pool, key: bytes, value_size: int):
    for stored, value in GET_RECORDS.items():
        pools[pool].set(stored.decode(), value.decode())
    handler = make_handler(pools, root, logger)
    request = get_request(pool, key + b"\0", len(key) + 1, value_size)
    assert handler.handle(request) == c_daemon_get(request, GET_RECORDS)


@pytest.mark.parametrize("pool", list(Pool))
def test_get_with_an_oversized_key_is_refused_as_the_c_daemon(pools: KvpPools, root: Path,
                                                                logger, pool: Pool):
    pools[pool].set("color", "blue")
    request = get_request(pool, b"color\0", 513, 2048)
    reply = make_handler(pools, root, logger).handle(request)
    assert reply == c_daemon_get(request, {b"color": b"blue"})
    assert struct.unpack_from("<I", reply)[0] == CONT


@pytest.mark.parametrize("pool", list(Pool))
def test_the_kernels_get_reads_the_whole_value(pools: KvpPools, root: Path, logger,
                                               pool: Pool):
    # The kernel sends value_size 0 and reads the reply through the enumerate
    # layout: there the value is whole (hv_kvp_daemon.c leaves it empty).
    value = "\u00e9" * 1023 + "x"
    pools[pool].set("long", value)
    request = get_request(pool, b"long\0", 5, 0)
    reply = make_handler(pools, root, logger).handle(request)
    assert struct.unpack_from("<I", reply)[0] == OK
    assert reply[_ENUM_VALUE : _ENUM_VALUE + 2048].split(b"\0")[0] == value.encode()
    assert reply[_GET_VALUE : _GET_VALUE + 4] == bytes(4)  # nothing where C would copy 0 bytes


@pytest.mark.parametrize("pool", [Pool.EXTERNAL, Pool.GUEST, Pool.AUTO_EXTERNAL,
                                  Pool.AUTO_INTERNAL])
def test_a_host_get_through_the_kernel_returns_the_value(kvp: KernelEmulator, pools: KvpPools,
                                                         pool: Pool):
    pools[pool].set("role", "db-primary")
    assert kvp.kvp_get(pool, "role") == (OK, "db-primary")
    assert kvp.kvp_get(pool, "nothing")[0] == CONT
