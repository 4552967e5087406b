"""The lab's manager files are its user's only (vmis.host.private): the store with its
pending KVP values, the directories, logs and pid files, also when an older lab left them
readable."""

from __future__ import annotations

import stat
from pathlib import Path

from support.lab import start_lab
from vmis.lab.lab import Lab

FILES = ("host.db", "host.db-wal", "host.db-shm", "host.log", "host.pid",
         "vms/DemoVM/agent.log", "vms/DemoVM/agent.pid", "vms/DemoVM/init.pid")
DIRECTORIES = (".", "vms", "vms/DemoVM")


def modes(lab_dir: Path) -> dict[str, str]:
    return {name: oct(stat.S_IMODE((lab_dir / name).stat().st_mode))
            for name in FILES + DIRECTORIES}


PRIVATE = {**{name: "0o600" for name in FILES}, **{name: "0o700" for name in DIRECTORIES}}


def test_lab_files_are_private_and_older_ones_are_narrowed(lab_dir):
    start_lab(lab_dir)
    assert modes(lab_dir) == PRIVATE
    Lab(lab_dir).down(None)
    # as an older vmis left them (SQLite may have removed its -wal and -shm at close)
    for name in FILES:
        (lab_dir / name).touch()
        (lab_dir / name).chmod(0o644)
    for name in DIRECTORIES:
        (lab_dir / name).chmod(0o755)
    assert set(modes(lab_dir).values()) == {"0o644", "0o755"}
    start_lab(lab_dir)  # the manager starts again on those files
    assert modes(lab_dir) == PRIVATE
