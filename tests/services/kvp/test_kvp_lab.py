"""KVP in a real lab: a host manager and a lab VM in their own processes, the real CLIs.

The acceptance lines of issue 3 as an administrator would run them:
``vmis Set-VMKvp`` read by ``vmis-guest kvp get`` and the reverse, a 2049-byte
value refused by both, pool files of 2560-byte records, and a host write
made while the agent is down delivered when it is back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.lab import run_vmis, start_lab

from vmis.lab.lab import Lab
from vmis.services.kvp.pool import RECORD_SIZE, decode_record


def guest(lab: Lab, *args: str) -> Any:
    """``vmis-guest --root <the lab VM's root> ARGS``: the guest tools inside DemoVM."""
    return run_vmis(lab.dir, "--root", str(lab.vm("DemoVM").root), *args, guest=True)


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"not met within {timeout} s"
        time.sleep(0.1)
    return result


def records(path: Path) -> list[tuple[str, str]]:
    data = path.read_bytes()
    assert len(data) % RECORD_SIZE == 0, f"{path}: {len(data)} bytes"
    return [decode_record(data[i:i + RECORD_SIZE]) for i in range(0, len(data), RECORD_SIZE)]


def host_items(lab: Lab, pool: str) -> dict[str, Any]:
    result = run_vmis(lab.dir, "Get-VMKvp", "-VMName", "DemoVM", "-Pool", pool, "--json")
    assert result.code == 0, result.err
    return {r["Key"]: (r["Value"], r["Pending"]) for r in json.loads(result.out)}


def test_kvp_both_ways_limits_pool_files_and_delivery_after_the_agent_was_down(lab_dir: Path):
    lab = start_lab(lab_dir)
    pools = lab.vm("DemoVM").root / "var/lib/hyperv"

    # host -> guest
    result = run_vmis(lab.dir, "Set-VMKvp", "-VMName", "DemoVM", "-Key", "Role",
                      "-Value", "web frontend")
    assert (result.code, result.err) == (0, "")
    read = guest(lab, "kvp", "get", "Role")
    assert (read.code, read.out) == (0, "web frontend\n"), read.err
    assert records(pools / ".kvp_pool_0") == [("Role", "web frontend")]

    # guest -> host, pushed
    assert guest(lab, "kvp", "set", "AppState", "ready").code == 0
    assert records(pools / ".kvp_pool_1") == [("AppState", "ready")]
    wait_for(lambda: host_items(lab, "Guest").get("AppState") == ("ready", None))
    table = run_vmis(lab.dir, "Get-VMKvp", "DemoVM")
    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[0].split() == ["VMName", "Pool", "Key", "Value"]
    assert any(line.split()[:4] == ["DemoVM", "Guest", "AppState", "ready"] for line in lines)
    assert any(line.split()[:3] == ["DemoVM", "Auto", "IntegrationServicesVersion"]
               for line in lines)

    # 2049 bytes: refused by the host before anything is saved, and by the guest
    big = "v" * 2049
    refused = run_vmis(lab.dir, "Set-VMKvp", "DemoVM", "Big", big)
    assert refused.code == 1
    assert refused.err.strip() == \
        "Set-VMKvp: KVP value is 2050 bytes with its terminating NUL; the limit is 2048"
    refused = guest(lab, "kvp", "set", "Big", big)
    assert refused.code == 1
    assert "2050 bytes" in refused.err and "2048" in refused.err
    assert "Traceback" not in refused.err
    assert "Big" not in host_items(lab, "External")
    assert records(pools / ".kvp_pool_0") == [("Role", "web frontend")]

    # every pool file the agent wrote is whole 2560-byte records
    for n in range(5):
        records(pools / f".kvp_pool_{n}")
    facts = dict(records(pools / ".kvp_pool_3"))
    assert facts["VirtualMachineName"] == "DemoVM"

    # One lab for both halves: starting a lab costs more than everything above.
    _a_host_write_while_the_agent_is_down_is_delivered_when_it_is_back(lab, pools)


def _a_host_write_while_the_agent_is_down_is_delivered_when_it_is_back(lab: Lab,
                                                                       pools: Path) -> None:
    assert run_vmis(lab.dir, "lab", "down", "DemoVM").code == 0

    result = run_vmis(lab.dir, "Set-VMKvp", "-VMName", "Demo*", "-Key", "Later",
                      "-Value", "delivered")
    assert result.code == 0
    assert "WARNING: DemoVM: no contact with the guest agent" in result.err
    assert "saved and delivered when the guest can take it" in result.err
    listing = run_vmis(lab.dir, "Get-VMKvp", "DemoVM", "-Pool", "External")
    assert any(line.split()[:4] == ["DemoVM", "External", "(pending)", "Later"]
               for line in listing.out.splitlines()), listing.out
    assert host_items(lab, "External")["Later"] == ("delivered", "set")
    assert records(pools / ".kvp_pool_0") == [("Role", "web frontend")]

    assert run_vmis(lab.dir, "lab", "up", "DemoVM").code == 0
    wait_for(lambda: records(pools / ".kvp_pool_0") == [("Role", "web frontend"),
                                                        ("Later", "delivered")])
    wait_for(lambda: host_items(lab, "External").get("Later") == ("delivered", None))
    read = guest(lab, "kvp", "get", "Later", "--pool", "External", "--json")
    assert json.loads(read.out) == {"Pool": "External", "Key": "Later", "Value": "delivered"}
