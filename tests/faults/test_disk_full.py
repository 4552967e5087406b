"""The guest's disk fills up in the middle of a copy into it.

The lab VM's agent gets a file-size limit (``prlimit RLIMIT_FSIZE``, on the
running process: nothing on this machine's filesystems changes), so the
copy's writes past 8 MiB fail with EFBIG as they would with ENOSPC on a
full disk, after the copy's own free-space check passed. The copy must fail
at once with one clear line, leave nothing at the destination's name, leave
the agent serving (heartbeat, another copy), and complete when run again
once there is room.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest
from faultlab import FaultLab, sha256_of, wait_for
from support.lab import run_vmis

from vmis.lab.lab import Lab

pytestmark = pytest.mark.slow

MIB = 1 << 20
LIMIT = 8 * MIB


def test_guest_disk_full_during_a_copy(lab: Lab, short_tmp: Path):
    faults = FaultLab(lab)
    faults.call("POST", "/services/enable", {"vms": ["DemoVM"], "names": [
        "Guest Service Interface"]})
    big = short_tmp / "big.bin"
    big.write_bytes(os.urandom(32 * MIB))
    small = short_tmp / "small.bin"
    small.write_bytes(os.urandom(MIB))
    target_dir = faults.root() / "srv"
    pid = faults.agent_pid()
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (LIMIT, hard))  # the soft limit only

    failed = run_vmis(lab.dir, "Copy-VMFile", "-Name", "DemoVM", "-SourcePath", str(big),
                      "-DestinationPath", "/srv/", "-FileSource", "Host", timeout=120)
    assert failed.code == 1, failed.out
    [line] = failed.err.strip().splitlines()  # one line, no traceback
    print("the failed copy said:", line)
    assert "big.bin" in line or "File too large" in line or "too large" in line, line
    assert not (target_dir / "big.bin").exists()
    assert all(p.stat().st_size <= LIMIT for p in target_dir.iterdir())

    # the agent is still there and serving
    assert faults.agent_pid() == pid
    wait_for(faults.heartbeat_ok, 10, "the heartbeat")
    done = faults.call("POST", "/vms/DemoVM/copy", {"source": str(small),
                                                    "destination": "/srv/",
                                                    "file_source": "Host"})
    assert done["Sha256"] == sha256_of(small) == sha256_of(target_dir / "small.bin")

    # room again: the same copy completes, and leaves only its file
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    again = run_vmis(lab.dir, "Copy-VMFile", "-Name", "DemoVM", "-SourcePath", str(big),
                     "-DestinationPath", "/srv/", "-FileSource", "Host", "--json", timeout=120)
    assert again.code == 0, again.err
    assert sha256_of(target_dir / "big.bin") == sha256_of(big)
    assert sorted(p.name for p in target_dir.iterdir()) == ["big.bin", "small.bin"]
