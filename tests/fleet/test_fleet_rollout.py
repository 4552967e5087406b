"""A staged rollout across two host managers (separate processes, lab VMs with an old
agent) on one real PostgreSQL: the other host's VMs are updated by their owner,
batch by batch, and policy compliance names the old agent first (docs/fleet.md §5)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from support.bundles import make_bundle
from support.lab import run_vmis

import vmis
from vmis.lab.lab import Lab

pytestmark = pytest.mark.slow


class _Host:
    def __init__(self, name, lab_dir, db):
        self.name, self.lab_dir, self.db = name, lab_dir, db

    def vmis(self, *args, timeout=120):
        return run_vmis(self.lab_dir, *args, timeout=timeout)

    def json(self, *args):
        result = self.vmis(*args, "--json")
        assert result.code == 0, result.err
        return json.loads(result.out)


@pytest.fixture
def old_fleet(short_tmp, postgres_url) -> Iterator[tuple[_Host, _Host]]:
    """Hosts hv1 (VM1) and hv2 (VM2), their lab VMs with the agent 0.0.9."""
    old = str(make_bundle(short_tmp, "0.0.9"))
    hosts = [_Host("hv1", short_tmp / "hv1", postgres_url),
             _Host("hv2", short_tmp / "hv2", postgres_url)]
    try:
        for host, vm in zip(hosts, ("VM1", "VM2"), strict=True):
            up = host.vmis("lab", "up", vm, "-AgentBundle", old, "-Db", host.db,
                           "-ComputerName", host.name)
            assert up.code == 0, up.err
        yield hosts[0], hosts[1]
    finally:
        for host in hosts:
            Lab(host.lab_dir).down(None)


def test_a_rollout_across_hosts_updates_each_hosts_vms_batch_by_batch(old_fleet):
    hv1, hv2 = old_fleet
    policy = hv2.vmis("Set-VMIntegrationServicePolicy", "-Name", "current",
                      "-MinimumVersion", vmis.__version__)
    assert policy.code == 0, policy.err
    rows = hv1.json("Get-VMIntegrationServiceCompliance", "-ComputerName", "*")
    agents = {r["VMName"]: r for r in rows if r["Name"] == "Agent"}
    assert {vm: (r["ComputerName"], r["Actual"], r["Compliant"]) for vm, r in agents.items()} \
        == {"VM1": ("hv1", "0.0.9", False), "VM2": ("hv2", "0.0.9", False)}
    assert "older than" in agents["VM2"]["Reason"]

    result = hv1.vmis("Update-VMIntegrationServices", "-ComputerName", "*", "-VMName", "*",
                      "-BatchPercent", "50", "-HealthWaitSec", "2", "--json", timeout=600)
    assert result.code == 0, result.err
    done = json.loads(result.out)
    assert [(r["Batch"], r["VMName"], r["ComputerName"], r["Result"], r["Healthy"])
            for r in done] == [(1, "VM1", "hv1", "updated", True),
                               (2, "VM2", "hv2", "updated", True)]
    assert {r["Version"] for r in done} == {vmis.__version__}
    table = hv2.vmis("Get-VMIntegrationServiceCompliance", "-ComputerName", "*")
    assert table.code == 0 and "WARNING" not in table.err, table.err
    assert table.out.splitlines()[0].split() == ["VMName", "Name", "Desired", "Actual",
                                                 "Compliant", "Since", "ComputerName"]
