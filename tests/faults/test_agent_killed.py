"""The guest agent killed (SIGKILL) in the middle of work: nothing is lost.

A lab VM's agent is a process of its own; killing it is what an OOM kill or
a crash does. Each test kills it at a point where something is half done,
starts it again (``vmis lab up``), and checks the outcome a user relies on:

- a copy in either direction: the destination holds the whole file or
  nothing (never part of it), and the same command afterwards completes it,
  resuming from the last checkpoint of the partial file;
- a freeze (VSS): the guest's filesystems are thawed within seconds of the
  agent's restart, not left frozen until someone notices;
- host KVP writes: every write is delivered exactly once, in order: the
  pool file ends with each key once, holding its last value, and nothing
  stays pending.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from pathlib import Path

import pytest
from faultlab import Background, FaultLab, sha256_of, wait_for

from vmis.lab.lab import Lab
from vmis.services.kvp.pool import RECORD_SIZE, decode_record

pytestmark = pytest.mark.slow

GSI = "Guest Service Interface"
MIB = 1 << 20


@pytest.fixture
def faults(lab: Lab) -> FaultLab:
    return FaultLab(lab)


def _random_file(path: Path, mib: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))
    return path


def _partial(directory: Path, name: str) -> Path | None:
    return next(iter(directory.glob(f".{name}.*.vmis-part")), None)


def _recorded(directory: Path, name: str) -> int:
    """The bytes the partial file's resume record vouches for (0 without one)."""
    for record in directory.glob(f".{name}.*.vmis-resume"):
        with contextlib.suppress(OSError, ValueError):
            return int(json.loads(record.read_bytes()).get("verified", 0))
    return 0


def _kill_when_partial_reaches(faults: FaultLab, directory: Path, name: str,
                               size: int, copy) -> int:
    """SIGKILL the agent once the partial file holds *size* bytes and its first resume
    record (8 MiB) is written; its size then. The record is written behind the data
    (docs/services/fcopy.md §4), later on a busy machine."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not copy.done:
        part = _partial(directory, name)
        if part is not None and part.stat().st_size >= size \
                and _recorded(directory, name) >= 8 * MIB:
            faults.kill_agent()
            return part.stat().st_size
        time.sleep(0.001)
    raise AssertionError(f"the copy ended (or stalled) before its partial file reached {size}")


def test_agent_killed_mid_copy_into_the_guest(faults: FaultLab, short_tmp: Path):
    faults.call("POST", "/services/enable", {"vms": ["DemoVM"], "names": [GSI]})
    source = _random_file(short_tmp / "big.bin", 64)
    target_dir = faults.root() / "srv"
    body = {"source": str(source), "destination": "/srv/", "file_source": "Host"}
    copy = faults.background("POST", "/vms/DemoVM/copy", body)

    at = _kill_when_partial_reaches(faults, target_dir, "big.bin", 12 * MIB, copy)
    copy.wait(60)
    assert copy.error is not None, copy.result
    assert not (target_dir / "big.bin").exists(), "a partial file at the destination's name"
    assert _partial(target_dir, "big.bin") is not None
    # The guest died: it resumes from its last checkpoint record (every 8 MiB), not
    # from whatever reached the disk after it.

    faults.start_agent()
    result = faults.call("POST", "/vms/DemoVM/copy", body, timeout=300)
    assert result["Sha256"] == sha256_of(source) == sha256_of(target_dir / "big.bin")
    assert 8 * MIB <= result["BytesResumed"] <= at, (result, at)
    assert [p.name for p in target_dir.iterdir()] == ["big.bin"]


def test_agent_killed_mid_copy_out_of_the_guest(faults: FaultLab, short_tmp: Path):
    faults.call("POST", "/services/enable", {"vms": ["DemoVM"], "names": [GSI]})
    source = _random_file(faults.root() / "srv/report.bin", 64)
    target_dir = short_tmp / "from-guest"
    target_dir.mkdir()
    body = {"source": "/srv/report.bin", "destination": str(target_dir),
            "file_source": "Guest"}
    copy = faults.background("POST", "/vms/DemoVM/copy", body)

    _kill_when_partial_reaches(faults, target_dir, "report.bin", 12 * MIB, copy)
    copy.wait(60)
    assert copy.error is not None, copy.result
    assert not (target_dir / "report.bin").exists(), "a partial file at the destination's name"
    # The host lives on: what was in flight still lands, and its stop records the
    # exact count, so all of the partial file is resumed.
    part = _partial(target_dir, "report.bin")
    assert part is not None
    kept = part.stat().st_size

    faults.start_agent()
    result = faults.call("POST", "/vms/DemoVM/copy", body, timeout=300)
    assert result["Sha256"] == sha256_of(source) == sha256_of(target_dir / "report.bin")
    assert result["BytesResumed"] == kept >= 12 * MIB, (result, kept)
    assert [p.name for p in target_dir.iterdir()] == ["report.bin"]


def test_agent_killed_while_the_guest_is_frozen(faults: FaultLab):
    # The snapshot step outlasts the kill: the guest is frozen while it runs.
    checkpoint = faults.background("POST", "/vms/DemoVM/checkpoints", {
        "name": "killed", "snapshot_command": "sleep 4"})
    wait_for(faults.frozen, 30, "the guest to freeze")
    faults.kill_agent()
    assert faults.frozen(), "the kernel keeps filesystems frozen when the agent dies"

    started = faults.start_agent()
    wait_for(lambda: not faults.frozen(), 10, "the restarted agent to thaw the guest")
    thawed_after = time.monotonic() - started
    assert thawed_after < 5, f"thawed {thawed_after:.1f} s after the agent came back"
    report = checkpoint.wait(120).result
    assert report["Status"] in ("Completed", "Failed"), report
    [row] = [c for c in faults.call("GET", "/checkpoints", vm=["DemoVM"])
             if c["Name"] == "killed"]
    assert row["Status"] != "Running"


def _pool(faults: FaultLab, number: int) -> list[tuple[str, str]]:
    path = faults.root() / f"var/lib/hyperv/.kvp_pool_{number}"
    data = path.read_bytes() if path.exists() else b""
    assert len(data) % RECORD_SIZE == 0, "a torn pool file"
    return [decode_record(data[i:i + RECORD_SIZE]) for i in range(0, len(data), RECORD_SIZE)]


def test_agent_killed_during_host_kvp_writes(faults: FaultLab):
    rng = random.Random(16)
    expected: dict[str, str] = {}
    writes = []
    for n in range(60):
        key = f"key{rng.randrange(20)}"  # overwrites too: order matters
        expected[key] = f"value {n}"
        writes.append((key, expected[key]))

    def write_all() -> None:
        for key, value in writes:
            faults.call("POST", "/kvp/set", {"vms": ["DemoVM"], "key": key, "value": value})

    writer = Background(write_all)
    wait_for(lambda: len(_pool(faults, 0)) >= 3, 30, "the first writes to land")
    # Killed while it rewrites the pool file (its temporary file exists), if caught
    # in the act within a second; else between two writes.
    pools = faults.root() / "var/lib/hyperv"
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline and not list(pools.glob(".kvp_pool_0.*.tmp")):
        time.sleep(0.0005)
    in_the_act = bool(list(pools.glob(".kvp_pool_0.*.tmp")))
    faults.kill_agent()
    print(f"killed {'while writing the pool file' if in_the_act else 'between writes'}")
    writer.wait(120)
    assert writer.error is None, writer.error  # saved, and kept pending while the guest is down

    faults.start_agent()

    def delivered() -> bool:
        rows = faults.call("GET", "/kvp", vm=["DemoVM"], pool="External")
        return all(r["Pending"] is None for r in rows) and {
            r["Key"]: r["Value"] for r in rows} == expected

    wait_for(delivered, 30, "every write delivered")
    pool = _pool(faults, 0)
    assert sorted(k for k, _ in pool) == sorted(expected), "a key twice, or one missing"
    assert dict(pool) == expected
