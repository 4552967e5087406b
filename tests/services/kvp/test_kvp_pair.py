"""KVP end to end through the real channel: an in-process host manager and guest agent.

The host's view is read through the real API (``pair.api``), the guest's
through its pool files and the agent's control operations (what
``vmis-guest kvp`` calls).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from support.pair import eventually, host_guest_pair

import vmis
from vmis.errors import ServiceError, ServiceUnavailable
from vmis.guest.adapters import make_adapters
from vmis.protocol import encode_json
from vmis.services.catalog import StartupType, by_key
from vmis.services.kvp import KvpOp
from vmis.services.kvp import guest as kvp_guest
from vmis.services.kvp.guest import KvpService
from vmis.services.kvp.host import KvpHost, kvp_pending
from vmis.services.kvp.intrinsic import INTRINSIC_KEYS
from vmis.services.kvp.netinfo import IfAddress, Interface, StaticNetInfo
from vmis.services.kvp.pool import RECORD_SIZE, KvpPool, Pool, decode_record

SPEC = by_key("kvp")

NET = StaticNetInfo(
    links=[Interface(1, "lo", "00:00:00:00:00:00", True),
           Interface(2, "eth0", "00:15:5D:01:02:03", False)],
    addrs=[IfAddress("lo", socket.AF_INET, "127.0.0.1", 8, loopback=True),
           IfAddress("eth0", socket.AF_INET, "10.0.0.5", 24),
           IfAddress("eth0", socket.AF_INET6, "fd00::5", 64)],
    gateways={},
)


def adapters(root: Path) -> dict[str, Any]:
    return {**make_adapters("fake", root), "net": NET}


def pool_dir(pair: Any) -> Path:
    return pair.root / "var/lib/hyperv"


def records(path: Path) -> list[tuple[str, str]]:
    """Parse a pool file the way hv_kvp_daemon does: 2560-byte records, nothing else."""
    data = path.read_bytes()
    assert len(data) % RECORD_SIZE == 0, f"{path} is {len(data)} bytes"
    return [decode_record(data[i:i + RECORD_SIZE]) for i in range(0, len(data), RECORD_SIZE)]


async def host_rows(pair: Any, pool: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"vm": "DemoVM"}
    if pool:
        params["pool"] = pool
    response = await pair.api.get("/v1/kvp", params=params)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


async def host_value(pair: Any, pool: str, key: str) -> str | None:
    for row in await host_rows(pair, pool):
        if row["Key"] == key and row["Pending"] is None:
            return str(row["Value"])
    return None


async def host_set(pair: Any, key: str, value: str, vms: list[str] | None = None) -> Any:
    return await pair.api.post("/v1/kvp/set", json={"vms": vms or ["DemoVM"], "key": key,
                                                    "value": value})


def kvp_of(pair: Any) -> KvpService:
    service = pair.agent.manager.services["kvp"]
    assert isinstance(service, KvpService)
    return service


async def tool(pair: Any, op: str, **args: Any) -> Any:
    """A control-socket operation, as ``vmis-guest kvp`` sends it."""
    return await kvp_of(pair).control_ops[f"kvp.{op}"](args)


# Section: the acceptance lines


async def test_host_set_is_read_in_the_guest_and_lands_in_the_pool_file(short_tmp):
    async with host_guest_pair(short_tmp, adapters=adapters(short_tmp / "guest")) as pair:
        response = await host_set(pair, "Deployment", "blue-42")
        assert response.status_code == 200, response.text
        [result] = response.json()
        assert (result["Delivered"], result["Pending"], result["Error"]) == (True, False, None)
        assert await tool(pair, "get", key="Deployment") == {
            "Pool": "External", "Key": "Deployment", "Value": "blue-42"}
        assert records(pool_dir(pair) / ".kvp_pool_0") == [("Deployment", "blue-42")]
        # and the host's view of External follows the guest's push
        assert await eventually(lambda: host_value(pair, "External", "Deployment")) == "blue-42"


async def test_guest_set_reaches_the_host_without_polling(short_tmp, monkeypatch):
    # no watcher tick during the test: only the push that follows the write can tell the host
    monkeypatch.setattr(kvp_guest, "WATCH_INTERVAL", 3600.0)
    async with host_guest_pair(short_tmp, adapters=adapters(short_tmp / "guest")) as pair:
        await tool(pair, "set", key="AppState", value="ready")
        assert records(pool_dir(pair) / ".kvp_pool_1") == [("AppState", "ready")]
        assert await eventually(lambda: host_value(pair, "Guest", "AppState")) == "ready"
        await tool(pair, "delete", key="AppState")
        await eventually(lambda: _absent(pair, "Guest", "AppState"))


async def _absent(pair: Any, pool: str, key: str) -> bool:
    return all(r["Key"] != key for r in await host_rows(pair, pool))


async def test_a_2049_byte_value_is_refused_on_the_host_and_in_the_guest(short_tmp):
    async with host_guest_pair(short_tmp, adapters=adapters(short_tmp / "guest")) as pair:
        response = await host_set(pair, "big", "v" * 2049)
        assert response.status_code == 400
        assert "2050 bytes" in response.json()["error"]
        assert "limit is 2048" in response.json()["error"]
        with pytest.raises(ServiceError, match="2050 bytes.*2048") as info:
            await tool(pair, "set", key="big", value="v" * 2049)
        assert info.value.code == "too-large"
        # the largest value that fits: 2047 bytes and the NUL
        assert (await host_set(pair, "max", "é" * 1023 + "v")).status_code == 200
        with pytest.raises(ServiceError, match="2049 bytes"):
            await tool(pair, "set", key="max", value="é" * 1024)  # 2048 bytes of UTF-8
        response = await host_set(pair, "k" * 512, "v")
        assert response.status_code == 400 and "limit is 512" in response.json()["error"]
        # nothing was saved for the refused writes
        with pair.manager.engine.begin() as conn:
            assert conn.execute(kvp_pending.select()).fetchall() == []


async def test_the_guest_refuses_an_oversized_value_on_the_wire_too(short_tmp):
    # A host that skips its own check (an older or foreign host) still cannot
    # make the guest write a record longer than the format allows.
    async with host_guest_pair(short_tmp, adapters=adapters(short_tmp / "guest")) as pair:
        assert pair.session.link is not None
        body = {"pool": 0, "items": [["big", "v" * 2049]]}
        with pytest.raises(Exception) as info:
            await pair.session.request(SPEC, KvpOp.SET, encode_json(body))
        assert getattr(info.value, "code", None) == "too-large"
        assert "2050 bytes" in str(info.value)
        for bad, code in (({"pool": 1, "items": [["a", "b"]]}, "bad-request"),
                          ({"pool": 0, "items": "nope"}, "bad-request"),
                          ({"pool": 0, "items": [["", "b"]]}, "bad-request"),
                          ({"pool": 0, "items": [["a\u0000", "b"]]}, "bad-request")):
            with pytest.raises(Exception) as info:
                await pair.session.request(SPEC, KvpOp.SET, encode_json(bad))
            assert getattr(info.value, "code", None) == code, bad
        assert not (pool_dir(pair) / ".kvp_pool_0").read_bytes()


async def test_pool_files_are_2560_byte_records_in_the_daemon_order(short_tmp):
    async with host_guest_pair(short_tmp, adapters=adapters(short_tmp / "guest")) as pair:
        for key, value in (("a", "1"), ("b", "2"), ("c", "3")):
            assert (await host_set(pair, key, value)).status_code == 200
        assert (await host_set(pair, "a", "one")).status_code == 200  # in place
        assert (await pair.api.post("/v1/kvp/remove",
                                    json={"vms": ["DemoVM"], "key": "b"})).status_code == 200
        path = pool_dir(pair) / ".kvp_pool_0"
        assert path.stat().st_size == 2 * RECORD_SIZE
        assert records(path) == [("a", "one"), ("c", "3")]
        raw = path.read_bytes()
        assert raw[:4] == b"a\0\0\0" and raw[512:516] == b"one\0"
        # the daemon's directory layout: all five files, 0644, in a 0755 directory
        assert sorted(p.name for p in pool_dir(pair).iterdir()) == [
            f".kvp_pool_{n}" for n in range(5)]
        assert pool_dir(pair).stat().st_mode & 0o777 == 0o755
        assert path.stat().st_mode & 0o777 == 0o644


# Section: host writes while the guest cannot take them


async def test_a_host_write_while_the_agent_is_down_is_delivered_when_it_comes_back(short_tmp):
    async with host_guest_pair(short_tmp, adapters=adapters(short_tmp / "guest")) as pair:
        await pair._stop_agent()
        await eventually(lambda: not pair.session.connected)
        [result] = (await host_set(pair, "Offline", "later")).json()
        assert (result["Delivered"], result["Pending"]) == (False, True)
        assert "no contact" in result["Reason"]
        removal = (await pair.api.post("/v1/kvp/remove",
                                       json={"vms": ["DemoVM"], "key": "Gone"})).json()
        assert removal[0]["Pending"] is True
        pending = [r for r in await host_rows(pair, "External") if r["Pending"]]
        assert [(r["Key"], r["Value"], r["Pending"]) for r in pending] == [
            ("Offline", "later", "set"), ("Gone", None, "remove")]
        assert not (pool_dir(pair) / ".kvp_pool_0").exists() or \
            records(pool_dir(pair) / ".kvp_pool_0") == []

        pair.agent, pair._agent_task = await _restart(pair)
        await eventually(lambda: records(pool_dir(pair) / ".kvp_pool_0") == [("Offline", "later")])
        await eventually(lambda: _no_pending(pair))
        assert await eventually(lambda: host_value(pair, "External", "Offline")) == "later"


async def _restart(pair: Any) -> Any:
    from support.pair import _start_agent

    return await _start_agent(pair.root, adapters=adapters(pair.root))


async def _no_pending(pair: Any) -> bool:
    return not any(r["Pending"] for r in await host_rows(pair))


async def test_pending_writes_survive_a_host_manager_restart(short_tmp):
    from vmis.host.manager import HostManager
    from vmis.host.store import Store

    async with host_guest_pair(short_tmp, adapters=adapters(short_tmp / "guest")) as pair:
        await pair._stop_agent()
        await eventually(lambda: not pair.session.connected)
        for n in range(3):
            assert (await host_set(pair, f"k{n}", f"v{n}")).json()[0]["Pending"]
        await pair.manager.close()  # the host manager goes away with its writes saved
        manager = HostManager(Store(f"sqlite:///{short_tmp / 'host.db'}"))
        await manager.start()
        try:
            pair.agent, pair._agent_task = await _restart(pair)
            await eventually(lambda: records(pool_dir(pair) / ".kvp_pool_0") == [
                ("k0", "v0"), ("k1", "v1"), ("k2", "v2")])
            await eventually(lambda: not manager.session("DemoVM").part(KvpHost).pending_rows())
        finally:
            await manager.close()


async def test_writes_during_a_freeze_wait_for_the_thaw(short_tmp):
    async with host_guest_pair(short_tmp, adapters=adapters(short_tmp / "guest")) as pair:
        # the session-start delivery is over (it could otherwise carry the write later)
        await eventually(lambda: _full_facts(pair))
        await asyncio.sleep(0.2)
        pair.agent.ctx.set_frozen(True)
        try:
            [result] = (await host_set(pair, "During", "freeze")).json()
            assert (result["Delivered"], result["Pending"]) == (False, True)
            assert "frozen" in result["Reason"]
            with pytest.raises(ServiceError, match="frozen") as info:
                await tool(pair, "set", key="x", value="y")
            assert info.value.code == "busy"
            # nothing touched the disk meanwhile
            assert records(pool_dir(pair) / ".kvp_pool_0") == []
            assert records(pool_dir(pair) / ".kvp_pool_1") == []
        finally:
            pair.agent.ctx.set_frozen(False)
        # the thaw's push makes the host send what it held
        await eventually(lambda: records(pool_dir(pair) / ".kvp_pool_0") == [("During", "freeze")])
        await eventually(lambda: _no_pending(pair))


async def test_writes_while_the_service_is_disabled_are_delivered_when_enabled(short_tmp):
    async with host_guest_pair(short_tmp, adapters=adapters(short_tmp / "guest")) as pair:
        await pair.manager.set_enabled(["DemoVM"], ["Key-Value Pair Exchange"], False)
        [result] = (await host_set(pair, "WhileOff", "1")).json()
        assert result["Pending"] and "disabled on the host" in result["Reason"]
        await pair.manager.set_enabled(["DemoVM"], ["Key-Value Pair Exchange"], True)
        await eventually(lambda: records(pool_dir(pair) / ".kvp_pool_0") == [("WhileOff", "1")])
        await eventually(lambda: _no_pending(pair))


async def test_pending_writes_apply_in_order(short_tmp):
    async with host_guest_pair(short_tmp, adapters=adapters(short_tmp / "guest")) as pair:
        await pair._stop_agent()
        await eventually(lambda: not pair.session.connected)
        await host_set(pair, "k", "first")
        await pair.api.post("/v1/kvp/remove", json={"vms": ["DemoVM"], "key": "k"})
        await host_set(pair, "k", "last")
        await host_set(pair, "j", "1")
        pair.agent, pair._agent_task = await _restart(pair)
        await eventually(lambda: _no_pending(pair))
        assert records(pool_dir(pair) / ".kvp_pool_0") == [("k", "last"), ("j", "1")]


async def test_remove_of_a_missing_key_says_so(short_tmp):
    async with host_guest_pair(short_tmp, adapters=adapters(short_tmp / "guest")) as pair:
        response = await pair.api.post("/v1/kvp/remove", json={"vms": ["DemoVM"], "key": "no"})
        [result] = response.json()
        assert result["Error"] == "DemoVM: no key 'no' in the External pool"
        assert not result["Delivered"] and not result["Pending"]
        assert not await _has_pending(pair)


async def _has_pending(pair: Any) -> bool:
    return any(r["Pending"] for r in await host_rows(pair))


# Section: what the guest reports


async def test_intrinsic_and_host_facts_reach_their_pools(short_tmp):
    root = short_tmp / "guest"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text('NAME="Lab Linux"\nVERSION_ID="7.1"\n')
    (root / "etc/hostname").write_text("labvm.example\n")
    async with host_guest_pair(short_tmp, adapters=adapters(root)) as pair:
        auto = await eventually(lambda: _pool(pair, "Auto"))
        assert list(auto) == list(INTRINSIC_KEYS)
        assert auto["IntegrationServicesVersion"] == vmis.__version__
        assert auto["OSName"] == "Lab Linux" and auto["OSMajorVersion"] == "7.1"
        assert auto["FullyQualifiedDomainName"] == "labvm.example"
        assert auto["NetworkAddressIPv4"] == "10.0.0.5"
        assert auto["NetworkAddressIPv6"] == "fd00::5"
        assert auto["OSBuildNumber"] == os.uname().release

        facts = await eventually(lambda: _full_facts(pair))
        assert facts["VirtualMachineName"] == "DemoVM"
        assert facts["VirtualMachineId"] == pair.session.vm.id
        assert facts["HostName"] == socket.gethostname().split(".")[0]
        assert set(facts) == {"HostName", "PhysicalHostName", "PhysicalHostNameFullyQualified",
                              "VirtualMachineName", "VirtualMachineId"}
        # in the guest's AutoExternal pool file, where cloud-init and friends look
        assert dict(records(pool_dir(pair) / ".kvp_pool_3"))["VirtualMachineName"] == "DemoVM"
        assert await tool(pair, "get", key="VirtualMachineName") == {
            "Pool": "AutoExternal", "Key": "VirtualMachineName", "Value": "DemoVM"}
        assert (await tool(pair, "get", key="OSName"))["Pool"] == "Auto"


async def _full_facts(pair: Any) -> dict[str, str]:
    facts = await _pool(pair, "AutoExternal")
    return facts if len(facts) == 5 else {}


async def _pool(pair: Any, pool: str) -> dict[str, str]:
    return {r["Key"]: r["Value"] for r in await host_rows(pair, pool)}


async def test_a_pool_file_written_by_another_process_is_pushed(short_tmp):
    async with host_guest_pair(short_tmp, adapters=adapters(short_tmp / "guest")) as pair:
        # as cloud-init writes its diagnostics: straight into the file, not through vmis
        KvpPool(pool_dir(pair), Pool.GUEST).set("PROVISIONING_REPORT", "result=success")
        assert await eventually(lambda: host_value(pair, "Guest", "PROVISIONING_REPORT"),
                                timeout=10) == "result=success"


async def test_a_large_pool_arrives_in_parts(short_tmp):
    async with host_guest_pair(short_tmp, adapters=adapters(short_tmp / "guest")) as pair:
        pool = KvpPool(pool_dir(pair), Pool.GUEST)
        items = [(f"key{n:03}", f"{n:03}" + "x" * 2000) for n in range(60)]  # ~120 KB
        for key, value in items:
            pool.set(key, value)
        await eventually(lambda: _pool_is(pair, "Guest", items), timeout=10)


async def _pool_is(pair: Any, pool: str, items: list[tuple[str, str]]) -> bool:
    return [(r["Key"], r["Value"]) for r in await host_rows(pair, pool)] == items


async def test_the_host_keeps_the_last_known_pools_while_disconnected(short_tmp):
    async with host_guest_pair(short_tmp, adapters=adapters(short_tmp / "guest")) as pair:
        await tool(pair, "set", key="Last", value="known")
        await eventually(lambda: host_value(pair, "Guest", "Last"))
        await pair._stop_agent()
        await eventually(lambda: not pair.session.connected)
        [row] = [r for r in await host_rows(pair, "Guest") if r["Key"] == "Last"]
        assert row["Value"] == "known" and row["Connected"] is False and row["ReportedAt"]


async def test_a_stopped_guest_service_is_reported_clearly(short_tmp):
    async with host_guest_pair(short_tmp, adapters=adapters(short_tmp / "guest")) as pair:
        await pair.agent.manager.guest_set_startup(SPEC, StartupType.DISABLED)
        await eventually(lambda: pair.session.guest["kvp"].startup == "disabled")
        with pytest.raises(ServiceUnavailable, match="Key-Value Pair Exchange is not running"):
            pair.session.require(SPEC)
        [result] = (await host_set(pair, "k", "v")).json()
        assert result["Pending"] and "disabled in the guest" in result["Reason"]


async def test_pool_names_and_unknown_pools(short_tmp):
    async with host_guest_pair(short_tmp, adapters=adapters(short_tmp / "guest")) as pair:
        response = await pair.api.get("/v1/kvp", params={"vm": "DemoVM", "pool": "Nope"})
        assert response.status_code == 404
        assert "External, Guest, Auto, AutoExternal, AutoInternal" in response.json()["error"]
        with pytest.raises(ServiceError, match="the guest writes the Guest pool"):
            await tool(pair, "set", key="k", value="v", pool="External")
        rows = await tool(pair, "list", pool="auto")
        assert {r["Pool"] for r in rows} == {"Auto"}
        assert json.dumps(rows)  # what the control socket sends
