"""Every fuzz harness for a few seconds, seeded: the seed corpus replayed, then new inputs.

Each run is ``python -m support.fuzz.run NAME -runs=N -seed=1`` over
``corpus/NAME`` (read, never written: new inputs go to a temporary
directory), so a run is the same from one test session to the next, and
every crash input kept in the corpus is replayed. A crash fails the test
with the harness's traceback and the input libFuzzer wrote. The long runs
(a million inputs each) are bench/fuzz.py's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fuzz import HARNESSES

HERE = Path(__file__).parent
TESTS = HERE.parent
#: inputs per harness: about two seconds each on the 2-core test machine
RUNS = {
    "frames": 4000, "session": 1500, "wire_helpers": 8000, "guest_handlers": 600,
    "host_handlers": 2000, "timesync_samples": 1000, "hv_messages": 3000, "hv_kvp": 800,
    "hv_vss": 400, "hv_fcopy": 1500, "kvp_pool": 1500, "psargs": 5000, "bundle": 1500,
}


@pytest.fixture
def scratch() -> Iterator[Path]:
    """Where the harnesses write their files: a tmpfs if there is one (pool files fsync)."""
    directory = Path(tempfile.mkdtemp(prefix="vmis-fuzz-test-",
                                      dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def fuzz(name: str, tmp: Path, scratch: Path, *corpus: Path,
         runs: int) -> subprocess.CompletedProcess[str]:
    """Run a harness; its output (libFuzzer's, and a crash's traceback) is ``stdout``."""
    new = tmp / "new"
    new.mkdir()
    env = dict(os.environ, VMIS_FUZZ_TMP=str(scratch),
               PYTHONPATH=os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH"))
                                          if p))
    return subprocess.run(
        [sys.executable, "-m", "support.fuzz.run", name, f"-runs={runs}", "-seed=1",
         "-timeout=60", f"-artifact_prefix={tmp}/", str(new), *map(str, corpus)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=600,
        check=False)


def test_every_harness_has_a_test_run_and_seeds():
    assert set(RUNS) == set(HARNESSES)
    for name in HARNESSES:
        seeds = list((HERE / "corpus" / name).iterdir())
        assert 1 <= len(seeds) <= 20, (name, len(seeds))


@pytest.mark.parametrize("name", HARNESSES)
def test_harness(name, tmp_path, scratch):
    result = fuzz(name, tmp_path, scratch, HERE / "corpus" / name, runs=RUNS[name])
    crash = [p.name for p in tmp_path.glob("crash-*")]
    assert result.returncode == 0 and "DONE" in result.stdout, \
        f"{name} crashed (input {crash}):\n{result.stdout[-6000:]}"


def test_a_crash_fails_the_run_and_keeps_its_input(tmp_path, scratch):
    corpus = tmp_path / "seeds"
    corpus.mkdir()
    (corpus / "planted").write_bytes(b"crash here")
    result = fuzz("selftest", tmp_path, scratch, corpus, runs=10)
    assert result.returncode != 0
    assert "KeyError: 'planted'" in result.stdout
    [artifact] = tmp_path.glob("crash-*")
    assert artifact.read_bytes() == b"crash here"
