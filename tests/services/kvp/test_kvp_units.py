"""KVP pieces on their own: names and limits, the Auto items, the guest service
against a recording notifier, the host's reassembly of pushes, the CLI cells."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

import vmis
from vmis.errors import ConfigError, KvpFormatError, KvpSizeError, NotFoundError, ServiceError
from vmis.guest.config import AgentConfig, load_config
from vmis.protocol import ServiceId, decode_json
from vmis.services import kvp as kvp_pkg
from vmis.services.guest_half import GuestContext
from vmis.services.kvp import (
    NOTIFY_CHUNK,
    KvpOp,
    check_item,
    parse_pool,
    pool_name,
    wire_text,
)
from vmis.services.kvp import guest as kvp_guest
from vmis.services.kvp.guest import KvpService
from vmis.services.kvp.intrinsic import (
    INTRINSIC_KEYS,
    Intrinsics,
    OsInfo,
    default_fqdn,
    fqdn_for,
    read_os_info,
    release_root,
)
from vmis.services.kvp.netinfo import IfAddress, StaticNetInfo
from vmis.services.kvp.pool import KvpPool, Pool

NET = StaticNetInfo(links=[], gateways={}, addrs=[
    IfAddress("lo", socket.AF_INET, "127.0.0.1", 8, loopback=True),
    IfAddress("eth0", socket.AF_INET, "10.0.0.5", 24),
    IfAddress("eth1", socket.AF_INET, "10.0.1.5", 24),
    IfAddress("eth0", socket.AF_INET6, "fd00::5", 64),
])


# Section: names and limits


def test_pools_by_name_or_number():
    assert parse_pool("external") is Pool.EXTERNAL
    assert parse_pool(" AutoExternal ") is Pool.AUTO_EXTERNAL
    assert parse_pool("2") is Pool.AUTO and parse_pool(4) is Pool.AUTO_INTERNAL
    assert [pool_name(p) for p in Pool] == [
        "External", "Guest", "Auto", "AutoExternal", "AutoInternal"]
    for bad in ("5", "Registry", "", -1):
        with pytest.raises(NotFoundError, match="pools: External, Guest, Auto"):
            parse_pool(bad)


@pytest.mark.parametrize(("key", "value", "error"), [
    ("k" * 511, "v" * 2047, None),
    ("k" * 512, "v", "KVP key is 513 bytes with its terminating NUL; the limit is 512"),
    ("k", "v" * 2048, "KVP value is 2049 bytes with its terminating NUL; the limit is 2048"),
    ("k", "v" * 2049, "KVP value is 2050 bytes with its terminating NUL; the limit is 2048"),
    ("k", "€" * 682 + "v", None),  # 2047 bytes of UTF-8: the size is in bytes, not characters
    ("k", "€" * 683, "KVP value is 2050 bytes"),
    ("", "v", "a KVP key cannot be empty"),
    ("k\0", "v", "KVP key contains a NUL character"),
    ("k", "\ud800", "KVP value is not valid text"),
])
def test_item_limits_are_encoded_bytes_with_the_nul(key: str, value: str, error: str | None):
    if error is None:
        check_item(key, value)
        return
    with pytest.raises(KvpFormatError) as info:
        check_item(key, value)
    assert str(info.value).startswith(error)
    if "limit" in error:
        assert isinstance(info.value, KvpSizeError)


def test_text_that_no_record_can_hold_is_absent_not_an_exception(tmp_path: Path):
    pool = KvpPool(tmp_path, Pool.GUEST)
    pool.set("a", "1")
    assert pool.get("\ud800") is None
    assert pool.delete("\ud800") is False
    with pytest.raises(KvpFormatError):
        pool.set("\ud800", "x")
    assert pool.items() == [("a", "1")]


def test_wire_text_makes_foreign_bytes_displayable():
    raw = b"ok-\xff\xfe".decode("utf-8", "surrogateescape")
    assert wire_text(raw) == "ok-\ufffd\ufffd"
    assert json.dumps(wire_text(raw), ensure_ascii=False).encode()
    assert wire_text("plain é") == "plain é"


# Section: the Auto items


class FakeUname:
    sysname, release, machine = "Linux", "6.8.0-35-generic", "aarch64"


def test_release_files_come_from_the_root_when_it_has_them(tmp_path: Path):
    assert release_root(tmp_path) == Path("/")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/redhat-release").write_text("Rocky Linux release 9.3\n9\n3\n")
    assert release_root(tmp_path) == tmp_path
    info = read_os_info(release_root(tmp_path), uname=FakeUname)
    assert (info.name, info.major, info.minor, info.version, info.arch) == (
        "Rocky Linux release 9.3", "9", "3", "6.8.0", "aarch64")


def test_fqdn_of_a_lab_root_and_of_a_real_guest(tmp_path: Path):
    assert fqdn_for(Path("/")) is default_fqdn
    assert fqdn_for(tmp_path)() == default_fqdn()  # no etc/hostname: the machine's
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("web01.lab.example\n\n")
    assert fqdn_for(tmp_path)() == "web01.lab.example"


def test_items_are_the_ten_daemon_keys_reading_addresses_once():
    calls = []

    def addresses() -> list[IfAddress]:
        calls.append(1)
        return NET.addresses()

    info = OsInfo("Lab", "1", "", "6.8.0-35-generic", "6.8.0", "x86_64")
    intrinsics = Intrinsics(info, addresses, fqdn=lambda: "vm.example")
    intrinsics.version = vmis.__version__
    items = intrinsics.items()
    assert len(calls) == 1
    assert [k for k, _ in items] == list(INTRINSIC_KEYS)
    assert items == [intrinsics.item(i) for i in range(len(INTRINSIC_KEYS))]
    assert dict(items)["NetworkAddressIPv4"] == "10.0.0.5;10.0.1.5"
    assert dict(items)["NetworkAddressIPv6"] == "fd00::5"
    assert intrinsics.item(len(INTRINSIC_KEYS)) is None


def test_unreadable_addresses_give_empty_values():
    def broken() -> list[IfAddress]:
        raise PermissionError(1, "Operation not permitted")

    items = dict(Intrinsics(read_os_info(), broken, fqdn=lambda: "x").items())
    assert items["NetworkAddressIPv4"] == "" and items["NetworkAddressIPv6"] == ""
    assert items["OSBuildNumber"] == os.uname().release


def test_the_hyperv_daemon_shares_the_intrinsic_code():
    from vmis.hyperv import kvp as hyperv_kvp
    from vmis.hyperv import netinfo as hyperv_netinfo
    from vmis.services.kvp import intrinsic, netinfo

    assert hyperv_kvp.Intrinsics is intrinsic.Intrinsics
    assert hyperv_kvp.read_os_info is intrinsic.read_os_info
    assert hyperv_kvp.INTRINSIC_KEYS is intrinsic.INTRINSIC_KEYS
    assert hyperv_netinfo.NetlinkInfo is netinfo.NetlinkInfo


# Section: configuration


def test_pool_dir_setting(tmp_path: Path):
    conf = tmp_path / "agent.conf"
    assert AgentConfig().pool_dir == "/var/lib/hyperv" == kvp_pkg.DEFAULT_POOL_DIR
    conf.write_text("[kvp]\npool_dir = /srv/kvp\n")
    assert load_config(conf).pool_dir == "/srv/kvp"
    conf.write_text("[kvp]\npool_dir = relative/dir\n")
    with pytest.raises(ConfigError, match=r"\[kvp\] pool_dir must be an absolute path"):
        load_config(conf)
    conf.write_text("[kvp]\npool_directory = /x\n")
    with pytest.raises(ConfigError, match="unknown setting 'pool_directory' in \\[kvp\\]"):
        load_config(conf)


# Section: the guest service against a recording notifier


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def __call__(self, service: int, op: int, payload: bytes) -> None:
        assert (service, op) == (ServiceId.KVP, KvpOp.POOL)
        assert len(payload) <= NOTIFY_CHUNK + 1024, len(payload)
        self.sent.append(decode_json(payload))

    def pools(self) -> list[int]:
        return [s["pool"] for s in self.sent]


def make_service(root: Path, **config: Any) -> tuple[KvpService, Recorder]:
    recorder = Recorder()
    ctx = GuestContext(root=root, config=AgentConfig(**config), notify=recorder,
                       adapters={"net": NET})
    return KvpService(ctx), recorder


async def settle(recorder: Recorder, count: int, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(recorder.sent) < count:
        assert asyncio.get_running_loop().time() < deadline, recorder.pools()
        await asyncio.sleep(0.01)


async def test_start_creates_the_files_and_pushes_every_pool(tmp_path: Path):
    service, recorder = make_service(tmp_path, pool_dir="/srv/kvp")
    await service.start()
    try:
        await settle(recorder, 5)
        assert sorted(recorder.pools()) == [0, 1, 2, 3, 4]
        assert sorted(p.name for p in (tmp_path / "srv/kvp").iterdir()) == [
            f".kvp_pool_{n}" for n in range(5)]
        auto = next(s for s in recorder.sent if s["pool"] == 2)
        assert [k for k, _ in auto["items"]] == list(INTRINSIC_KEYS)
    finally:
        await service.stop()


async def test_a_write_is_pushed_at_once_and_an_untouched_pool_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(kvp_guest, "WATCH_INTERVAL", 3600.0)  # no watcher tick in this test
    service, recorder = make_service(tmp_path)
    await service.start()
    try:
        await settle(recorder, 5)
        recorder.sent.clear()
        await service.control_ops["kvp.set"]({"key": "AppState", "value": "ready"})
        assert recorder.sent == [
            {"pool": 1, "part": 0, "last": True, "items": [["AppState", "ready"]]}]
        # a session start asks for everything again
        service.on_session(True)
        await settle(recorder, 6)
        assert sorted(recorder.pools()[1:]) == [0, 1, 2, 3, 4]
    finally:
        await service.stop()


async def test_the_watcher_pushes_changes_by_others_but_not_mere_touches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(kvp_guest, "WATCH_INTERVAL", 0.05)
    service, recorder = make_service(tmp_path)
    await service.start()
    try:
        await settle(recorder, 5)
        path = service.pools[Pool.AUTO_INTERNAL].path
        before = len(recorder.sent)
        os.utime(path, ns=(1, 1))  # a new mtime, the same content
        await asyncio.sleep(0.5)
        assert len(recorder.sent) == before
        KvpPool(path.parent, Pool.AUTO_INTERNAL).set("written", "elsewhere")
        await settle(recorder, before + 1)
        assert recorder.sent[-1]["pool"] == 4
        assert recorder.sent[-1]["items"] == [["written", "elsewhere"]]
    finally:
        await service.stop()


async def test_a_large_pool_is_pushed_in_parts_the_host_joins(tmp_path: Path):
    from vmis.host.manager import HostManager
    from vmis.host.store import Store
    from vmis.services.kvp.host import KvpHost

    service, recorder = make_service(tmp_path)
    await service.start()
    try:
        await settle(recorder, 5)
        pool = service.pools[Pool.GUEST]
        items = [(f"k{n:03}", "\n\t" * 1000 + str(n)) for n in range(40)]  # JSON doubles these
        for key, value in items:
            pool.set(key, value)
        recorder.sent.clear()
        await service._pushed_after_write(Pool.GUEST)
        parts = recorder.sent
        assert len(parts) > 1
        assert [p["part"] for p in parts] == list(range(len(parts)))
        assert [p["last"] for p in parts] == [False] * (len(parts) - 1) + [True]
    finally:
        await service.stop()

    # the host's side: a real manager whose VM has no session (nothing is due)
    manager = HostManager(Store(f"sqlite:///{tmp_path / 'host.db'}"))
    await manager.start()
    try:
        manager.add_vm("DemoVM", f"unix:{tmp_path / 'nobody.sock'}")
        host = manager.session("DemoVM").part(KvpHost)
        _join_parts(host, parts, items)
    finally:
        await manager.close()


def _join_parts(host: Any, parts: list[dict[str, Any]], items: list[tuple[str, str]]) -> None:
    payloads = [json.dumps(p).encode() for p in parts]
    for payload in payloads[:-1]:
        host.on_pool(payload)
        assert Pool.GUEST not in host.pools  # nothing shown until the last part
    host.on_pool(payloads[-1])
    assert host.pools[Pool.GUEST] == items
    # a later part without its first (joined mid-stream) is ignored, not shown
    host.on_pool(payloads[1])
    host.on_pool(b"{not json")
    assert host.pools[Pool.GUEST] == items


async def test_frozen_guest_refuses_writes_and_creates_nothing(tmp_path: Path):
    service, recorder = make_service(tmp_path)
    service.ctx.set_frozen(True)
    await service.start()
    try:
        assert not (tmp_path / "var/lib/hyperv").exists()
        with pytest.raises(ServiceError) as info:
            await service.control_ops["kvp.set"]({"key": "a", "value": "b"})
        assert info.value.code == "busy"
        with pytest.raises(ServiceError) as info:
            await service.control_ops["kvp.delete"]({"key": "a"})
        assert info.value.code == "busy"
        assert not (tmp_path / "var/lib/hyperv").exists()
        # reads still work: the Auto items need no disk
        assert (await service.control_ops["kvp.get"]({"key": "OSVersion"}))["Pool"] == "Auto"
        service.ctx.set_frozen(False)
        await service.control_ops["kvp.set"]({"key": "a", "value": "b"})
        assert KvpPool(tmp_path / "var/lib/hyperv", Pool.GUEST).items() == [("a", "b")]
    finally:
        await service.stop()


async def test_guest_tool_rules(tmp_path: Path):
    service, _ = make_service(tmp_path)
    ops = service.control_ops
    (tmp_path / "var/lib/hyperv").mkdir(parents=True)
    KvpPool(tmp_path / "var/lib/hyperv", Pool.AUTO_EXTERNAL).set("HostName", "stale-host")
    with pytest.raises(ServiceError, match="no key 'x' in any pool"):
        await ops["kvp.get"]({"key": "x"})
    with pytest.raises(ServiceError, match="no key 'x' in the Guest pool") as info:
        await ops["kvp.get"]({"key": "x", "pool": "guest"})
    assert info.value.code == "not-found"
    with pytest.raises(ServiceError) as info:
        await ops["kvp.delete"]({"key": "OSName", "pool": "Auto"})
    assert info.value.code == "denied"
    with pytest.raises(ServiceError) as info:
        await ops["kvp.set"]({"key": "k", "value": "v", "pool": "AutoExternal"})
    assert info.value.code == "denied"
    with pytest.raises(ServiceError) as info:
        await ops["kvp.list"]({"pool": "Registry"})
    assert info.value.code == "bad-request"
    with pytest.raises(ServiceError) as info:
        await ops["kvp.set"]({"key": 5, "value": "v"})
    assert info.value.code == "bad-request"
    # stale host facts can be cleaned up from inside (WALinuxAgent #3276)
    assert await ops["kvp.delete"]({"key": "HostName", "pool": "AutoExternal"}) == {
        "Pool": "AutoExternal", "Key": "HostName"}
    assert KvpPool(tmp_path / "var/lib/hyperv", Pool.AUTO_EXTERNAL).items() == []


# Section: the host command line's cells


def test_table_cells_escape_control_characters_and_cut_long_values():
    from vmis.cli.host_commands.kvp import _cell, _pool_cell

    assert _cell("a\nb\tc\\") == "a\\nb\\tc\\\\"
    assert _cell(None) == ""
    long = _cell("x" * 500)
    assert len(long) == 80 and long.endswith("...")
    row = {"Pool": "External", "Pending": None}
    assert _pool_cell(row) == "External"
    assert _pool_cell({**row, "Pending": "set"}) == "External (pending)"
    assert _pool_cell({**row, "Pending": "remove"}) == "External (pending removal)"
