"""Fleets of host managers, each a lab (its own VMIS_LAB_DIR) joined to one real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.lab import Result, run_vmis

from vmis.lab.lab import Lab


@dataclass
class Host:
    """One host manager of the fleet: a lab directory, its manager and lab VMs."""

    name: str
    lab_dir: Path
    db: str

    def vmis(self, *args: str, timeout: float = 120) -> Result:
        """A ``vmis`` command run on this host (its manager's socket)."""
        return run_vmis(self.lab_dir, *args, timeout=timeout)

    def json(self, *args: str) -> object:
        result = self.vmis(*args, "--json")
        assert result.code == 0, result.err
        return json.loads(result.out)

    def up(self, *vms: str) -> Result:
        """``vmis lab up VMS -Db URL -ComputerName NAME``."""
        return self.vmis("lab", "up", *vms, "-Db", self.db, "-ComputerName", self.name)

    @property
    def lab(self) -> Lab:
        return Lab(self.lab_dir)


@pytest.fixture
def fleet(short_tmp: Path, postgres_url: str) -> Iterator[Callable[..., Host]]:
    """Starts hosts: ``fleet("hv1", "VM1")`` is host hv1 with lab VM VM1 up; every lab
    (managers and VMs) is stopped after the test."""
    hosts: list[Host] = []

    def start(name: str, *vms: str) -> Host:
        host = Host(name, short_tmp / name, postgres_url)
        hosts.append(host)
        result = host.up(*vms)
        assert result.code == 0, result.err
        return host

    yield start
    for host in hosts:
        host.lab.down(None)
